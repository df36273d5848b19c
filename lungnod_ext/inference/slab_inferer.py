"""Slice-by-slice inference of the 2.5D segmentation U-Net (see :mod:`lungnod_ext.transforms.slab`): a
``(B, 1, H, W, D)`` volume -> ``(B, C_out, H, W, D)``, each slice with its ``slab`` neighbours as channels,
H and W padded to a multiple of ``divisible`` for the network and cropped back. Optionally at several
in-plane scales (test-time zoom: small nodules look larger to a network that learned sizes), merged by the
voxel-wise maximum of the logits. Given a region of interest (the preprocessing's grown lung mask, passed by
the evaluator's ``prepare_batch``), each batch of slices is run only on the in-plane box around the region
in those slices; the rest of the output gets ``outside_logit``.
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

    ``roi`` (keyword of the call): a ``(B, 1, H, W, D)`` mask on the input's grid, or None (all of it). Each
    batch of slices is then cut to the box (rows x columns) where the mask is set in those slices or their
    slab neighbours, grown to a multiple of ``divisible`` within the slice; outside it, and in slices where
    it is empty, the output is ``outside_logit``. An all-empty mask means no region (everything is run).
    On LIDC-IDRI-0001 (1.5 mm grid, lung mask grown by 10 mm) the boxes are 0.74 of the slices' area.
    """

    def __init__(self, slab: int = 3, sw_batch_size: int = 16, divisible: int = 32, progress: bool = False,
                 scales=(1.0,), outside_logit: float = -30.0, roi_margin: int = 16) -> None:
        super().__init__()
        self.slab = check_slab(slab)
        self.sw_batch_size = max(1, int(sw_batch_size))
        self.divisible = max(1, int(divisible))
        self.scales = tuple(float(s) for s in scales)
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be positive zoom factors, got {scales!r}")
        self.outside_logit = float(outside_logit)
        self.roi_margin = max(0, int(roi_margin))

    def _span(self, present: torch.Tensor, size: int) -> tuple[int, int] | None:
        """[lo, hi) around the True entries of a 1-D mask, ``roi_margin`` wider on each side, grown to a
        multiple of ``divisible`` within ``size``; None when none is True."""
        idx = torch.nonzero(present).flatten()
        if idx.numel() == 0:
            return None
        lo, hi = max(0, int(idx[0]) - self.roi_margin), min(size, int(idx[-1]) + 1 + self.roi_margin)
        want = min(size, -(-(hi - lo) // self.divisible) * self.divisible)
        lo = max(0, min(lo - (want - (hi - lo)) // 2, size - want))
        return lo, lo + want

    def _box(self, roi: torch.Tensor, k0: int, k1: int):
        """(rows, columns) spans of the boolean ``roi`` (B, 1, H, W, D) over slices k0 .. k1-1 and their
        slab neighbours; None when the region misses these slices."""
        half = self.slab // 2
        sub = roi[..., max(0, k0 - half):k1 + half].any(dim=-1).flatten(0, 1).any(dim=0)     # (H, W)
        rows, cols = self._span(sub.any(dim=1), sub.shape[0]), self._span(sub.any(dim=0), sub.shape[1])
        return None if rows is None or cols is None else (rows, cols)

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

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, roi=None,
                 **kwargs) -> torch.Tensor:
        if inputs.ndim != 5 or inputs.shape[1] != 1:
            raise ValueError(f"SlabSliceInferer expects a (B, 1, H, W, D) volume, got {tuple(inputs.shape)}")
        b, _, h, w, depth = inputs.shape
        volume = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
        if roi is not None:
            roi = roi.as_tensor() if hasattr(roi, "as_tensor") else torch.as_tensor(roi)
            if tuple(roi.shape[-3:]) != (h, w, depth):
                raise ValueError(f"roi {tuple(roi.shape)} is not on the input's grid {tuple(inputs.shape)}")
            roi = roi.to(volume.device) > 0
            if not roi.any():
                roi = None
        out = None                                 # made at the first batch run: full of outside_logit
        for k0 in range(0, depth, self.sw_batch_size):
            k1 = min(depth, k0 + self.sw_batch_size)
            box = ((0, h), (0, w)) if roi is None else self._box(roi, k0, k1)
            if box is None:                        # the region misses these slices: outside_logit
                continue
            (r0, r1), (c0, c1) = box
            x = slab_channels(volume, k0, k1, self.slab)[..., r0:r1, c0:c1]
            y = self._run(x, network, self.scales[0], *args, **kwargs)      # (B * n, C, r1 - r0, c1 - c0)
            for scale in self.scales[1:]:
                y = torch.maximum(y, self._run(x, network, scale, *args, **kwargs))
            y = y.reshape(b, k1 - k0, y.shape[1], r1 - r0, c1 - c0).permute(0, 2, 3, 4, 1)
            if out is None:
                out = torch.full((b, y.shape[1], h, w, depth), self.outside_logit, dtype=torch.float32,
                                 device=y.device)
            out[:, :, r0:r1, c0:c1, k0:k1] = y
        return convert_to_dst_type(out, inputs, dtype=torch.float32)[0]   # keeps a MetaTensor's metadata
