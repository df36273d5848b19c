"""Simulated LIDC readers: per-reader nodule masks, contours, characteristics and reader IDs.

Masks are bool (z, y, x) crops of the case grid (one slice: (y, x)); contour points are (column, row)
pixel indices, as in LIDC edge maps. Each nodule is contoured by 1-4 of the case's readers. A reader's
mask is the true mask with local edits on some slices (a boundary arc grown or shrunk by one pixel, one
slice more or less at an end). Edits are budgeted per voxel so that the >= 50 % consensus reproduces the
truth: a voxel outside the truth is added by fewer readers than the consensus needs, a voxel inside is
removed by no more readers than the consensus can spare. Only big nodules get, in addition, unbudgeted
edits (each at most 2 % of their voxels), so the consensus is close to, not always equal to, the truth.
Cavitary nodules (an air cavity, not part of the mask) give hole contours (``inclusion FALSE``), as in
LIDC.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import ndimage

from data_prep.synth.nodules import NoduleSpec

_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=np.uint8)


def mask_contours(mask_yx: np.ndarray) -> list[tuple[bool, np.ndarray]]:
    """LIDC contours of a 2D mask: (inclusion, (n, 2) int points (column, row)) per contour.

    Points are the region's boundary pixels in order (``cv2.findContours``, RETR_CCOMP,
    CHAIN_APPROX_NONE): outer boundaries are inclusion=True, hole boundaries inclusion=False.
    """
    m = np.pad(np.asarray(mask_yx, dtype=np.uint8), 1)
    contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None:
        return []
    return [(bool(h[3] < 0), c[:, 0, :].astype(np.int32) - 1) for c, h in zip(contours, hierarchy[0])]


def fill_contours(shape_yx, contours: list[tuple[bool, np.ndarray]]) -> np.ndarray:
    """Inverse of :func:`mask_contours` (the parser's rule): fill every inclusion polygon (boundary
    included), then clear each hole polygon's interior, keeping the hole's own boundary pixels."""
    out = np.zeros(shape_yx, dtype=np.uint8)
    for inclusion, pts in contours:
        if inclusion:
            cv2.fillPoly(out, [pts.reshape(-1, 1, 2)], 1)
    for inclusion, pts in contours:
        if not inclusion:
            hole = np.zeros(shape_yx, dtype=np.uint8)
            cv2.fillPoly(hole, [pts.reshape(-1, 1, 2)], 1)
            cv2.polylines(hole, [pts.reshape(-1, 1, 2)], True, 0)
            out[hole.astype(bool)] = 0
    return out.astype(bool)


def canonical_reader_mask(mask_zyx: np.ndarray) -> np.ndarray:
    """The mask as it reads back from its contours, slice by slice (a fixed point of write + parse)."""
    out = mask_zyx.copy()
    for z in range(out.shape[0]):
        sl = out[z]
        for _ in range(4):
            rec = fill_contours(sl.shape, mask_contours(sl))
            if np.array_equal(rec, sl):
                break
            sl = rec
        else:
            sl = ndimage.binary_fill_holes(sl)
        out[z] = sl
    return out


def _sector(shape_yx, centre_yx, rng) -> np.ndarray:
    yy, xx = np.mgrid[0:shape_yx[0], 0:shape_yx[1]]
    ang = np.arctan2(yy - centre_yx[0], xx - centre_yx[1])
    a0, w = rng.uniform(-np.pi, np.pi), rng.uniform(np.pi / 4, np.pi)
    return np.abs((ang - a0 + np.pi) % (2 * np.pi) - np.pi) <= w


def simulate_reader_masks(truth_zyx: np.ndarray, n_readers: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per-reader masks (bool, same crop as ``truth_zyx``, which needs >= 1 empty slice / 2 empty pixels
    of padding) that disagree with the truth at the edges; see the module doc for the budget rule."""
    need = math.ceil(0.5 * n_readers - 1e-9)
    add_budget, remove_budget = need - 1, n_readers - need
    added = np.zeros(truth_zyx.shape, dtype=np.uint8)
    removed = np.zeros(truth_zyx.shape, dtype=np.uint8)
    zs = np.flatnonzero(truth_zyx.any(axis=(1, 2)))
    total = int(truth_zyx.sum())
    masks = []
    for _ in range(n_readers):
        m = truth_zyx.copy()
        for z in zs:
            if rng.random() > 0.6:
                continue
            sl = truth_zyx[z].astype(np.uint8)
            cy, cx = (np.mean(v) for v in np.nonzero(sl))
            sector = _sector(sl.shape, (cy, cx), rng)
            if rng.random() < 0.5:
                sel = (cv2.dilate(sl, _CROSS) > 0) & ~truth_zyx[z] & sector & (added[z] < add_budget)
                m[z] |= sel
                added[z] += sel
            else:
                sel = truth_zyx[z] & ~(cv2.erode(sl, _CROSS) > 0) & sector & (removed[z] < remove_budget) & m[z]
                m[z] &= ~sel
                removed[z] += sel
        if len(zs) >= 2 and rng.random() < 0.3:
            end, beyond = (zs[0], zs[0] - 1) if rng.random() < 0.5 else (zs[-1], zs[-1] + 1)
            if rng.random() < 0.5 and 0 <= beyond < truth_zyx.shape[0]:
                extra = cv2.erode(truth_zyx[end].astype(np.uint8), _CROSS) > 0
                sel = extra & (added[beyond] < add_budget)
                m[beyond] |= sel
                added[beyond] += sel
            else:
                sel = truth_zyx[end] & (removed[end] < remove_budget) & m[end]
                m[end] &= ~sel
                removed[end] += sel
        masks.append(m)
    # Unbudgeted edits, each at most 2 % of the nodule's voxels (so only big nodules get them): one
    # reader's end slice dropped or repeated, one reader's boundary arc grown on a middle slice.
    if len(zs) >= 3 and rng.random() < 0.5:
        end, beyond = (zs[0], zs[0] - 1) if rng.random() < 0.5 else (zs[-1], zs[-1] + 1)
        r = int(rng.integers(n_readers))
        if truth_zyx[end].sum() <= 0.02 * total:
            if rng.random() < 0.5:
                masks[r][end] = False
            elif 0 <= beyond < truth_zyx.shape[0]:
                masks[r][beyond] |= truth_zyx[end]
    if len(zs) >= 3 and rng.random() < 0.5:
        z = int(zs[len(zs) // 2])
        sl = truth_zyx[z].astype(np.uint8)
        cy, cx = (np.mean(v) for v in np.nonzero(sl))
        sel = (cv2.dilate(sl, _CROSS) > 0) & ~truth_zyx[z] & _sector(sl.shape, (cy, cx), rng)
        if sel.sum() <= 0.02 * total:
            masks[int(rng.integers(n_readers))][z] |= sel
    out = []
    for m in masks:
        m = canonical_reader_mask(m)
        out.append(m if is_contourable(m) else truth_zyx.copy())
    return out


def is_contourable(mask_zyx: np.ndarray) -> bool:
    """True if some slice has a region of >= 2 pixels. LIDC reads a mark whose rois are all single
    points as a nodule < 3 mm, so a contoured mark must have at least one longer contour."""
    for z in np.flatnonzero(mask_zyx.any(axis=(1, 2))):
        if any(inc and len(pts) > 1 for inc, pts in mask_contours(mask_zyx[z])):
            return True
    return False


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else 1.0


def draw_ratings(rng, spec: NoduleSpec, n_readers: int) -> list[dict[str, int]]:
    """LIDC characteristics per reader, scattered around values the nodule suggests."""
    d = spec.diameter_mm
    latent = 1 + 4 * min(max((d - 3) / 20, 0), 1) + (0.7 if spec.type == "part_solid" else 0) \
        - (0.5 if spec.type == "ground_glass" else 0) + rng.normal(0, 0.5)
    texture = {"ground_glass": 1, "part_solid": 3}.get(spec.type, 5)
    subtle = 2 if spec.type == "ground_glass" else (3 if d < 6 else 4)
    elong = max(spec.axes) / min(spec.axes)
    spher = 5 if elong < 1.1 else (4 if elong < 1.25 else 3)
    lob = 1 + int(sum(spec.perturb_amp) > 0.12) + int(sum(spec.perturb_amp) > 0.15)
    out = []
    for _ in range(n_readers):
        j = lambda v, lo=1, hi=5: int(np.clip(round(v + rng.choice([-1, 0, 0, 0, 1])), lo, hi))  # noqa: E731
        out.append({"subtlety": j(subtle + 1), "internalStructure": 4 if spec.cavity_fraction > 0 else 1,
                    "calcification": 6,
                    "sphericity": j(spher), "margin": j(3 if spec.type == "ground_glass" else 4),
                    "lobulation": j(lob), "spiculation": j(1), "texture": j(texture), "malignancy": j(latent)})
    return out


def draw_reader_ids(rng, n) -> list[str]:
    """``n`` distinct reader IDs, random signed 32-bit integers as text (LIDC's servicingRadiologistID)."""
    ids: list[str] = []
    while len(ids) < n:
        v = str(int(rng.integers(-2**31, 2**31)))
        if v not in ids:
            ids.append(v)
    return ids
