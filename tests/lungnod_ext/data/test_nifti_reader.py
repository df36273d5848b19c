"""FastNiftiReader gives LoadImaged exactly what MONAI's NibabelReader gives (array and metadata) for the
pipeline's .nii.gz CT volumes, and leaves other files to MONAI's readers."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from monai.transforms import LoadImaged

from data_prep.coords import Geometry
from data_prep.nifti_io import write_nifti
from lungnod_ext.data.nifti_reader import FastNiftiReader


def _both(path):
    ours = LoadImaged("image", image_only=True, reader=FastNiftiReader())({"image": str(path)})["image"]
    theirs = LoadImaged("image", image_only=True)({"image": str(path)})["image"]
    return ours, theirs


def _same(ours, theirs):
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == torch.float32
    assert torch.equal(ours.as_tensor(), theirs.as_tensor())
    assert ours.is_contiguous()
    assert sorted(ours.meta) == sorted(theirs.meta)
    for key in theirs.meta:
        assert str(ours.meta[key]) == str(theirs.meta[key]), key


def test_ct_volume_same_array_and_metadata(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 1500, (23, 40, 37), dtype=np.int16)             # (z, y, x), int16 HU
    geometry = Geometry(origin=(-180.0, -160.5, -310.0), spacing=(0.7, 0.7, 1.25), shape=(37, 40, 23))
    path = write_nifti(tmp_path / "ct.nii.gz", hu, geometry)
    ours, theirs = _both(path)
    _same(ours, theirs)
    assert tuple(ours.shape) == (37, 40, 23)                                # MONAI's (X, Y, Z)
    assert float(ours[5, 7, 3]) == float(hu[3, 7, 5])


def test_scaled_uncompressed_and_4d_files_read_the_same(tmp_path):
    rng = np.random.default_rng(1)
    scaled = nib.Nifti1Image(rng.integers(0, 3000, (30, 31, 12)).astype(np.int16), np.diag([-0.8, -0.8, 2.5, 1.0]))
    scaled.header.set_slope_inter(1.0, -1024.0)                            # HU = stored - 1024
    nib.save(scaled, tmp_path / "scaled.nii.gz")
    nib.save(nib.Nifti1Image(rng.normal(size=(16, 17, 9)).astype(np.float32), np.eye(4)), tmp_path / "plain.nii")
    nib.save(nib.Nifti1Image(rng.normal(size=(16, 17, 9, 2)).astype(np.float32), np.eye(4)), tmp_path / "4d.nii.gz")
    for name in ("scaled.nii.gz", "plain.nii", "4d.nii.gz"):
        _same(*_both(tmp_path / name))
    ours, _ = _both(tmp_path / "scaled.nii.gz")
    assert float(ours.min()) >= -1024.0 and float(ours.max()) < 3000.0 - 1024.0


def test_metaimage_still_loads_through_itk(tmp_path):
    img = sitk.GetImageFromArray(np.arange(9 * 10 * 11, dtype=np.int16).reshape(9, 10, 11))
    img.SetSpacing((0.7, 0.7, 2.0))
    sitk.WriteImage(img, str(tmp_path / "ct.mha"))
    ours = LoadImaged("image", image_only=True, reader=FastNiftiReader())({"image": str(tmp_path / "ct.mha")})["image"]
    assert tuple(ours.shape) == (11, 10, 9)
    assert float(ours[2, 1, 0]) == float(0 * 110 + 1 * 11 + 2)
