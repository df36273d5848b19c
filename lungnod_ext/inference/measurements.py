"""Nodule size the way radiologists measure it: long and short axis on one axial image.

Fleischner Society (2017) and Lung-RADS v2022 size a nodule by the **long axis** (its longest diameter on
the axial image where it is largest) and the **short axis** (its extent perpendicular to the long axis on
that same image), and manage it by their mean. The equivalent-sphere ``diameter_mm`` of a candidate
(:mod:`lungnod_ext.inference.candidates`) is a volume figure; these are the caliper figures a reader
checks a report against. :func:`axial_axes` measures one region, :func:`add_axial_axes` every candidate
of a label map, :class:`MeasureAxialAxesd` is the segmentation bundle's post-processing step.

Measured on the voxels' full extent (each voxel a box of its spacing, as ``bbox_lps_mm``): the long axis
is the largest distance between corners of the region's voxels on a slice (the Feret diameter), the short
axis the width of the region across that line. The slice is the one with the longest long axis (ties: the
larger area). No clinical category is derived: research software, not a medical device.

Conventions (see :mod:`data_prep.coords`): arrays are ``(z, y, x)``; voxel indices ``(i, j, k)``; the
axial plane is the (i, j) plane of an axial series (what ``data_prep`` converts); mm; world LPS.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

from data_prep.coords import Geometry
from lungnod_ext.data.meta import channel_view_zyx, geometry_from_meta_tensor

AXIS_KEYS = ("long_axis_mm", "short_axis_mm", "mean_axial_diameter_mm", "axes_slice_k", "long_axis_lps_mm")
"""Keys :func:`add_axial_axes` adds to each candidate (``long_axis_lps_mm``: the long axis's two end points,
``[[x, y, z], [x, y, z]]`` LPS mm, for drawing it)."""

_CORNERS = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])


def _slice_axes(region_yx: np.ndarray, spacing_yx: np.ndarray):
    """(long mm, short mm, long-axis end points (2, 2) in (row, column) voxel units) of a 2-D bool mask."""
    edge = region_yx & ~ndi.binary_erosion(region_yx)          # the corners of inner pixels never span more
    pixels = np.argwhere(edge).astype(float)
    points = (pixels[:, None, :] + _CORNERS[None]).reshape(-1, 2)
    mm = points * spacing_yx
    idx = np.arange(len(mm))
    if len(mm) > 4:
        try:
            idx = ConvexHull(mm).vertices
        except QhullError:                                       # collinear (a one-pixel-wide line)
            pass
    hull = mm[idx]
    d = np.linalg.norm(hull[:, None, :] - hull[None, :, :], axis=-1)
    a, b = np.unravel_index(int(np.argmax(d)), d.shape)
    long_mm = float(d[a, b])
    direction = (hull[b] - hull[a]) / max(long_mm, 1e-9)
    across = hull @ np.array([-direction[1], direction[0]])
    return long_mm, float(across.max() - across.min()), points[idx[[a, b]]]


def axial_axes(region_zyx: np.ndarray, spacing_zyx_mm: Sequence[float]) -> dict | None:
    """Long and short axis of a (z, y, x) bool region on its best axial slice (module doc) ->
    ``{"long_axis_mm", "short_axis_mm", "slice": z index in the array, "long_axis_yx": (2, 2) end points in
    (row, column) voxel units of that slice}``; None for an empty region."""
    region = np.asarray(region_zyx, dtype=bool)
    spacing_yx = np.asarray(spacing_zyx_mm, dtype=float)[1:]
    best = None
    for z in np.flatnonzero(region.any(axis=(1, 2))):
        long_mm, short_mm, ends = _slice_axes(region[z], spacing_yx)
        key = (round(long_mm, 6), int(region[z].sum()))
        if best is None or key > best[0]:
            best = (key, {"long_axis_mm": long_mm, "short_axis_mm": short_mm, "slice": int(z), "long_axis_yx": ends})
    return None if best is None else best[1]


def add_axial_axes(candidates: Sequence[Mapping], labels_zyx: np.ndarray, geometry: Geometry) -> list[dict]:
    """Every candidate (its voxels: ``labels_zyx == id`` inside its ``bbox_voxel``) with :data:`AXIS_KEYS`:
    long / short axis (mm), their mean rounded to 0.1 mm (as Lung-RADS v2022 reports it), the slice index k
    they were measured on and the long axis's end points in LPS mm. ``geometry``: the label map's LPS grid."""
    spacing = np.asarray(geometry.spacing, dtype=float)[::-1]
    out = []
    for cand in candidates:
        cand = dict(cand)
        i0, j0, k0, i1, j1, k1 = (int(v) for v in cand["bbox_voxel"])
        axes = axial_axes(np.asarray(labels_zyx[k0:k1, j0:j1, i0:i1]) == int(cand["id"]), spacing)
        if axes is not None:
            k = k0 + axes["slice"]
            ends_ijk = [[col + i0, row + j0, k] for row, col in axes["long_axis_yx"]]
            cand.update(long_axis_mm=round(axes["long_axis_mm"], 2), short_axis_mm=round(axes["short_axis_mm"], 2),
                        mean_axial_diameter_mm=round((axes["long_axis_mm"] + axes["short_axis_mm"]) / 2, 1),
                        axes_slice_k=int(k),
                        long_axis_lps_mm=[[float(v) for v in p] for p in geometry.voxel_to_world(ends_ijk)])
        out.append(cand)
    return out


class MeasureAxialAxesd(MapTransform):
    """Post-processing for the segmentation bundle, after the outlines are final (``RefineOutlinesd``):
    :func:`add_axial_axes` on ``data[candidates_key]`` with the label map ``data[key]`` (``(1, X, Y, Z)``
    ids) on the grid of ``data[image_key]`` (a MetaTensor; the label map's own metadata without it).
    ``enabled`` False passes data through (a config switch)."""

    def __init__(self, keys: KeysCollection = "candidate_labels", image_key: str = "ct_hu",
                 candidates_key: str = "candidates", enabled: bool = True, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key, self.candidates_key, self.enabled = image_key, candidates_key, enabled

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            labels = d[key]
            grid = d[self.image_key] if d.get(self.image_key) is not None else labels
            d[self.candidates_key] = add_axial_axes(list(d.get(self.candidates_key) or []), channel_view_zyx(labels),
                                                    geometry_from_meta_tensor(grid))
        return d
