"""Gravity-dependent subpleural density drawn into a real CT: training background that is not a nodule.

A supine patient's lungs are denser along the back: a haze of -800 to -550 HU a few millimetres thick on the
dependent (posterior, LPS +y) pleura, patchy along it. LIDC-IDRI-0006 shows more of it than 0001 and 0002
(median parenchyma 0-5 mm from the posterior pleura -816 HU against -842 / -836; 40-80 mm deep -900 / -878 /
-879), and the models trained on 0001 + 0002 took three such patches of 8-10 mm for nodules on it (session 35,
p 1.00, in every inserted copy). :func:`add_dependent_density` draws such density into a training copy as
background (label 0): the segmenter learns it is no nodule and, where it still fires, the classifier's
candidates make it a hard negative.

Volumes are (z, y, x) HU with a :class:`data_prep.coords.Geometry` (LPS mm); only lung voxels darker than the
drawn density change (vessels and nodules brighter than it keep their values).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from data_prep.coords import Geometry

BAND_MM = (3.0, 12.0)          # depth of the density from the pleura (it fades to 0 there), per copy
TARGET_HU = (-750.0, -550.0)   # what lung reaches at the pleura where a patch is densest, per copy
PATCH_MM = (6.0, 16.0)         # smoothing scale of the patches along the pleura (Gaussian sigma), per copy
COVER = (0.3, 0.7)             # share of the posterior subpleural band that gets density, per copy
AVOID_MM = 4.0                 # no density within this distance of ``avoid_zyx`` (nodules), fading in from 1 mm
_COARSE = 4                    # the patch field is drawn on a grid this many times coarser, then interpolated


def posterior_axis(geometry: Geometry) -> tuple[int, int] | None:
    """The (z, y, x) array axis closest to LPS +y (posterior) and its sign (+1: index grows posteriorly), or None
    when that axis is the slice axis (not an axial series: no in-plane front-to-back direction)."""
    d = geometry.direction_matrix                  # columns: LPS directions of the i, j, k axes
    comp = np.array([d[1, 2], d[1, 1], d[1, 0]])  # LPS y component of the z, y, x array axes
    axis = int(np.argmax(np.abs(comp)))
    if axis == 0:
        return None
    return axis, (1 if comp[axis] > 0 else -1)


def _posterior_position(lung: np.ndarray, axis: int, sign: int) -> np.ndarray:
    """float32 (z, y, x): each voxel's place between its slice's most anterior (0) and most posterior (1) lung
    voxel along ``axis`` (meaningless in a slice without lung, where no voxel gets density anyway)."""
    n = lung.shape[axis]
    other = 2 if axis == 1 else 1
    present = lung.any(axis=other)                 # (z, n): lung somewhere at this front-to-back index
    idx = np.arange(n, dtype=np.float32)
    lo = np.where(present.any(axis=1), np.argmax(present, axis=1), 0).astype(np.float32)
    hi = np.where(present.any(axis=1), n - 1 - np.argmax(present[:, ::-1], axis=1), 0).astype(np.float32)
    rel = (idx[None, :] - lo[:, None]) / np.maximum(hi - lo, 1.0)[:, None]
    rel = np.clip(rel if sign > 0 else 1.0 - rel, 0.0, 1.0)
    return np.expand_dims(rel, other).astype(np.float32)   # broadcasts over the other in-plane axis


def _patch_field(shape, spacing_zyx, sigma_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth Gaussian noise (z, y, x) of unit spread at ``sigma_mm``, drawn coarse and interpolated."""
    coarse = tuple(max(2, -(-s // _COARSE)) for s in shape)
    sigma = [sigma_mm / (sp * _COARSE) for sp in spacing_zyx]
    n = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma=sigma, mode="wrap")
    n /= max(float(n.std()), 1e-6)
    full = ndimage.zoom(n, [s / c for s, c in zip(shape, coarse)], order=1, grid_mode=True, mode="grid-wrap")
    return full[tuple(slice(0, s) for s in shape)]


def add_dependent_density(hu_zyx: np.ndarray, lung_zyx: np.ndarray, geometry: Geometry, rng: np.random.Generator,
                          avoid_zyx: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Posterior subpleural ground-glass density in the lungs of a (z, y, x) HU volume -> (float32 HU, what was
    drawn). ``hu_zyx`` is not modified.

    Per copy: a band depth (``BAND_MM``), the densest HU (``TARGET_HU``), a patch scale (``PATCH_MM``) and a cover
    (``COVER``). A lung voxel's weight is its posterior position (rising from the lung's middle to 1 at 85 % of the
    way back, per slice), times its closeness to the pleura (1 on it, 0 at the band depth), times the patch field
    (the ``cover`` share of the posterior band above 0); the voxel moves that share of the way to the densest HU,
    only if darker. ``avoid_zyx``: bool voxels (nodules) kept free of it within ``AVOID_MM``. A volume that is not
    axial, or has no lung, comes back unchanged (``{"skipped": reason}``)."""
    hu = np.asarray(hu_zyx, dtype=np.float32)
    lung = np.asarray(lung_zyx, dtype=bool)
    if lung.shape != hu.shape:
        raise ValueError(f"lung mask shape {lung.shape} does not match the volume {hu.shape}")
    found = posterior_axis(geometry)
    if found is None:
        return hu.copy(), {"skipped": "not an axial series"}
    if not lung.any():
        return hu.copy(), {"skipped": "no lung"}
    band = float(rng.uniform(*BAND_MM))
    target = float(rng.uniform(*TARGET_HU))
    patch = float(rng.uniform(*PATCH_MM))
    cover = float(rng.uniform(*COVER))
    sx, sy, sz = (float(v) for v in geometry.spacing)
    spacing = (sz, sy, sx)
    depth = ndimage.distance_transform_edt(lung, sampling=spacing).astype(np.float32)   # mm to the pleura
    closeness = np.clip(1.0 - depth / band, 0.0, 1.0) * lung
    weight = closeness * np.clip((_posterior_position(lung, *found) - 0.5) / 0.35, 0.0, 1.0)
    field = _patch_field(hu.shape, spacing, patch, rng)
    in_band = weight > 0
    if not in_band.any():
        return hu.copy(), {"skipped": "no posterior lung"}
    cut = float(np.quantile(field[in_band], 1.0 - cover))
    weight *= np.clip((field - cut) / 0.75, 0.0, 1.0)
    if avoid_zyx is not None and np.any(avoid_zyx):
        away = ndimage.distance_transform_edt(~np.asarray(avoid_zyx, dtype=bool), sampling=spacing)
        weight *= np.clip((away - 1.0) / (AVOID_MM - 1.0), 0.0, 1.0).astype(np.float32)
    out = np.where(hu < target, hu + weight * (target - hu), hu).astype(np.float32)
    return out, {"dependent_density_hu": round(target, 1), "dependent_band_mm": round(band, 2),
                 "dependent_patch_mm": round(patch, 2), "dependent_cover": round(cover, 3),
                 "dependent_voxels": int((weight >= 0.25).sum())}
