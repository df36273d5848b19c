"""Small-nodule candidates from a 3D dot-enhancement filter, added to the segmenter's candidates.

The 2.5D U-Net learned a size: it gives no voxel above 0.5 to most 3-6 mm nodules (bundle docs). The
classic CAD answer is a blob filter on the Hessian of the CT (Li, Sone & Doi, Med. Phys. 30(8), 2003):
at a nodule all three second derivatives are strongly negative, at a vessel one is about 0, at a wall
two are. :func:`find_blob_candidates` finds its local maxima in the lung; the stage-2 classifier, trained
on them (``lungnod train-models``), tells the nodules from the vessel crossings and branch points.

Conventions (see :mod:`data_prep.coords`): arrays are ``(z, y, x)``; voxel indices ``(i, j, k)``; world
positions LPS mm; HU. Each blob becomes a candidate dict with the segmenter's keys
(:mod:`lungnod_ext.inference.candidates`) plus ``detector`` ("blob"), ``blob_response`` (the filter's
scale-normalised response, HU) and ``blob_rank`` (0 = strongest); its label-map voxels are a local
region grown from the peak (a threshold half-way between the peak and the lung around it, within 1.5x
the filter's radius), so the report can outline it.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data.meta_tensor import MetaTensor
from monai.transforms import MapTransform
from scipy import ndimage as ndi

from data_prep.coords import Geometry, bbox_lps
from data_prep.masks import bounding_box, equivalent_diameter_mm
from data_prep.slice_profile import slice_profile_sigma, slice_thickness_or_none
from lungnod_ext.data.meta import channel_view_zyx, geometry_from_meta_tensor

DEFAULT_SIGMAS_MM = (1.0, 1.4, 2.0, 2.8)
"""Filter scales: a solid sphere of diameter d answers best at sigma = d / (2 sqrt 3), so 3.5-10 mm."""
HU_CLIP = (-1000.0, 200.0)          # bone and contrast would otherwise dominate the second derivatives
FAINT_HU = (-800.0, -500.0)
"""Smoothed CT at a dot-filter peak that makes it a faint blob (ground glass, part-solid; HU, [low, high))."""


def _sym3_eigenvalues(a, b, c, d, e, f):
    """Eigenvalues of the symmetric matrices [[a, d, e], [d, b, f], [e, f, c]] (arrays), ascending."""
    q = (a + b + c) / 3.0
    p1 = d * d + e * e + f * f
    p = np.sqrt(((a - q) ** 2 + (b - q) ** 2 + (c - q) ** 2 + 2.0 * p1) / 6.0) + 1e-12
    ba, bb, bc, bd, be, bf = (a - q) / p, (b - q) / p, (c - q) / p, d / p, e / p, f / p
    r = np.clip((ba * (bb * bc - bf * bf) - bd * (bd * bc - bf * be) + be * (bd * bf - bb * be)) / 2.0, -1.0, 1.0)
    phi = np.arccos(r) / 3.0
    high = q + 2.0 * p * np.cos(phi)
    low = q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0)
    return low, 3.0 * q - high - low, high


CHUNK_VOXELS = 1 << 20
"""Voxels whose Hessian :func:`_scale_response` works out at a time: its temporaries are ~50 bytes a voxel, so
all of a thin-slice scan's lung at once took hundreds of MB per scale (the results do not depend on it)."""


def _hessian_response(flat: np.ndarray, idx: np.ndarray, strides, sp: np.ndarray, norm: float,
                      floor: float) -> tuple[np.ndarray, np.ndarray]:
    """The dot response at the flat indices ``idx`` of the smoothed volume ``flat`` -> (the indices that can
    answer, their float32 responses); see :func:`_scale_response`."""
    diag = [(flat[idx + strides[a]] + flat[idx - strides[a]] - 2.0 * flat[idx]) * np.float32(norm / sp[a] ** 2)
            for a in range(3)]
    keep = (diag[0] < 0) & (diag[1] < 0) & (diag[2] < 0) & (diag[0] + diag[1] + diag[2] < -3.0 * floor)
    idx = idx[keep]
    if idx.size == 0:
        return idx, np.zeros(0, np.float32)
    h = {(a, a): diag[a][keep].astype(np.float64) for a in range(3)}
    del diag, keep
    for a in range(3):
        for b in range(a + 1, 3):
            sa, sb = strides[a], strides[b]
            h[(a, b)] = (flat[idx + sa + sb] - flat[idx + sa - sb] - flat[idx - sa + sb] + flat[idx - sa - sb]) * (
                norm / (4.0 * sp[a] * sp[b]))
    low, _, high = _sym3_eigenvalues(*(h[k] for k in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))))
    # low <= mid <= high; all negative <=> high < 0; |high| is the smallest magnitude, |low| the largest
    return idx, np.where(high < 0, high * high / np.maximum(-low, 1e-6), 0.0).astype(np.float32)


def _scale_response(vol: np.ndarray, sp: np.ndarray, sigma: float, inner: np.ndarray, min_value: float,
                    floor: float) -> tuple[np.ndarray, np.ndarray]:
    """One scale of :func:`dot_enhancement`: (flat indices, float32 responses) of the voxels that can answer."""
    strides = np.array(vol.shape[1] * vol.shape[2], dtype=np.int64), np.int64(vol.shape[2]), np.int64(1)
    smooth = ndi.gaussian_filter(vol, sigma=[sigma / s for s in sp], mode="nearest")
    flat = smooth.ravel()
    # the Hessian only at the voxels that can answer: in the mask and above min_value (vessels, nodules;
    # a fraction of the lung box), by central differences on the flat array (inner voxels: in bounds),
    # CHUNK_VOXELS at a time
    idx = np.flatnonzero(inner & (smooth > min_value))
    parts = [_hessian_response(flat, idx[i:i + CHUNK_VOXELS], strides, sp, sigma * sigma, floor)
             for i in range(0, idx.size, CHUNK_VOXELS)]
    if not parts:
        return idx, np.zeros(0, np.float32)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def dot_enhancement(volume_zyx: np.ndarray, spacing_zyx_mm: Sequence[float], sigmas_mm: Sequence[float] = DEFAULT_SIGMAS_MM,
                    mask_zyx: np.ndarray | None = None, min_value: float = -800.0,
                    floor: float = 0.0, workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Multi-scale dot filter of a (z, y, x) HU volume -> (response, best sigma in mm), both float32 (z, y, x).

    At each scale sigma (mm) the volume is Gaussian-smoothed and its Hessian taken by central differences
    (in HU / mm^2, times sigma^2); where all three eigenvalues are negative the response is
    ``lambda_small^2 / |lambda_large|`` (HU), else 0; the maximum over scales is kept (the first scale on
    ties). Only voxels in ``mask_zyx`` whose smoothed value exceeds ``min_value`` are evaluated (others are
    0). Responses that cannot exceed ``floor`` (a diagonal entry >= 0, or a trace above -3 ``floor``: the
    response is at most a third of -trace) are left 0 without the eigenvalues (what makes the filter fast).
    The scales run in ``workers`` threads (None: up to 2, as many as there are CPUs; the result does not
    depend on it)."""
    vol = np.asarray(volume_zyx, dtype=np.float32)
    sp = np.asarray(spacing_zyx_mm, dtype=np.float64)
    response = np.zeros(vol.shape, np.float32)
    best = np.zeros(vol.shape, np.float32)
    inner = np.zeros(vol.shape, bool)
    inner[1:-1, 1:-1, 1:-1] = True
    if mask_zyx is not None:
        inner &= np.asarray(mask_zyx, dtype=bool)
    sigmas = [float(s) for s in sigmas_mm]
    n = max(1, min(len(sigmas), workers if workers is not None else min(2, os.cpu_count() or 1)))

    def one(sigma):
        return _scale_response(vol, sp, sigma, inner, min_value, floor)

    if n == 1:
        results = map(one, sigmas)
    else:
        pool = ThreadPoolExecutor(max_workers=n)
        results = pool.map(one, sigmas)                 # in sigma order, computed n at a time
    try:
        for sigma, (idx, value) in zip(sigmas, results):
            better = value > response.ravel()[idx]
            response.ravel()[idx[better]] = value[better]
            best.ravel()[idx[better]] = sigma
    finally:
        if n > 1:
            pool.shutdown()
    return response, best


def _local_peaks(response: np.ndarray, spacing_zyx_mm, min_separation_mm: float, min_response: float,
                 max_peaks: int) -> np.ndarray:
    """(n, 3) (z, y, x) indices of local maxima above ``min_response``, strongest first, at most ``max_peaks``."""
    size = [max(3, int(round(2 * min_separation_mm / s)) | 1) for s in spacing_zyx_mm]
    peak = (response == ndi.maximum_filter(response, size=size, mode="constant")) & (response > min_response)
    zyx = np.argwhere(peak)
    order = np.argsort(-response[tuple(zyx.T)], kind="stable")[:max_peaks]
    return zyx[order]


def _grow_region(hu_zyx: np.ndarray, spacing_zyx: np.ndarray, centre_zyx: np.ndarray, radius_mm: float,
                 taken: np.ndarray | None) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """The blob around ``centre_zyx`` (original-grid voxel): voxels above half-way between the peak's HU and
    the lung around it, connected to the peak, within 1.5 ``radius_mm``. -> (box, bool mask in the box)."""
    reach = 1.5 * radius_mm
    half = np.ceil((reach + 2.0) / spacing_zyx).astype(int)
    c = np.rint(centre_zyx).astype(int)
    box = tuple(slice(max(int(ci - hi), 0), min(int(ci + hi + 1), n)) for ci, hi, n in zip(c, half, hu_zyx.shape))
    crop = ndi.gaussian_filter(np.asarray(hu_zyx[box], dtype=np.float32), sigma=list(0.5 / spacing_zyx))
    grids = np.meshgrid(*[(np.arange(s.start, s.stop) - ci) * sp for s, ci, sp in zip(box, centre_zyx, spacing_zyx)],
                        indexing="ij")
    dist = np.sqrt(sum(g * g for g in grids))
    core = dist <= max(radius_mm * 0.5, float(spacing_zyx.max()))
    if not core.any():
        return None
    peak_hu = float(crop[core].max())
    lung = crop[(dist > reach) & (crop < -500)]
    background = float(np.median(lung)) if lung.size >= 10 else -850.0
    if peak_hu <= background + 100.0:
        return None
    inside = (crop >= 0.5 * (peak_hu + background)) & (dist <= reach)
    labels, _ = ndi.label(inside)
    seed = np.unravel_index(np.argmax(np.where(core & inside, crop, -np.inf)), crop.shape)
    if not inside[seed]:
        return None
    region = labels == labels[seed]
    if taken is not None and (region & taken[box]).any():
        return None                     # connected to another candidate: part of that object
    return box, region


class DotPeaks(NamedTuple):
    """What :func:`dot_filter_peaks` found: the peaks of the lung box ``box`` of the input, as positions
    ``centres_zyx`` (n, 3) in voxels of ``input[box]`` (float: mapped back from the filter's grid), their
    ``response`` (HU) and best filter scale ``sigma_mm``, strongest first."""

    box: tuple[slice, ...]
    centres_zyx: np.ndarray
    response: np.ndarray
    sigma_mm: np.ndarray
    rank: np.ndarray
    """Each peak's rank among all the filter's peaks by response (0 = strongest)."""
    faint: np.ndarray
    """True for a peak taken by the faint quota (see :func:`dot_filter_peaks`)."""


def _zoom_linear(vol: np.ndarray, zoom: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.zoom(vol, zoom, order=1, grid_mode=False)`` (corner voxels aligned, same output shape),
    by torch's trilinear interpolation (threaded; same values to float32 rounding)."""
    shape = tuple(int(round(n * z)) for n, z in zip(vol.shape, zoom))
    x = torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(x, size=shape, mode="trilinear", align_corners=True)[0, 0].numpy()


def dot_filter_peaks(hu_zyx: np.ndarray, spacing_zyx_mm: Sequence[float], lung_zyx: np.ndarray | None = None,
                     grid_mm: float | None = None, sigmas_mm: Sequence[float] = DEFAULT_SIGMAS_MM,
                     max_peaks: int = 100, min_response: float = 5.0,
                     min_separation_mm: float = 4.0, faint_max_peaks: int = 0,
                     faint_hu: Sequence[float] = FAINT_HU, slice_profile_mm: float | None = None,
                     slice_thickness_mm: float | None = None) -> DotPeaks | None:
    """The strongest local maxima of :func:`dot_enhancement` in a (z, y, x) HU volume, over ``lung_zyx``
    (non-zero = lung, same grid; None: everywhere; None is returned when it is empty): peaks at least
    ``min_separation_mm`` apart with response > ``min_response`` (HU), ``max_peaks`` at most (their ``rank`` 0, 1,
    ...). The filter runs
    on the lung box (HU clipped to ``HU_CLIP``), resampled to ``grid_mm`` along every axis finer than that
    (coarser axes, usually z, are kept; None: the volume's own grid).

    ``faint_max_peaks`` > 0 adds a quota for faint blobs (ground glass, part-solid): up to that many more
    peaks, strongest first, from those ranked below ``max_peaks`` whose CT smoothed with a 1 mm Gaussian lies
    within ``faint_hu`` (HU, [low, high)) at the peak. The response scales with a blob's contrast, so a
    ground-glass nodule of -650 HU answers a third of a solid one and ranks behind hundreds of vessel
    crossings; among the faint peaks it is near the top. They come after the others, flagged in ``faint``, with
    their rank among all peaks.

    ``slice_profile_mm`` (FWHM, mm; None: off): a volume with thinner slices (z spacing on the filter's grid, after
    ``grid_mm``) is filtered as a reconstruction of that slice thickness on that grid (a Gaussian along z,
    :func:`data_prep.slice_profile.slice_profile_sigma`): on thin slices a small vessel's cross-section keeps its
    full contrast over a few slices and answers like a nodule, where partial volume in the 2.5 mm series the
    classifier learned on dims it. Thicker or equal slices are untouched. ``slice_thickness_mm``: the series' own
    slice thickness (mm, DICOM SliceThickness; None: taken to be the slice spacing): an overlapping reconstruction
    (e.g. 2.5 mm slices every 1.25 mm) already has a wider profile than its spacing and is blurred only by what it
    lacks, not at all when that is already 2.5 mm."""
    hu = np.asarray(hu_zyx)
    spacing = np.asarray(spacing_zyx_mm, dtype=float)
    if lung_zyx is not None:
        lung = np.asarray(lung_zyx)
        box = bounding_box(lung != 0, [1, 1, 1])
        if box is None:
            return None
    else:
        lung, box = None, tuple(slice(0, n) for n in hu.shape)
    # the filter works on one contiguous float32 copy of the lung box, clipped in place (the inputs are often
    # transposed views; no unclipped copy is kept: on a 0.625 mm scan the box is about 230 MB of float32); always a
    # copy, so a float32 C-ordered input is never clipped or blurred in place
    work = np.array(hu[box], dtype=np.float32, order="C", copy=True)
    np.clip(work, *HU_CLIP, out=work)
    lung_box = np.ascontiguousarray(lung[box]) != 0 if lung is not None else None
    zoom = np.ones(3) if grid_mm is None else np.minimum(spacing / grid_mm, 1.0)          # never upsample
    work_shape = np.asarray(work.shape)
    if np.allclose(zoom, 1.0):
        vol, work_mask, work_spacing = work, lung_box, spacing
    else:
        vol = _zoom_linear(work, zoom)
        work_spacing = spacing * np.asarray(work.shape) / np.asarray(vol.shape)
        work_mask = None
        if lung_box is not None:
            work_mask = ndi.zoom(lung_box.astype(np.uint8), zoom, order=0, mode="nearest", grid_mode=False).astype(bool)
            if work_mask.shape != vol.shape:
                work_mask = np.resize(work_mask, vol.shape)
    del work, lung_box   # full-resolution copies (vol / work_mask when not zoomed): not held through the filter
    # the slice profile on the filter's grid (z resampled to grid_mm first when finer: a 0.625 mm scan's box is
    # filtered at a third of its size); vol is this function's own float32 array either way
    sigma_z = (slice_profile_sigma(float(work_spacing[0]), float(slice_profile_mm), slice_thickness_mm)
               if slice_profile_mm else None)
    if sigma_z is not None:
        ndi.gaussian_filter1d(vol, sigma_z, axis=0, output=vol, mode="nearest")
    response, best_sigma = dot_enhancement(vol, work_spacing, sigmas_mm, work_mask, floor=min_response)
    faint_max_peaks = max(int(faint_max_peaks), 0)
    peaks = _local_peaks(response, work_spacing, min_separation_mm, min_response,
                         max_peaks if faint_max_peaks == 0 else response.size)
    top = min(max_peaks, len(peaks))
    rank, faint = np.arange(top), np.zeros(top, bool)       # a peak's rank is its index in the sorted peaks
    if faint_max_peaks:
        low, high = (float(v) for v in faint_hu)
        smooth_hu = _smoothed_at(vol, work_spacing, peaks[top:], 1.0)
        pick = np.flatnonzero((smooth_hu >= low) & (smooth_hu < high))[:faint_max_peaks] + top
        rank, faint = np.r_[rank, pick], np.r_[faint, np.ones(len(pick), bool)]
    peaks = peaks[rank]
    scale = (work_shape - 1) / np.maximum(np.asarray(vol.shape) - 1, 1)
    at = tuple(peaks.T)
    return DotPeaks(box, peaks * scale, response[at], best_sigma[at], rank, faint)


def _smoothed_at(vol: np.ndarray, spacing_zyx: np.ndarray, points_zyx: np.ndarray, sigma_mm: float) -> np.ndarray:
    """The (z, y, x) volume smoothed with a Gaussian of ``sigma_mm`` at integer voxel ``points_zyx`` (n, 3),
    worked out on a small box around each point only (not the whole volume)."""
    sig = sigma_mm / np.asarray(spacing_zyx, dtype=float)
    half = np.ceil(3.0 * sig).astype(int)
    kernels = [np.exp(-0.5 * (np.arange(-h, h + 1) / s) ** 2) for h, s in zip(half, sig)]
    kernels = [k / k.sum() for k in kernels]
    padded = np.pad(vol, [(h, h) for h in half], mode="edge")
    out = np.empty(len(points_zyx), np.float32)
    for n, (z, y, x) in enumerate(np.asarray(points_zyx, dtype=int)):
        crop = padded[z:z + 2 * half[0] + 1, y:y + 2 * half[1] + 1, x:x + 2 * half[2] + 1]
        out[n] = np.einsum("ijk,i,j,k->", crop, *kernels)
    return out


def find_blob_candidates(hu_zyx: np.ndarray, geometry: Geometry, lung_zyx: np.ndarray | None = None,
                         grid_mm: float = 1.0, sigmas_mm: Sequence[float] = DEFAULT_SIGMAS_MM,
                         max_candidates: int = 100, min_response: float = 5.0, min_separation_mm: float = 4.0,
                         taken_zyx: np.ndarray | None = None, faint_max_candidates: int = 0,
                         faint_hu: Sequence[float] = FAINT_HU,
                         slice_profile_mm: float | None = None,
                         slice_thickness_mm: float | None = None) -> list[tuple[dict, tuple[slice, ...], np.ndarray]]:
    """Dot-filter candidates of a (z, y, x) HU volume on ``geometry``: the peaks of :func:`dot_filter_peaks`
    (``lung_zyx``, ``grid_mm`` and the filter options as there; ``max_candidates`` peaks at most), each
    outlined by region growing; a peak whose grown region is empty is skipped. Returns ``[(candidate dict
    without id / probabilities, box, region mask)]``: the region is ``mask`` inside ``hu_zyx[box]``. A
    region that touches ``taken_zyx`` (non-zero: another candidate's voxels, e.g. a label map) or an earlier
    blob (e.g. a lobulation at the edge of the U-Net's segment of a nodule) is that object, not a new
    candidate. ``faint_max_candidates`` peaks more from the faint quota (``faint_hu``; see
    :func:`dot_filter_peaks`) become candidates of ``detector`` "faint"; ``blob_rank`` is a peak's rank among
    all the filter's peaks either way. ``slice_profile_mm``: the filter sees thinner slices at that slice
    profile (:func:`dot_filter_peaks`, from the series' ``slice_thickness_mm`` where known); the regions are grown
    on ``hu_zyx`` as it is."""
    spacing = np.asarray(geometry.spacing, dtype=float)[::-1]
    peaks = dot_filter_peaks(hu_zyx, spacing, lung_zyx, grid_mm, sigmas_mm, max_candidates, min_response,
                             min_separation_mm, faint_max_candidates, faint_hu, slice_profile_mm, slice_thickness_mm)
    if peaks is None:
        return []
    box = peaks.box
    hu_box = np.asarray(hu_zyx)[box]                # a view: the region growing reads small crops of it
    offset = np.array([s.start for s in box])
    taken = (np.ascontiguousarray(taken_zyx[box]) != 0 if taken_zyx is not None
             else np.zeros(hu_box.shape, bool))
    found = []
    for rank, is_faint, centre, response, sigma in zip(peaks.rank, peaks.faint, peaks.centres_zyx, peaks.response,
                                                       peaks.sigma_mm):
        grown = _grow_region(hu_box, spacing, centre, float(np.sqrt(3.0) * float(sigma)), taken)
        if grown is None:
            continue
        local_box, region = grown
        taken[local_box] |= region
        rbox = tuple(slice(b.start + o, b.stop + o) for b, o in zip(local_box, offset))
        mean_hu = float(np.asarray(hu_box[local_box], dtype=np.float32)[region].mean(dtype=np.float64))
        found.append(({**region_candidate(rbox, region, geometry, mean_hu), "detector": "faint" if is_faint else "blob",
                       "blob_response": float(response), "blob_rank": int(rank)}, rbox, region))
    return found


def region_candidate(box: tuple[slice, ...], region: np.ndarray, geometry: Geometry, mean_hu: float) -> dict:
    """The candidate fields of a region (bool ``region`` inside the (z, y, x) ``box`` of a volume on
    ``geometry``) with the segmenter's keys: centre (voxel i, j, k and LPS mm), bounding box (voxel and LPS mm),
    equivalent diameter (mm), volume (mm3), ``mean_hu`` as given, voxel count."""
    zyx = np.argwhere(region) + np.array([s.start for s in box])
    centre_ijk = zyx.mean(axis=0)[::-1]
    lo, hi = zyx.min(axis=0), zyx.max(axis=0) + 1
    bbox = [int(lo[2]), int(lo[1]), int(lo[0]), int(hi[2]), int(hi[1]), int(hi[0])]
    volume = float(len(zyx) * geometry.voxel_volume_mm3)
    return {"centre_voxel": [float(v) for v in centre_ijk],
            "centre_lps": [float(v) for v in geometry.voxel_to_world(centre_ijk)],
            "bbox_voxel": bbox,
            "bbox_lps_mm": bbox_lps(geometry, bbox),
            "diameter_mm": equivalent_diameter_mm(volume),
            "volume_mm3": volume,
            "mean_hu": mean_hu,
            "n_voxels": int(len(zyx))}


def append_region_candidates(candidates: list[dict], found, label_map_zyx: np.ndarray,
                             prob_zyx: np.ndarray | None) -> list[dict]:
    """``candidates`` (ids 1..n, their voxels in ``label_map_zyx``; without a ``detector``: the segmenter's) +
    ``found`` (``[(candidate dict without id / probabilities, box, region)]``), ids n+1.., written into
    ``label_map_zyx`` (in place); each new one's ``max_prob`` / ``mean_prob`` are the segmenter's probabilities
    over its region (``prob_zyx``; 0 without one)."""
    out = [{**c, "detector": c.get("detector", "segmentation")} for c in candidates]
    next_id = max((int(c["id"]) for c in candidates), default=0) + 1
    for cand, box, region in found:
        values = np.asarray(prob_zyx[box])[region] if prob_zyx is not None else np.zeros(1)
        label_map_zyx[box][region] = next_id
        out.append({"id": next_id, **cand, "max_prob": float(values.max()), "mean_prob": float(values.mean())})
        next_id += 1
    return out


def add_blob_candidates(candidates: list[dict], label_map_zyx: np.ndarray, prob_zyx: np.ndarray | None,
                        hu_zyx: np.ndarray, geometry: Geometry, lung_zyx: np.ndarray | None = None,
                        **options) -> list[dict]:
    """``candidates`` (the segmenter's, ids 1..n, their voxels in ``label_map_zyx``) + the blobs of
    :func:`find_blob_candidates` that do not overlap them (:func:`append_region_candidates`). The segmenter's
    candidates get ``detector`` "segmentation"."""
    found = find_blob_candidates(hu_zyx, geometry, lung_zyx, taken_zyx=label_map_zyx, **options)
    return append_region_candidates(candidates, found, label_map_zyx, prob_zyx)


class AddBlobCandidatesd(MapTransform):
    """Post-processing for the segmentation bundle, after ``ExtractCandidatesd``: appends dot-filter
    candidates (:func:`add_blob_candidates`) to ``data[candidates_key]`` and their regions to
    ``data[labels_key]``.

    ``image_key``: the CT in HU on the prediction's grid, ``(1, X, Y, Z)``; ``lung_mask_key``: the lung
    mask on it (the filter runs only there); ``keys``: the prediction (for the blobs' probabilities).
    ``enabled`` False passes data through (a config switch); ``slice_thickness_key``: the item's DICOM slice
    thickness (mm; :func:`lungnod_ext.data.inputs.resolve_inputs` sets it for a converted DICOM series; absent or
    None: what is recorded beside the image file, else the slice spacing; :meth:`slice_thickness`), for
    ``slice_profile_mm``; other keyword arguments go to :func:`find_blob_candidates`
    (e.g. ``max_candidates``, ``slice_profile_mm``)."""

    def __init__(self, keys: KeysCollection = "pred", image_key: str = "ct_hu", lung_mask_key: str | None = "lung_roi",
                 candidates_key: str = "candidates", labels_key: str = "candidate_labels", enabled: bool = True,
                 allow_missing_keys: bool = False, slice_thickness_key: str | None = "slice_thickness_mm",
                 **options) -> None:
        super().__init__(keys, allow_missing_keys)
        for name, config_id in (("max_candidates", "blob_max_candidates"), ("faint_max_candidates", "blob_faint_candidates")):
            value = options.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"AddBlobCandidatesd {name} (segmentation config {config_id}) must be a whole number "
                                 f">= 0, got {value!r}")
        profile = options.get("slice_profile_mm")
        if profile is not None and (isinstance(profile, bool) or not isinstance(profile, (int, float)) or not profile > 0):
            raise ValueError("AddBlobCandidatesd slice_profile_mm (segmentation config blob_slice_profile_mm) must be a "
                             f"slice thickness in mm > 0 or null, got {profile!r}")
        self.image_key, self.lung_mask_key = image_key, lung_mask_key
        self.candidates_key, self.labels_key = candidates_key, labels_key
        self.enabled, self.options = enabled, options
        self.slice_thickness_key = slice_thickness_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            if d.get(self.image_key) is None or d.get(self.labels_key) is None:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"AddBlobCandidatesd needs {self.image_key!r} and {self.labels_key!r}")
            image = d[self.image_key]
            geometry = geometry_from_meta_tensor(image)
            hu = channel_view_zyx(image)
            lung = None
            if self.lung_mask_key is not None and d.get(self.lung_mask_key) is not None:
                lung = channel_view_zyx(d[self.lung_mask_key])          # non-zero = lung
            labels = d[self.labels_key]
            label_zyx = channel_view_zyx(labels)
            if not label_zyx.flags.writeable or not isinstance(labels, torch.Tensor):
                raise ValueError(f"{self.labels_key!r} must be a writable (1, X, Y, Z) tensor")
            prob = channel_view_zyx(d[key], -1)
            thickness = self.slice_thickness(d, image)
            d[self.candidates_key] = self.add(list(d.get(self.candidates_key) or []), label_zyx, prob, hu,
                                              geometry, lung, thickness)
        return d

    def slice_thickness(self, data: Mapping, image) -> float | None:
        """The series' slice thickness (mm): ``data[slice_thickness_key]``, else what is recorded beside the image's
        source file (``filename_or_obj``: a data_prep provenance record or a dcm2niix sidecar,
        :func:`lungnod_ext.data.inputs.recorded_slice_thickness`; MONAI Label hands the bare file); None where
        nothing says, or when nothing would use it (``slice_thickness_key`` None or no ``slice_profile_mm``)."""
        if self.slice_thickness_key is None or not self.options.get("slice_profile_mm"):
            return None
        thickness = slice_thickness_or_none(data.get(self.slice_thickness_key))
        source = getattr(image, "meta", {}).get("filename_or_obj")
        if thickness is None and isinstance(source, (str, os.PathLike)) and source:
            from lungnod_ext.data.inputs import recorded_slice_thickness

            thickness = recorded_slice_thickness(source)
        return thickness

    def add(self, candidates: list[dict], label_zyx: np.ndarray, prob_zyx: np.ndarray, hu_zyx: np.ndarray,
            geometry: Geometry, lung_zyx: np.ndarray | None, slice_thickness_mm: float | None = None) -> list[dict]:
        """The candidates after this step (all arrays (z, y, x) views on the CT's grid; ``label_zyx`` written;
        ``slice_thickness_mm``: the series' own, None: its slice spacing)."""
        return add_blob_candidates(candidates, label_zyx, prob_zyx, hu_zyx, geometry, lung_zyx,
                                   slice_thickness_mm=slice_thickness_mm, **self.options)
