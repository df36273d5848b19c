"""Long / short axis of nodules on their axial slice (lungnod_ext.inference.measurements)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from data_prep.coords import Geometry
from lungnod_ext.inference.measurements import AXIS_KEYS, MeasureAxialAxesd, add_axial_axes, axial_axes


def ellipse(shape_yx, centre_yx, semi_mm, spacing_mm, angle_deg=0.0) -> np.ndarray:
    """2-D bool ellipse with semi-axes ``semi_mm`` (along the rotated column, row direction) on a pixel grid."""
    y, x = np.mgrid[0:shape_yx[0], 0:shape_yx[1]].astype(float)
    dy, dx = (y - centre_yx[0]) * spacing_mm, (x - centre_yx[1]) * spacing_mm
    t = np.deg2rad(angle_deg)
    u, v = dx * np.cos(t) + dy * np.sin(t), -dx * np.sin(t) + dy * np.cos(t)
    return (u / semi_mm[0]) ** 2 + (v / semi_mm[1]) ** 2 <= 1.0


@pytest.mark.parametrize("angle", [0.0, 30.0, 45.0, 90.0])
def test_ellipse_axes_are_its_diameters_plus_one_pixel_whatever_its_orientation(angle):
    spacing = 0.5
    region = ellipse((100, 100), (50, 50), (10.0, 5.0), spacing, angle)[None]
    axes = axial_axes(region, (2.5, spacing, spacing))
    # the voxels' full extent: 20 x 10 mm plus the pixels' corners, up to about a pixel on each side
    assert 20.0 <= axes["long_axis_mm"] <= 20.0 + 2 * spacing
    assert 10.0 <= axes["short_axis_mm"] <= 10.0 + 2 * spacing
    (r0, c0), (r1, c1) = axes["long_axis_yx"]
    measured = np.degrees(np.arctan2(r1 - r0, c1 - c0)) % 180.0
    assert min(abs(measured - angle % 180.0), 180.0 - abs(measured - angle % 180.0)) < 6.0


def test_anisotropic_pixels_are_measured_in_mm():
    region = np.zeros((1, 20, 40), bool)
    region[0, 5:15, 10:30] = True                      # 10 rows x 20 columns
    axes = axial_axes(region, (2.0, 0.8, 0.4))          # rows 0.8 mm, columns 0.4 mm: 8 x 8 mm square
    assert axes["long_axis_mm"] == pytest.approx(8.0 * np.sqrt(2), abs=1e-6)      # its diagonal
    assert axes["short_axis_mm"] == pytest.approx(8.0 * np.sqrt(2), abs=1e-6)     # the other diagonal's width


def test_the_slice_with_the_longest_long_axis_is_measured():
    region = np.zeros((5, 60, 60), bool)
    region[1] = ellipse((60, 60), (30, 30), (6.0, 6.0), 0.5)
    region[2] = ellipse((60, 60), (30, 30), (12.0, 4.0), 0.5)         # longest, though not the largest area
    region[3] = ellipse((60, 60), (30, 30), (9.0, 9.0), 0.5)
    axes = axial_axes(region, (2.5, 0.5, 0.5))
    assert axes["slice"] == 2 and axes["long_axis_mm"] == pytest.approx(24.5, abs=0.3)


def test_degenerate_regions():
    assert axial_axes(np.zeros((3, 4, 4), bool), (1, 1, 1)) is None
    one = axial_axes(np.ones((1, 1, 1), bool), (1.0, 0.7, 0.7))
    assert one["long_axis_mm"] == pytest.approx(0.7 * np.sqrt(2)) and one["short_axis_mm"] == pytest.approx(0.7 * np.sqrt(2))
    line = axial_axes(np.ones((1, 1, 5), bool), (1.0, 1.0, 1.0))      # a 5 x 1 mm bar: its diagonal, and
    assert line["long_axis_mm"] == pytest.approx(np.hypot(5, 1))        # its width across the diagonal
    assert line["short_axis_mm"] == pytest.approx(2 * 5 * 1 / np.hypot(5, 1))


def _label_map():
    geometry = Geometry(origin=(-100.0, -50.0, -300.0), spacing=(0.5, 0.5, 2.5), shape=(80, 60, 6))
    labels = np.zeros(geometry.shape_zyx, np.int32)
    labels[2] = np.where(ellipse((60, 80), (30, 40), (10.0, 5.0), 0.5), 1, 0)   # 20 x 10 mm along i, slice 2
    labels[3:5, 5:9, 5:9] = 2                                                 # a 2 x 2 mm square on two slices
    cands = [{"id": 1, "bbox_voxel": [19, 19, 2, 61, 41, 3], "diameter_mm": 9.9},
             {"id": 2, "bbox_voxel": [5, 5, 3, 9, 9, 5], "diameter_mm": 2.4},
             {"id": 3, "bbox_voxel": [0, 0, 0, 2, 2, 1], "diameter_mm": 1.0}]        # no voxels left: not measured
    return geometry, labels, cands


def test_add_axial_axes_measures_every_candidate_and_places_the_long_axis_in_lps():
    geometry, labels, cands = _label_map()
    out = add_axial_axes(cands, labels, geometry)
    assert [c["id"] for c in out] == [1, 2, 3] and out[0]["diameter_mm"] == 9.9      # order and keys kept
    big = out[0]
    assert set(AXIS_KEYS) <= set(big)
    assert 20.0 <= big["long_axis_mm"] <= 20.8 and 10.0 <= big["short_axis_mm"] <= 10.8
    assert big["mean_axial_diameter_mm"] == round((big["long_axis_mm"] + big["short_axis_mm"]) / 2, 1)
    assert big["axes_slice_k"] == 2
    a, b = np.asarray(big["long_axis_lps_mm"])
    assert a[2] == b[2] == pytest.approx(-300.0 + 2 * 2.5)                          # on slice k = 2
    assert np.linalg.norm(a - b) == pytest.approx(big["long_axis_mm"], abs=0.01)
    assert abs(a[0] - b[0]) > 19.5 and abs(a[1] - b[1]) < 2.0                        # along the i (x) axis
    assert out[1]["long_axis_mm"] == pytest.approx(2.0 * np.sqrt(2), abs=0.01) and out[1]["axes_slice_k"] == 3
    assert "long_axis_mm" not in out[2]


def test_transform_on_metatensors_and_switch():
    geometry, labels, cands = _label_map()
    affine = torch.as_tensor(geometry.affine_ras())
    xyz = torch.from_numpy(np.ascontiguousarray(labels.transpose(2, 1, 0)))[None]
    data = {"candidate_labels": MetaTensor(xyz, affine=affine), "ct_hu": MetaTensor(torch.zeros_like(xyz, dtype=torch.float32), affine=affine),
            "candidates": cands}
    out = MeasureAxialAxesd()(data)
    assert out["candidates"][0]["axes_slice_k"] == 2
    assert out["candidates"] == add_axial_axes(cands, labels, geometry)
    assert "long_axis_mm" not in MeasureAxialAxesd(enabled=False)(data)["candidates"][0]
