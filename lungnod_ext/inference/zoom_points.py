"""Where the segmentation inferer's zoomed pass should look besides what its first pass flags: the
strongest dot-filter peaks of the lung (:mod:`lungnod_ext.inference.blob_candidates`).

The 2.5D U-Net gives some 6-8 mm nodules nothing at its own scale (probability < 0.002 on the 7.6 mm
4-reader nodule of LIDC-IDRI-0006 with the model that never saw that series) while its pass zoomed 1.5x
outlines them; zooming whole slices costs 2.25x the first pass. :class:`AddZoomPointsd` (pre-processing)
puts the peaks into the image's metadata as world points (RAS mm, what MONAI's affines use), so they
survive cropping and padding and reach the inferer with the image in any runner (the bundle's
evaluator, MONAI Label's infer task); :func:`zoom_points_mask` turns them back into boxes on the grid the
inferer sees (:class:`~lungnod_ext.inference.slab_inferer.SlabSliceInferer`, ``zoom_threshold``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from lungnod_ext.data.meta import channel_view_zyx, geometry_from_meta_tensor
from lungnod_ext.inference.blob_candidates import dot_filter_peaks

ZOOM_POINTS_KEY = "zoom_points_ras"
"""Image metadata key: ``(max_peaks, 3)`` float64 RAS mm points, strongest first, unused rows NaN."""


def blob_peaks(hu_zyx: np.ndarray, spacing_zyx_mm: Sequence[float], lung_zyx: np.ndarray | None,
               max_peaks: int = 50, **options) -> np.ndarray:
    """(n, 3) (z, y, x) voxel indices of the ``max_peaks`` strongest dot-filter peaks of an HU volume on
    its own grid, inside ``lung_zyx`` when given (non-zero = lung); strongest first. ``options``: those of
    :func:`~lungnod_ext.inference.blob_candidates.dot_filter_peaks`."""
    found = dot_filter_peaks(hu_zyx, spacing_zyx_mm, lung_zyx, max_peaks=max_peaks, **options) if max_peaks > 0 else None
    if found is None:
        return np.zeros((0, 3), int)
    return np.rint(found.centres_zyx).astype(int) + np.array([s.start for s in found.box])


def zoom_points_mask(points_ras: np.ndarray, affine_ras: np.ndarray, shape_xyz: Sequence[int],
                     half_size_mm: float = 8.0) -> np.ndarray:
    """(X, Y, Z) bool mask on the grid of ``affine_ras`` (4x4, voxel (i, j, k) -> RAS mm): a box of
    +-``half_size_mm`` along each axis around every finite point of ``points_ras`` ((n, 3) RAS mm)."""
    out = np.zeros(tuple(int(s) for s in shape_xyz), bool)
    pts = np.asarray(points_ras, dtype=float).reshape(-1, 3)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) == 0:
        return out
    affine = np.asarray(affine_ras, dtype=float)
    ijk = np.rint((np.linalg.inv(affine) @ np.c_[pts, np.ones(len(pts))].T)[:3].T).astype(int)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    half = np.maximum(np.rint(half_size_mm / spacing).astype(int), 1)
    for c in ijk:
        lo, hi = np.maximum(c - half, 0), np.minimum(c + half + 1, out.shape)
        if (lo < hi).all():
            out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return out


class AddZoomPointsd(MapTransform):
    """Pre-processing for the segmentation bundle, on the resampled CT still in HU (after ``LungMaskd``):
    ``image.meta[ZOOM_POINTS_KEY]`` = the RAS mm positions of the ``max_peaks`` strongest dot-filter peaks
    inside ``data[lung_mask_key]`` (None: everywhere), as a ``(max_peaks, 3)`` array with NaN rows where
    there are fewer (fixed size, so batches collate). ``enabled`` False: all NaN (nothing more to zoom)."""

    def __init__(self, keys: KeysCollection = "image", lung_mask_key: str | None = "lung_roi", max_peaks: int = 50,
                 enabled: bool = True, allow_missing_keys: bool = False, **options) -> None:
        super().__init__(keys, allow_missing_keys)
        self.lung_mask_key, self.max_peaks = lung_mask_key, max(0, int(max_peaks))
        self.enabled, self.options = enabled, options

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if not hasattr(image, "meta"):
                raise TypeError(f"AddZoomPointsd needs a MetaTensor {key!r} (its affine), got {type(image).__name__}")
            points = np.full((self.max_peaks, 3), np.nan)
            if self.enabled and self.max_peaks:
                lung = None
                if self.lung_mask_key is not None and d.get(self.lung_mask_key) is not None:
                    lung = channel_view_zyx(d[self.lung_mask_key])
                spacing_zyx = np.asarray(geometry_from_meta_tensor(image).spacing, dtype=float)[::-1]
                zyx = blob_peaks(channel_view_zyx(image), spacing_zyx, lung, max_peaks=self.max_peaks, **self.options)
                if len(zyx):
                    ijk1 = np.c_[zyx[:, ::-1], np.ones(len(zyx))]
                    points[:len(zyx)] = (np.asarray(image.affine, dtype=float) @ ijk1.T)[:3].T
            image.meta[ZOOM_POINTS_KEY] = torch.as_tensor(points)
        return d
