"""MONAI MetaTensor <-> lungnod geometry: the affine (RAS, or LPS when ``meta["space"] == "LPS"``), the
:class:`data_prep.coords.Geometry` of a channel-first ``(C, X, Y, Z)`` image, its channels as ``(z, y, x)``
numpy arrays, and the case id (file name) it was loaded from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.data.meta_tensor import MetaTensor

from data_prep.coords import LPS_TO_RAS, Geometry


def affine_ras(img: MetaTensor) -> np.ndarray:
    """4x4 float64 RAS affine of a MetaTensor: ``meta["affine"]``, converted from LPS when
    ``meta["space"] == "LPS"`` (e.g. ITKReader with ``affine_lps_to_ras=False``)."""
    affine = np.asarray(img.affine.detach().cpu().numpy() if torch.is_tensor(img.affine) else img.affine, np.float64)
    if str(img.meta.get("space", "RAS")).upper() == "LPS":
        affine = affine.copy()
        affine[:3, :] = LPS_TO_RAS @ affine[:3, :]
    return affine


def geometry_from_meta_tensor(img: MetaTensor) -> Geometry:
    """LPS :class:`Geometry` of a channel-first MetaTensor ``(C, X, Y, Z)`` as MONAI's ``LoadImaged`` +
    ``EnsureChannelFirstd`` give it: spatial index (i, j, k) = NIfTI voxel order, ``meta["affine"]`` in RAS
    (or LPS when ``meta["space"] == "LPS"``, e.g. ITKReader with ``affine_lps_to_ras=False``)."""
    if not isinstance(img, MetaTensor):
        raise TypeError(f"expected a MetaTensor with an affine, got {type(img).__name__}")
    if img.ndim != 4:
        raise ValueError(f"expected a channel-first (C, X, Y, Z) image, got shape {tuple(img.shape)}; "
                         "decollate batches before post-processing")
    return Geometry.from_affine_ras(affine_ras(img), tuple(int(s) for s in img.shape[1:]))


def channel_view_zyx(img, channel: int = 0) -> np.ndarray:
    """Channel ``channel`` of a (C, X, Y, Z) tensor/array as a (z, y, x) numpy view (no copy for CPU data)."""
    arr = img.detach().cpu().numpy() if torch.is_tensor(img) else np.asarray(img)
    if arr.ndim != 4:
        raise ValueError(f"expected a channel-first (C, X, Y, Z) array, got shape {arr.shape}")
    return arr[channel].transpose(2, 1, 0)


def channel_zyx(img, channel: int = 0) -> np.ndarray:
    """Channel ``channel`` of a (C, X, Y, Z) tensor/array -> C-contiguous (z, y, x) numpy."""
    return np.ascontiguousarray(channel_view_zyx(img, channel))


def case_id_from_meta(img) -> str:
    """File name of the image a MetaTensor was loaded from, without .nii/.nii.gz ("case" if unknown)."""
    meta = getattr(img, "meta", {}) or {}
    name = Path(str(meta.get("filename_or_obj", "") or "case")).name
    for suffix in (".nii.gz", ".nii", ".mhd", ".nrrd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


