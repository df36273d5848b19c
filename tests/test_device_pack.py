"""tests/benchmarks/device_pack.py: the lossless packing that carries converted LIDC volumes to a GPU machine
restores every voxel and the NIfTI header (affine, qform/sform codes, dtype) exactly, and refuses non-int16."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

spec = importlib.util.spec_from_file_location(
    "device_pack", Path(__file__).parent / "benchmarks" / "device_pack.py")
device_pack = importlib.util.module_from_spec(spec)
spec.loader.exec_module(device_pack)


def test_pack_unpack_restores_volume_and_header(tmp_path):
    rng = np.random.default_rng(3)
    hu = rng.normal(-700, 300, (64, 48, 9)).clip(-1024, 3071).astype(np.int16)
    hu[:5] = -2048                      # outside the reconstruction circle
    hu[10, 10, 4], hu[11, 10, 4] = 3071, -1024   # the sharpest edge int16 HU can hold
    affine = np.array([[-0.7, 0, 0, 150.2], [0, -0.7, 0, 170.4], [0, 0, 1.25, -310.0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(hu, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    src = tmp_path / "LIDC-IDRI-9999_abc.nii.gz"
    nib.save(img, src)
    packed = tmp_path / "LIDC-IDRI-9999_abc.img.xz"
    device_pack.pack(src, packed)
    assert packed.stat().st_size < hu.nbytes
    nib.save(device_pack._unpack_image(packed), tmp_path / "back.nii.gz")   # as `unpack` writes it
    back = nib.load(tmp_path / "back.nii.gz")
    assert np.array_equal(np.asarray(back.dataobj), hu) and back.get_data_dtype() == np.int16
    assert np.allclose(back.affine, affine) and back.header["qform_code"] == 1 and back.header["sform_code"] == 1


def test_pack_refuses_float_volumes(tmp_path):
    src = tmp_path / "f.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), src)
    with pytest.raises(ValueError, match="not int16"):
        device_pack.pack(src, tmp_path / "f.img.xz")
