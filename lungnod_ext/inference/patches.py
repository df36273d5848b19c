"""Patches for the stage-2 classifier, cut in world space so every patch has the same physical size.

A patch is sampled (trilinear) on a grid centred on an LPS point, with ``spacing_mm`` between samples
along the image's own axes (its direction cosines), whatever the scan's voxel size: 3D patches are
``(D, H, W)`` = (slice, row, column) cubes, 2D patches ``(H, W)`` the axial plane through the centre (or
``len(slab_mm)`` planes as channels, 2.5D; with ``fine_spacing_mm`` the same planes again, sampled that much
finer around the same centre, as more channels: a 3-6 mm nodule spans 3-6 pixels of a 1 mm patch). Values
are HU; outside the scan is air (-1024 HU). The classifier's training set is built from them by
:mod:`lungnod_ext.apps.patch_dataset`.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from data_prep.coords import Geometry
from data_prep.errors import InputNotFoundError

AIR_HU = -1024.0
DEFAULTS = {2: {"patch_size": (64, 64), "spacing_mm": 1.0}, 3: {"patch_size": (32, 32, 32), "spacing_mm": 1.25}}
"""Default patch size (voxels) and sample spacing (mm) per ``spatial_dims``: 64 mm squares, 40 mm cubes."""
DEFAULT_SLAB_MM = (-5.0, -2.5, 0.0, 2.5, 5.0)
"""The classification bundle's default planes (mm along the slice axis) for 2-D patches (``slab_mm``)."""


def patch_offsets_mm(patch_size: Sequence[int], spacing_mm: float, spatial_dims: int) -> np.ndarray:
    """Offsets (i, j, k) in mm from the patch centre for every sample: (*patch_size, 3)."""
    size = [int(s) for s in patch_size]
    if len(size) != spatial_dims:
        raise ValueError(f"patch_size {patch_size} does not have {spatial_dims} dimensions")
    axes = [(np.arange(n) - (n - 1) / 2.0) * float(spacing_mm) for n in size]
    if spatial_dims == 3:
        dk, dj, di = np.meshgrid(*axes, indexing="ij")
    else:
        dj, di = np.meshgrid(*axes, indexing="ij")
        dk = np.zeros_like(di)
    return np.stack([di, dj, dk], axis=-1)


def patch_channels(slab_mm: Sequence[float] | None, fine_spacing_mm: float | None = None) -> int:
    """Input channels of a classifier fed patches cut with ``slab_mm`` (1 plane without a slab), twice as many
    with a second, finer sampling (``fine_spacing_mm``)."""
    planes = 1 if not slab_mm else len(slab_mm)
    return planes * (2 if fine_spacing_mm else 1)


def check_patch_geometry(datalist, spatial_dims: int, slab_mm: Sequence[float] | None,
                         fine_spacing_mm: float | None = None) -> str:
    """Fail in one line (``<datalist>: <problem>``) when a patch dataset was cut with another geometry than the
    classification config trains on: ``spatial_dims``, the planes ``slab_mm`` (mm along the slice axis; None for
    3-D and single-plane patches, as the network's input channels count them) or ``fine_spacing_mm``. A datalist
    that records no geometry passes. Returns the datalist path."""
    path = Path(str(datalist))
    if not path.is_file():
        raise InputNotFoundError(path, "patch datalist not found: build the patches first "
                                       "(lungnod train-models, or lungnod_ext.apps.patch_dataset) or set --dataset_dir")
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputNotFoundError(path, f"not a readable JSON datalist ({exc})") from None
    if not isinstance(recorded, dict) or "spatial_dims" not in recorded:
        return str(path)

    def planes(values) -> list[float] | None:
        return [round(float(v), 6) for v in values] if values else None

    def fine(value) -> float | None:
        return round(float(value), 6) if value else None

    config = {"spatial_dims": int(spatial_dims), "slab_mm": planes(slab_mm),
              "fine_spacing_mm": fine(fine_spacing_mm)}
    data = {"spatial_dims": int(recorded["spatial_dims"]), "slab_mm": planes(recorded.get("slab_mm")),
            "fine_spacing_mm": fine(recorded.get("fine_spacing_mm"))}
    wrong = [f"{k} {data[k]} (the config has {config[k]})" for k in config if data[k] != config[k]]
    if wrong:
        raise InputNotFoundError(path, "patches cut with " + ", ".join(wrong) + ": rebuild the patches or pass the "
                                       "same values to the bundle (e.g. --slab_mm, --fine_spacing_mm)")
    return str(path)


def extract_patches(hu_zyx: np.ndarray, geometry: Geometry, centres_lps, patch_size: Sequence[int] | None = None,
                    spacing_mm: float | None = None, spatial_dims: int = 3,
                    slab_mm: Sequence[float] | None = None, fine_spacing_mm: float | None = None) -> np.ndarray:
    """Patches around LPS centres (mm) of a (z, y, x) HU volume -> float32 (N, C, *patch_size).

    C = 1, or for 2-D patches with ``slab_mm`` (offsets in mm along the image's slice axis, e.g.
    ``[-5, -2.5, 0, 2.5, 5]``) one axial plane per offset, as channels (2.5D: a vessel runs on through the
    planes, a nodule ends). ``fine_spacing_mm`` (2-D only): the planes are cut a second time with that sample
    spacing (e.g. 0.5 mm: a 32 mm field at twice the detail), channels ``C .. 2C - 1``."""
    d = DEFAULTS[spatial_dims]
    patch_size = tuple(patch_size or d["patch_size"])
    spacing_mm = float(spacing_mm or d["spacing_mm"])
    if slab_mm and spatial_dims != 2:
        raise ValueError("slab_mm (planes as channels) is for 2-D patches")
    if fine_spacing_mm and spatial_dims != 2:
        raise ValueError("fine_spacing_mm (a second sampling as channels) is for 2-D patches")
    planes = [float(v) for v in slab_mm] if slab_mm else [0.0]
    spacings = [spacing_mm] + ([float(fine_spacing_mm)] if fine_spacing_mm else [])
    channels = [(dk, sp) for sp in spacings for dk in planes]
    centres = np.asarray(centres_lps, dtype=float).reshape(-1, 3)
    out = np.empty((len(centres), len(channels), *patch_size), dtype=np.float32)
    if not len(centres):
        return out
    # each channel's sample offsets in world mm (LPS), the same for every centre
    offsets = {sp: patch_offsets_mm(patch_size, sp, spatial_dims).reshape(-1, 3) for sp in spacings}
    world = [(offsets[sp] + np.array([0.0, 0.0, dk])) @ geometry.direction_matrix.T for dk, sp in channels]
    # sampled as stored (int16 HU from a NIfTI): map_coordinates interpolates in float64 whatever the input,
    # so a float32 copy of the whole volume (0.5 GB for 500 thin slices) would only cost memory
    vol = np.asarray(hu_zyx)
    for n, c in enumerate(centres):
        for ch, grid in enumerate(world):
            ijk = geometry.world_to_voxel(c[None, :] + grid)
            coords = np.stack([ijk[:, 2], ijk[:, 1], ijk[:, 0]])  # (z, y, x) order of the array
            out[n, ch] = ndi.map_coordinates(vol, coords, output=np.float32, order=1, mode="constant",
                                             cval=AIR_HU, prefilter=False).reshape(patch_size)
    return out


