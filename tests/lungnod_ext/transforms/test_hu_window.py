"""HU windowing: exact values of the linear map, presets, array types and the dictionary twin."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from lungnod_ext.transforms.hu_window import HU_WINDOWS, HUWindow, HUWindowd, Window, resolve_window


def test_presets_hold_the_documented_windows():
    assert (HU_WINDOWS["lung"].level, HU_WINDOWS["lung"].width) == (-600.0, 1500.0)
    assert (HU_WINDOWS["lung"].a_min, HU_WINDOWS["lung"].a_max) == (-1350.0, 150.0)
    assert (HU_WINDOWS["mediastinum"].a_min, HU_WINDOWS["mediastinum"].a_max) == (-160.0, 240.0)
    assert (HU_WINDOWS["bone"].a_min, HU_WINDOWS["bone"].a_max) == (-500.0, 1300.0)
    assert (HU_WINDOWS["lung_wide"].a_min, HU_WINDOWS["lung_wide"].a_max) == (-1000.0, 400.0)
    assert (HU_WINDOWS["lung_wide"].level, HU_WINDOWS["lung_wide"].width) == (-300.0, 1400.0)


def test_level_and_width_map_window_edges_to_0_half_1():
    hu = np.array([[[-1500.0, -1350.0, -975.0, -600.0, -225.0, 150.0, 3000.0]]])  # (C, H, W)
    out = HUWindow(level=-600, width=1500)(hu)
    assert out.dtype == np.float32 and out.shape == hu.shape
    np.testing.assert_allclose(out[0, 0], [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0], atol=1e-6)


def test_no_clip_keeps_the_linear_map_outside_the_window():
    out = HUWindow(preset="mediastinum", clip=False)(np.array([[[-560.0, 40.0, 640.0]]]))
    np.testing.assert_allclose(out[0, 0], [-1.0, 0.5, 2.0], atol=1e-6)


def test_range_form_equals_level_width_form_and_default_is_lung():
    hu = np.linspace(-1200, 600, 37, dtype=np.float32).reshape(1, 37, 1)
    np.testing.assert_array_equal(HUWindow(a_min=-1000, a_max=400)(hu), HUWindow(preset="lung_wide")(hu))
    np.testing.assert_array_equal(HUWindow()(hu), HUWindow(preset="lung")(hu))
    assert Window.from_range(-160, 240) == HU_WINDOWS["mediastinum"]


@pytest.mark.parametrize("kwargs", [dict(preset="lung", level=0, width=10), dict(preset="brain"), dict(level=0),
                                    dict(a_min=5), dict(level=0, width=0), dict(a_min=10, a_max=-10)])
def test_bad_window_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        resolve_window(**kwargs)


def test_int16_tensor_in_float_tensor_out_same_values():
    hu = torch.tensor([[[-1000, -600, 0, 400]]], dtype=torch.int16)
    out = HUWindow(preset="lung_wide")(hu)
    assert isinstance(out, torch.Tensor) and not isinstance(out, MetaTensor) and out.dtype == torch.float32
    torch.testing.assert_close(out[0, 0], torch.tensor([0.0, 400 / 1400, 1000 / 1400, 1.0]))


def test_metatensor_keeps_affine_and_meta():
    affine = torch.diag(torch.tensor([-0.7, -0.7, 2.5, 1.0], dtype=torch.float64))
    img = MetaTensor(torch.full((1, 4, 5, 3), -600.0), affine=affine, meta={"filename_or_obj": "case.nii.gz"})
    out = HUWindow(preset="lung")(img)
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    torch.testing.assert_close(out.affine, affine)
    assert out.meta["filename_or_obj"] == "case.nii.gz"
    assert torch.all(out == 0.5)


def test_dictionary_twin_windows_each_key_and_skips_missing_when_allowed():
    data = {"image": np.full((1, 2, 2, 2), 40.0), "other": np.full((1, 2, 2, 2), 240.0), "label": np.ones((1, 2, 2, 2))}
    out = HUWindowd(keys=["image", "other"], preset="mediastinum")(data)
    assert np.all(out["image"] == 0.5) and np.all(out["other"] == 1.0)
    assert out["label"] is data["label"]
    assert np.all(data["image"] == 40.0)  # input dict untouched
    out = HUWindowd(keys=["image", "missing"], preset="mediastinum", allow_missing_keys=True)(data)
    assert np.all(out["image"] == 0.5) and "missing" not in out
    with pytest.raises(KeyError):
        HUWindowd(keys=["image", "missing"], preset="mediastinum")(data)
