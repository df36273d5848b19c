"""Training augmentation of whole batches, on the device the network runs on.

The classifier's patches are small (5 x 64 x 64) and cheap to learn from, so MONAI's per-sample random
transforms in the data loader were a third of each training step on 2 CPU cores (about 20 s of every
60 s epoch, ``train_timing.json``), and a GPU waited for them. :class:`RandomBatchAugmentation` draws the
same augmentations per sample but applies them to the collated batch in a few tensor operations: it is a
MONAI ``PrepareBatch`` (``SupervisedTrainer(prepare_batch=...)``), so the evaluator, which keeps MONAI's
default, sees unaugmented patches.

Per sample, in this order, as the MONAI transforms the classification bundle used up to 0.11.1 (same
probabilities and ranges, its own random stream):

- ``RandFlip`` along each of the two in-plane axes (the last two), each with ``flip_prob``;
- ``RandRotate`` in-plane (about the first spatial axis for 3D), angle uniform in +-``rotate_range``
  (radians), bilinear, border padding, with ``rotate_prob``;
- ``RandScaleIntensity``: ``x * (1 + f)``, f uniform in +-``scale_factor``, with ``intensity_prob``;
- ``RandAdjustContrast``: ``((x - min) / (range + 1e-7)) ** gamma * range + min`` over the sample, gamma
  uniform in ``gamma``, with ``intensity_prob``;
- ``RandGaussianNoise``: std uniform in [0, ``noise_std``], mean 0, with ``noise_prob``.

Shapes: image ``(N, C, H, W)`` (``spatial_dims`` 2) or ``(N, C, D, H, W)`` (3); values as the loader gives them
(the bundle's patches are HU windowed to [0, 1] before). The label passes unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.engines.utils import PrepareBatch, default_prepare_batch

from lungnod_ext.data.bundle_settings import check_switches


class RandomBatchAugmentation(PrepareBatch):
    """A ``PrepareBatch`` that moves the batch to the device (MONAI's default) and augments its images (module
    doc). ``seed``: its random stream (a generator per device); the draws do not depend on the batch's device
    type beyond that generator. ``enabled`` False: MONAI's default preparation only."""

    def __init__(self, spatial_dims: int = 2, flip_prob: float = 0.5, rotate_prob: float = 0.5,
                 rotate_range: float = 0.2618, intensity_prob: float = 0.5, scale_factor: float = 0.1,
                 gamma: Sequence[float] = (0.8, 1.25), noise_prob: float = 0.3, noise_std: float = 0.02,
                 seed: int = 0, enabled: bool = True) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"RandomBatchAugmentation: spatial_dims must be 2 or 3, got {spatial_dims}")
        for name, p in (("flip_prob", flip_prob), ("rotate_prob", rotate_prob), ("intensity_prob", intensity_prob),
                        ("noise_prob", noise_prob)):
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"RandomBatchAugmentation: {name} must be in [0, 1], got {p}")
        try:                       # the bundle configs' own check, for a caller outside them
            check_switches(batch_augmentation=enabled)
        except ValueError as err:
            raise ValueError(f"RandomBatchAugmentation: enabled: {err}") from None
        if len(gamma) != 2 or not 0 < float(gamma[0]) <= float(gamma[1]):
            raise ValueError(f"RandomBatchAugmentation: gamma must be (low, high) with 0 < low <= high, got {gamma}")
        self.spatial_dims = int(spatial_dims)
        self.flip_prob, self.rotate_prob = float(flip_prob), float(rotate_prob)
        self.rotate_range, self.intensity_prob = float(rotate_range), float(intensity_prob)
        self.scale_factor, self.gamma = float(scale_factor), (float(gamma[0]), float(gamma[1]))
        self.noise_prob, self.noise_std = float(noise_prob), float(noise_std)
        self.seed, self.enabled = int(seed), bool(enabled)
        self._generators: dict[str, torch.Generator] = {}

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        return (self.augment(image) if self.enabled else image), label

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
            self._generators[key] = g
        return self._generators[key]

    def _uniform(self, n: int, low: float, high: float, g, device) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=g, device=device)

    def augment(self, image: torch.Tensor) -> torch.Tensor:
        """The augmented batch, a new float tensor of the same shape on the same device (module doc)."""
        if image.ndim != self.spatial_dims + 2:
            raise ValueError(f"RandomBatchAugmentation: expected a (N, C, {'D, ' if self.spatial_dims == 3 else ''}"
                             f"H, W) batch, got shape {tuple(image.shape)}")
        x = torch.as_tensor(image).float()
        n, device = x.shape[0], x.device
        g = self._generator(device)
        view = (n,) + (1,) * (x.ndim - 1)
        for dim in (x.ndim - 2, x.ndim - 1):
            flip = torch.rand(n, generator=g, device=device) < self.flip_prob
            x = torch.where(flip.view(view), x.flip(dim), x)
        rotate = torch.rand(n, generator=g, device=device) < self.rotate_prob
        angle = self._uniform(n, -self.rotate_range, self.rotate_range, g, device)
        if bool(rotate.any()):
            turned = rotate.nonzero().squeeze(1)
            x = x.index_copy(0, turned, self._rotate(x[turned], angle[turned]))
        scale = torch.rand(n, generator=g, device=device) < self.intensity_prob
        factor = self._uniform(n, -self.scale_factor, self.scale_factor, g, device)
        x = x * torch.where(scale, 1.0 + factor, torch.ones_like(factor)).view(view)
        contrast = torch.rand(n, generator=g, device=device) < self.intensity_prob
        gamma = self._uniform(n, self.gamma[0], self.gamma[1], g, device)
        if bool(contrast.any()):
            flat = x.reshape(n, -1)
            low = flat.min(dim=1).values.view(view)
            span = flat.max(dim=1).values.view(view) - low
            adjusted = ((x - low) / (span + 1e-7)).clamp_min(0.0) ** gamma.view(view) * span + low
            x = torch.where(contrast.view(view), adjusted, x)
        noisy = torch.rand(n, generator=g, device=device) < self.noise_prob
        std = self._uniform(n, 0.0, self.noise_std, g, device) * noisy
        noise = torch.randn(x.shape, generator=g, device=device)
        return x + noise * std.view(view)

    def _rotate(self, x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
        """Each sample rotated in the plane of its last two axes by ``angle`` (radians, (N,)) about the centre;
        bilinear, border padding, size kept."""
        n = x.shape[0]
        h, w = x.shape[-2], x.shape[-1]
        cos, sin = torch.cos(angle), torch.sin(angle)
        # affine_grid maps output to input in normalised coordinates (x = last axis, then y): a rotation in
        # pixels is S^-1 R S there, S = diag(w, h) / 2, so square or not the patch turns rigidly
        theta = torch.zeros(n, self.spatial_dims, self.spatial_dims + 1, dtype=x.dtype, device=x.device)
        theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * (h / w)
        theta[:, 1, 0], theta[:, 1, 1] = sin * (w / h), cos
        if self.spatial_dims == 3:
            theta[:, 2, 2] = 1.0                      # the first spatial axis (depth) is the rotation's axis
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
