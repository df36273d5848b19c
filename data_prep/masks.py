"""Masks: LIDC contours -> per-reader filled masks, grouping of readers' marks into nodules,
consensus masks, spheres (LUNA16), and per-nodule measurements for the nodule table.

Arrays are (z, y, x) = (slice k, row j, column i); geometry is :class:`data_prep.coords.Geometry`
(LPS mm). Contour points are LIDC ``edgeMap`` pixels (x = column, y = row), and the boundary pixels
belong to the region (LIDC's convention): a filled contour is ``cv2.fillPoly`` of those points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data_prep.coords import Geometry


def equivalent_diameter_mm(volume_mm3: float) -> float:
    """Diameter (mm) of the sphere with this volume."""
    return float((6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0)) if volume_mm3 > 0 else 0.0


def bounding_box(mask: np.ndarray, margin=0) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every non-zero voxel of ``mask``, grown by ``margin`` voxels (one
    int, or one per axis) and clipped to the array; None when ``mask`` is empty."""
    margins = np.broadcast_to(np.asarray(margin, dtype=int), (mask.ndim,))
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(max(int(hit[0]) - margins[axis], 0), min(int(hit[-1]) + 1 + margins[axis], mask.shape[axis])))
    return tuple(box)


def nodule_stats(mask_zyx: np.ndarray, geometry: Geometry, hu_zyx: np.ndarray | None = None) -> dict:
    """Measurements of one binary nodule mask (z, y, x).

    Returns: centre voxel (i, j, k) and centre LPS mm (centroid), bounding box in voxels
    (i0, j0, k0, i1, j1, k1, end exclusive), volume mm^3, equivalent diameter mm, mean HU if
    ``hu_zyx`` is given. An empty mask gives volume 0 and NaN centres.
    """
    idx = np.nonzero(mask_zyx)
    n = int(idx[0].size)
    vol = n * geometry.voxel_volume_mm3
    if n == 0:
        nan3 = [float("nan")] * 3
        return {"n_voxels": 0, "volume_mm3": 0.0, "diameter_mm": 0.0, "centre_voxel": nan3, "centre_lps": nan3,
                "bbox_voxel": [0] * 6, "mean_hu": float("nan")}
    centre_ijk = np.array([idx[2].mean(), idx[1].mean(), idx[0].mean()])
    bbox = [int(idx[2].min()), int(idx[1].min()), int(idx[0].min()),
            int(idx[2].max()) + 1, int(idx[1].max()) + 1, int(idx[0].max()) + 1]
    out = {
        "n_voxels": n,
        "volume_mm3": float(vol),
        "diameter_mm": equivalent_diameter_mm(vol),
        "centre_voxel": [float(v) for v in centre_ijk],
        "centre_lps": [float(v) for v in geometry.voxel_to_world(centre_ijk)],
        "bbox_voxel": bbox,
        "mean_hu": float(hu_zyx[idx].mean()) if hu_zyx is not None else float("nan"),
    }
    return out


def sphere_mask(geometry: Geometry, centre_lps, diameter_mm: float) -> np.ndarray:
    """Binary (z, y, x) uint8 mask of the voxels whose centre lies inside a sphere (LPS mm, diameter mm).

    Only the sphere's bounding box is evaluated, so this is cheap on large grids.
    """
    out = np.zeros(geometry.shape_zyx, dtype=np.uint8)
    r = diameter_mm / 2.0
    centre_vox = geometry.world_to_voxel(np.asarray(centre_lps, dtype=float))
    half = np.ceil(r / np.asarray(geometry.spacing)) + 1
    lo = np.maximum(np.floor(centre_vox - half).astype(int), 0)
    hi = np.minimum(np.ceil(centre_vox + half).astype(int) + 1, np.asarray(geometry.shape))
    if np.any(hi <= lo):
        return out
    ii, jj, kk = np.meshgrid(*(np.arange(lo[a], hi[a]) for a in range(3)), indexing="ij")
    world = geometry.voxel_to_world(np.stack([ii, jj, kk], axis=-1))
    inside = np.linalg.norm(world - np.asarray(centre_lps, dtype=float), axis=-1) <= r
    out[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = inside.transpose(2, 1, 0)
    return out


# ---------------------------------------------------------------------------------------------
# LIDC reader marks -> masks, grouping, consensus
# ---------------------------------------------------------------------------------------------

@dataclass
class SparseMask:
    """A binary 3D mask stored as its bounding-box crop: ``array`` (z, y, x) bool at ``offset_zyx``."""

    offset_zyx: tuple[int, int, int]
    array: np.ndarray

    @property
    def n_voxels(self) -> int:
        return int(self.array.sum())

    def centroid_ijk(self) -> np.ndarray:
        z, y, x = np.nonzero(self.array)
        return np.array([x.mean() + self.offset_zyx[2], y.mean() + self.offset_zyx[1], z.mean() + self.offset_zyx[0]])

    def bounds(self):
        lo = np.asarray(self.offset_zyx)
        return lo, lo + np.asarray(self.array.shape)

    def paste(self, lo, hi) -> np.ndarray:
        """This mask on the window [lo, hi) (z, y, x), as a bool array of that window's shape."""
        out = np.zeros(tuple(np.asarray(hi) - np.asarray(lo)), dtype=bool)
        s_lo, s_hi = self.bounds()
        a, b = np.maximum(lo, s_lo), np.minimum(hi, s_hi)
        if np.any(b <= a):
            return out
        out[tuple(slice(a[d] - lo[d], b[d] - lo[d]) for d in range(3))] = \
            self.array[tuple(slice(a[d] - s_lo[d], b[d] - s_lo[d]) for d in range(3))]
        return out

    def overlap(self, other: "SparseMask") -> int:
        a_lo, a_hi = self.bounds()
        b_lo, b_hi = other.bounds()
        lo, hi = np.maximum(a_lo, b_lo), np.minimum(a_hi, b_hi)
        if np.any(hi <= lo):
            return 0
        return int((self.paste(lo, hi) & other.paste(lo, hi)).sum())


def fill_slice_contours(shape_yx, rois) -> np.ndarray:
    """Fill the LIDC contours of one slice -> (y, x) bool.

    ``rois``: objects with ``inclusion`` (bool) and ``points_xy`` ((n, 2) column, row). Inclusion
    contours are filled with their boundary pixels; an exclusion contour clears its interior but keeps
    its own boundary pixels (they are nodule pixels around the hole).
    """
    import cv2

    out = np.zeros(shape_yx, dtype=np.uint8)
    for r in rois:
        if r.inclusion and len(r.points_xy):
            cv2.fillPoly(out, [np.ascontiguousarray(r.points_xy, dtype=np.int32)], 1)
    for r in rois:
        if not r.inclusion and len(r.points_xy):
            hole = np.zeros(shape_yx, dtype=np.uint8)
            pts = np.ascontiguousarray(r.points_xy, dtype=np.int32)
            cv2.fillPoly(hole, [pts], 1)
            cv2.polylines(hole, [pts], True, 0)
            out[hole.astype(bool)] = 0
    return out.astype(bool)


def rasterize_rois(rois_by_slice: dict[int, list], shape_zyx) -> SparseMask | None:
    """Contours grouped by slice index k -> the reader's filled 3D mask (None if it fills nothing)."""
    if not rois_by_slice:
        return None
    pts = np.concatenate([r.points_xy for rs in rois_by_slice.values() for r in rs if len(r.points_xy)])
    ks = sorted(rois_by_slice)
    x0, y0 = np.maximum(pts.min(axis=0), 0)
    x1 = min(int(pts[:, 0].max()) + 1, shape_zyx[2])
    y1 = min(int(pts[:, 1].max()) + 1, shape_zyx[1])
    if x1 <= x0 or y1 <= y0:
        return None
    k0, k1 = ks[0], ks[-1] + 1
    arr = np.zeros((k1 - k0, y1 - y0, x1 - x0), dtype=bool)
    shift = np.array([x0, y0], dtype=np.int32)
    for k, rs in rois_by_slice.items():
        local = [type(r)(r.z_mm, r.sop_uid, r.inclusion, r.points_xy - shift) for r in rs]
        arr[k - k0] |= fill_slice_contours(arr.shape[1:], local)
    if not arr.any():
        return None
    return SparseMask((k0, int(y0), int(x0)), arr)


def group_marks(items, link, readers) -> list[list[int]]:
    """Group marks of several readers into findings (constrained single linkage).

    ``items``: number of marks; ``link(a, b)`` -> a sort key (smaller = closer) or None when a and
    b cannot be the same finding; ``readers[a]``: reader of mark a. Pairs are merged closest first,
    never putting two marks of one reader in the same group. Returns groups of mark indices, ordered
    by their smallest index.
    """
    pairs = []
    for a in range(items):
        for b in range(a + 1, items):
            if readers[a] == readers[b]:
                continue
            key = link(a, b)
            if key is not None:
                pairs.append((key, a, b))
    pairs.sort()
    group_of = list(range(items))
    members = {i: [i] for i in range(items)}
    for _, a, b in pairs:
        ga, gb = group_of[a], group_of[b]
        if ga == gb:
            continue
        if {readers[i] for i in members[ga]} & {readers[i] for i in members[gb]}:
            continue
        for i in members[gb]:
            group_of[i] = ga
        members[ga].extend(members.pop(gb))
    return sorted((sorted(m) for m in members.values()), key=lambda m: m[0])


def consensus_mask(masks: list[SparseMask], threshold: float = 0.5) -> tuple[SparseMask, SparseMask]:
    """Voxels in at least ``threshold`` of the masks -> (consensus, per-voxel reader count as SparseMask of ints)."""
    lo = np.min([m.bounds()[0] for m in masks], axis=0)
    hi = np.max([m.bounds()[1] for m in masks], axis=0)
    count = np.zeros(tuple(hi - lo), dtype=np.uint8)
    for m in masks:
        count += m.paste(lo, hi)
    need = threshold * len(masks) - 1e-9
    return SparseMask(tuple(int(v) for v in lo), count >= need), SparseMask(tuple(int(v) for v in lo), count)
