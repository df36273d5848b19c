"""The Hounsfield check of inference inputs: real CT passes, normalised or air-less images stop with one line."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data_prep.errors import InputNotFoundError
from lungnod_ext.data.input_checks import check_ct_volume, check_hounsfield

EXAMPLE = Path(__file__).resolve().parents[3] / "lungnod_ext" / "example_data" / "LIDC-IDRI-0001_slab.nii.gz"


def _nifti(path: Path, array) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(array), np.diag([0.8, 0.8, 2.5, 1.0])), str(path))
    return path


def test_real_ct_passes_and_its_normalised_copy_does_not(tmp_path):
    check_ct_volume(EXAMPLE)                                   # the shipped real example (int16 HU)
    hu = np.asarray(nib.load(str(EXAMPLE)).dataobj).astype(np.float32)
    normalised = _nifti(tmp_path / "norm.nii.gz", np.clip((hu + 1024) / 4095, 0, 1))
    with pytest.raises(InputNotFoundError) as exc:
        check_ct_volume(normalised)
    assert str(exc.value) == (f"{normalised}: values do not look like CT Hounsfield units (float values in [0, 1], an "
                              "intensity-normalised image); expected CT Hounsfield units (air near -1000, bone above "
                              "100); if they are HU, pass --assume-hu (bundle config: assume_hu=true)")
    check_ct_volume(normalised, assume_hu=True)                # the user knows better


@pytest.mark.parametrize("values, is_float, found", [
    (np.linspace(-100, 90, 1000), False, "the brightest value is 90"),
    (np.linspace(-850, 400, 1000), False, "the darkest 0.5 % of the values are above -843.8, no air"),
    (np.linspace(0.0, 1.0, 1000), True, "float values in [0, 1], an intensity-normalised image"),
])
def test_what_was_found_is_named(values, is_float, found):
    with pytest.raises(InputNotFoundError, match="does not|do not") as exc:
        check_hounsfield("x.nii.gz", values.astype(np.float32), is_float)
    assert f"({found});" in str(exc.value)


def test_ct_like_values_pass():
    ct = np.r_[np.full(10, -1024.0), np.linspace(-900, 1500, 990)].astype(np.float32)   # air, lung, tissue, bone
    check_hounsfield("x.nii.gz", ct, is_float=True)
