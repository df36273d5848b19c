"""Slice-by-slice inference of the 2.5D segmentation U-Net (see :mod:`lungnod_ext.transforms.slab`): a
``(B, 1, H, W, D)`` volume -> ``(B, C_out, H, W, D)``, each slice with its ``slab`` neighbours as channels,
H and W padded to a multiple of ``divisible`` for the network and cropped back. Optionally at several
in-plane scales (test-time zoom: small nodules look larger to a network that learned sizes), merged by the
voxel-wise maximum of the logits, either over the whole slice or only around what the first pass flags
(``zoom_threshold``). Given a region of interest (the preprocessing's grown lung mask, passed by
the evaluator's ``prepare_batch``), each batch of slices is run only on the in-plane box around the region
in those slices; the rest of the output gets ``outside_logit``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type

from lungnod_ext.inference.zoom_points import ZOOM_POINTS_KEY, zoom_points_mask
from lungnod_ext.transforms.slab import check_slab, slab_channels


def _overlap(a: list[int], b: list[int]) -> bool:
    """Do boxes [r0, r1, c0, c1] a and b overlap?"""
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def _union(a: list[int], b: list[int]) -> list[int]:
    """The box [r0, r1, c0, c1] around boxes a and b."""
    return [min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])]


def _grid_mask(mask, name: str, inputs: torch.Tensor) -> torch.Tensor:
    """A region mask given to the inferer -> bool tensor on the device of the ``(B, 1, H, W, D)`` inputs;
    ValueError naming ``name`` when its last three dimensions are not the inputs' (H, W, D)."""
    mask = mask.as_tensor() if hasattr(mask, "as_tensor") else torch.as_tensor(mask)
    if tuple(mask.shape[-3:]) != tuple(inputs.shape[-3:]):
        raise ValueError(f"{name} {tuple(mask.shape)} is not on the input's grid {tuple(inputs.shape)}")
    return mask.to(inputs.device) > 0


class SlabSliceInferer(Inferer):
    """Slice-by-slice inference of a 2-D network that takes ``slab`` neighbouring slices as channels.

    inputs: ``(B, 1, H, W, D)`` (D = the slice axis); the network sees ``(N, slab, H', W')`` with H', W'
    padded to a multiple of ``divisible`` (edge values) and returns ``(N, C_out, H', W')``; output
    ``(B, C_out, H, W, D)`` on the input's device, float32. ``sw_batch_size`` slices per forward pass.

    ``scales``: in-plane zoom factors; each slice is also run zoomed by every factor other than 1 (bilinear,
    so a 1.5 mm grid is seen as 1.0 mm at 1.5) and its logits zoomed back; the output is the maximum over
    the scales. ``(1.0,)`` (default) is one plain pass; each scale s costs about s**2 of it.

    ``zoom_threshold``: None (default) runs the other scales over the whole box; a probability in (0, 1)
    runs them only around what the first scale's pass flags: the pixels of a batch of slices whose
    first-pass probability is at least ``zoom_threshold`` in any of those slices, as 8-connected
    components, each zoomed with ``roi_margin`` pixels of context around it and merged back only on the
    component grown by ``zoom_merge_margin`` pixels (boxes that overlap are run together). A zoomed pass
    then adds to (raises) what the first pass saw and finds nothing where the first pass saw nothing,
    except in ``zoom_roi``, which is flagged as well: a keyword of the call (a ``(B, 1, H, W, D)`` mask on
    the input's grid) or, without it, boxes of +-``zoom_point_half_mm`` around the world points a MetaTensor
    input carries in ``meta["zoom_points_ras"]`` (the strongest dot-filter peaks:
    :mod:`lungnod_ext.inference.zoom_points`), mapped through its affine, so that any runner gets them.

    ``roi`` (keyword of the call): a ``(B, 1, H, W, D)`` mask on the input's grid, or None (all of it). Each
    batch of slices is then cut to the box (rows x columns) where the mask is set in those slices or their
    slab neighbours, grown to a multiple of ``divisible`` within the slice; outside it, and in slices where
    it is empty, the output is ``outside_logit``. An all-empty mask means no region (everything is run).
    On LIDC-IDRI-0001 (1.5 mm grid, lung mask grown by 10 mm) the boxes are 0.74 of the slices' area.
    """

    def __init__(self, slab: int = 3, sw_batch_size: int = 16, divisible: int = 32, progress: bool = False,
                 scales=(1.0,), outside_logit: float = -30.0, roi_margin: int = 16,
                 zoom_threshold: float | None = None, zoom_merge_margin: int = 4,
                 zoom_point_half_mm: float = 8.0) -> None:
        super().__init__()
        self.slab = check_slab(slab)
        self.sw_batch_size = max(1, int(sw_batch_size))
        self.divisible = max(1, int(divisible))
        self.scales = tuple(float(s) for s in scales)
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be positive zoom factors, got {scales!r}")
        self.outside_logit = float(outside_logit)
        self.roi_margin = max(0, int(roi_margin))
        if zoom_threshold is not None and not 0.0 < float(zoom_threshold) < 1.0:
            raise ValueError(f"zoom_threshold must be a probability in (0, 1) or None, got {zoom_threshold!r}")
        self.zoom_logit = None if zoom_threshold is None else math.log(zoom_threshold / (1.0 - zoom_threshold))
        self.zoom_merge_margin = max(0, int(zoom_merge_margin))
        self.zoom_point_half_mm = float(zoom_point_half_mm)

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

    def _zoom_boxes(self, logits: torch.Tensor, extra: torch.Tensor | None = None) -> list[tuple[slice, slice, slice, slice]]:
        """Where to run the zoomed passes of a batch: ``logits`` (n, C, h, w) of the first pass (and the
        (h, w) bool ``extra``: more pixels to zoom, e.g. around dot-filter peaks) -> boxes
        ``(rows, cols)`` to run (the flagged components with ``roi_margin`` context) each with the
        ``(rows, cols)`` to merge (the components grown by ``zoom_merge_margin``), as slices of the
        (h, w) plane; overlapping run boxes are merged into one."""
        flag = (logits > self.zoom_logit).flatten(0, 1).any(dim=0)
        if extra is not None:
            flag = flag | extra.to(flag.device)
        flag = flag.cpu().numpy()
        if not flag.any():
            return []
        h, w = flag.shape
        labels, _ = ndi.label(flag, structure=np.ones((3, 3), dtype=bool))

        def grown(obj, m, even=False):
            """``obj`` grown by m px; ``even``: its ends on even pixels, so that a zoom by 1.5 or 2 samples the
            grid the whole slice's zoomed pass would (the box's pixels map onto whole zoomed pixels)."""
            box = [obj[0].start - m, obj[0].stop + m, obj[1].start - m, obj[1].stop + m]
            if even:
                box = [b - b % 2 if k % 2 == 0 else b + b % 2 for k, b in enumerate(box)]
            return [max(0, box[0]), min(h, box[1]), max(0, box[2]), min(w, box[3])]

        boxes = [(grown(o, self.roi_margin, even=True), grown(o, self.zoom_merge_margin))
                 for o in ndi.find_objects(labels)]
        changed = True
        while changed:                             # merge overlapping run boxes until none overlap
            changed, kept = False, []
            for run, merge in boxes:
                hit = next((k for k, (r, _) in enumerate(kept) if _overlap(r, run)), None)
                if hit is None:
                    kept.append((run, merge))
                else:
                    kept[hit] = (_union(kept[hit][0], run), _union(kept[hit][1], merge))
                    changed = True
            boxes = kept
        return [(slice(r[0], r[1]), slice(r[2], r[3]), slice(m[0], m[1]), slice(m[2], m[3])) for r, m in boxes]

    def _zoomed(self, x: torch.Tensor, y: torch.Tensor, network, *args, extra=None, **kwargs) -> torch.Tensor:
        """The first pass's logits ``y`` (n, C, h, w) raised by the passes at the other scales of the slabs
        ``x`` (n, slab, h, w): over all of it, or only around what ``y`` flags (``zoom_threshold``) and the
        (h, w) bool ``extra``."""
        if len(self.scales) == 1:
            return y
        if self.zoom_logit is None:
            for scale in self.scales[1:]:
                y = torch.maximum(y, self._run(x, network, scale, *args, **kwargs))
            return y
        for rows, cols, merge_rows, merge_cols in self._zoom_boxes(y, extra):
            inner = (..., slice(merge_rows.start - rows.start, merge_rows.stop - rows.start),
                     slice(merge_cols.start - cols.start, merge_cols.stop - cols.start))
            for scale in self.scales[1:]:
                z = self._run(x[..., rows, cols], network, scale, *args, **kwargs)[inner]
                y[..., merge_rows, merge_cols] = torch.maximum(y[..., merge_rows, merge_cols], z)
        return y

    def _points_roi(self, inputs) -> torch.Tensor | None:
        """(B, 1, H, W, D) bool boxes around the world points of a MetaTensor's ``meta["zoom_points_ras"]``
        ((n, 3) or batched (B, n, 3) RAS mm, NaN rows unused) on its grid; None without them."""
        meta = getattr(inputs, "meta", None) or {}
        if ZOOM_POINTS_KEY not in meta:
            return None
        points = torch.as_tensor(meta[ZOOM_POINTS_KEY]).detach().cpu().double().numpy()
        affine = torch.as_tensor(inputs.affine).detach().cpu().double().numpy()
        b = inputs.shape[0]
        points = np.broadcast_to(points, (b, *points.shape[-2:])) if points.ndim == 2 else points
        affine = np.broadcast_to(affine, (b, 4, 4)) if affine.ndim == 2 else affine
        masks = [zoom_points_mask(points[i], affine[i], inputs.shape[2:], self.zoom_point_half_mm) for i in range(b)]
        return torch.from_numpy(np.stack(masks))[:, None]

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, roi=None,
                 zoom_roi=None, **kwargs) -> torch.Tensor:
        if inputs.ndim != 5 or inputs.shape[1] != 1:
            raise ValueError(f"SlabSliceInferer expects a (B, 1, H, W, D) volume, got {tuple(inputs.shape)}")
        b, _, h, w, depth = inputs.shape
        volume = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
        if roi is not None:
            roi = _grid_mask(roi, "roi", inputs)
            if not roi.any():
                roi = None
        if len(self.scales) > 1 and self.zoom_logit is not None:   # zoomed passes around flagged places
            zoom_roi = self._points_roi(inputs) if zoom_roi is None else zoom_roi
            zoom_roi = None if zoom_roi is None else _grid_mask(zoom_roi, "zoom_roi", inputs)
        else:
            zoom_roi = None
        out = None                                 # made at the first batch run: full of outside_logit
        for k0 in range(0, depth, self.sw_batch_size):
            k1 = min(depth, k0 + self.sw_batch_size)
            box = ((0, h), (0, w)) if roi is None else self._box(roi, k0, k1)
            if box is None:                        # the region misses these slices: outside_logit
                continue
            (r0, r1), (c0, c1) = box
            x = slab_channels(volume, k0, k1, self.slab)[..., r0:r1, c0:c1]
            y = self._run(x, network, self.scales[0], *args, **kwargs)      # (B * n, C, r1 - r0, c1 - c0)
            extra = None if zoom_roi is None else zoom_roi[..., r0:r1, c0:c1, k0:k1].any(dim=-1).flatten(0, 1).any(dim=0)
            y = self._zoomed(x, y, network, *args, extra=extra, **kwargs)
            y = y.reshape(b, k1 - k0, y.shape[1], r1 - r0, c1 - c0).permute(0, 2, 3, 4, 1)
            if out is None:
                out = torch.full((b, y.shape[1], h, w, depth), self.outside_logit, dtype=torch.float32,
                                 device=y.device)
            out[:, :, r0:r1, c0:c1, k0:k1] = y
        return convert_to_dst_type(out, inputs, dtype=torch.float32)[0]   # keeps a MetaTensor's metadata
