"""Slice-by-slice inference of the 2.5D segmentation U-Net (see :mod:`lungnod_ext.transforms.slab`): a
``(B, 1, H, W, D)`` volume -> ``(B, C_out, H, W, D)``, each slice with its ``slab`` neighbours as channels,
H and W padded to a multiple of ``divisible`` for the network and cropped back. Optionally at several
in-plane scales (test-time zoom: small nodules look larger to a network that learned sizes), merged by the
voxel-wise maximum of the logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type

from lungnod_ext.transforms.slab import check_slab, slab_channels


class SlabSliceInferer(Inferer):
    """Slice-by-slice inference of a 2-D network that takes ``slab`` neighbouring slices as channels.

    inputs: ``(B, 1, H, W, D)`` (D = the slice axis); the network sees ``(N, slab, H', W')`` with H', W'
    padded to a multiple of ``divisible`` (edge values) and returns ``(N, C_out, H', W')``; output
    ``(B, C_out, H, W, D)`` on the input's device, float32. ``sw_batch_size`` slices per forward pass.

    ``scales``: in-plane zoom factors; each slice is also run zoomed by every factor other than 1 (bilinear,
    so a 1.5 mm grid is seen as 1.0 mm at 1.5) and its logits zoomed back; the output is the maximum over
    the scales. ``(1.0,)`` (default) is one plain pass; each scale s costs about s**2 of it.
    """

    def __init__(self, slab: int = 3, sw_batch_size: int = 16, divisible: int = 32, progress: bool = False,
                 scales=(1.0,)) -> None:
        super().__init__()
        self.slab = check_slab(slab)
        self.sw_batch_size = max(1, int(sw_batch_size))
        self.divisible = max(1, int(divisible))
        self.scales = tuple(float(s) for s in scales)
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be positive zoom factors, got {scales!r}")

    def _run(self, x: torch.Tensor, network, scale: float, *args, **kwargs) -> torch.Tensor:
        """(n, slab, h, w) -> logits (n, C_out, h, w), the network run at in-plane ``scale``."""
        h, w = x.shape[-2:]
        if scale != 1.0:
            x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", align_corners=False)
        sh, sw = x.shape[-2:]
        ph, pw = (-sh) % self.divisible, (-sw) % self.divisible
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        y = network(x, *args, **kwargs)[..., :sh, :sw].float()
        if scale != 1.0:
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        return y

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        if inputs.ndim != 5 or inputs.shape[1] != 1:
            raise ValueError(f"SlabSliceInferer expects a (B, 1, H, W, D) volume, got {tuple(inputs.shape)}")
        b, _, h, w, depth = inputs.shape
        volume = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
        out = None
        for k0 in range(0, depth, self.sw_batch_size):
            k1 = min(depth, k0 + self.sw_batch_size)
            x = slab_channels(volume, k0, k1, self.slab)
            y = self._run(x, network, self.scales[0], *args, **kwargs)      # (B * n, C, h, w)
            for scale in self.scales[1:]:
                y = torch.maximum(y, self._run(x, network, scale, *args, **kwargs))
            y = y.reshape(b, k1 - k0, y.shape[1], h, w).permute(0, 2, 3, 4, 1)
            if out is None:
                out = torch.empty((b, y.shape[1], h, w, depth), dtype=torch.float32, device=y.device)
            out[..., k0:k1] = y
        return convert_to_dst_type(out, inputs, dtype=torch.float32)[0]   # keeps a MetaTensor's metadata
