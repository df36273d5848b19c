"""Patches cut in world space: a known sphere lands in the patch centre whatever the scan's voxel size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_prep.errors import InputNotFoundError
from lungnod_ext.inference.patches import check_patch_geometry, extract_patches, patch_channels


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.7, 2.5)])
def test_sphere_at_the_patch_centre_with_fixed_physical_size(spacing, sphere_volume):
    hu, g = sphere_volume(spacing)
    p3 = extract_patches(hu, g, [(10.0, -20.0, 30.0)], (33, 33, 33), 1.0, 3)
    assert p3.shape == (1, 1, 33, 33, 33)
    inside = p3[0, 0] > -430
    zc, yc, xc = np.argwhere(inside).mean(axis=0)
    assert abs(zc - 16) < 1.0 and abs(yc - 16) < 1.0 and abs(xc - 16) < 1.0
    # a 6 mm radius sphere sampled at 1 mm: about 4/3 pi 6^3 = 905 samples whatever the voxel size
    assert 700 < inside.sum() < 1100
    p2 = extract_patches(hu, g, [(10.0, -20.0, 30.0)], (33, 33), 1.0, 2)
    assert p2.shape == (1, 1, 33, 33) and 90 < (p2[0, 0] > -430).sum() < 130  # pi 6^2 = 113
    off = extract_patches(hu, g, [(10.0 + 12.0, -20.0, 30.0)], (33, 33), 1.0, 2)[0, 0]
    assert (off > -430)[:, :6].sum() > 20 and not (off > -430)[:, 20:].any()  # the sphere 12 mm to -i of the centre


def test_outside_the_scan_is_air(sphere_volume):
    hu, g = sphere_volume((1.0, 1.0, 1.0))
    p = extract_patches(hu, g, [(-50.0, -80.0, -30.0)], (16, 16, 16), 1.0, 3)[0, 0]
    assert p[:7, :7, :7].max() == -1024.0


def test_slab_patches_are_planes_along_the_slice_axis(sphere_volume):
    """2.5D patches: one axial plane per offset, as channels; the centre plane is the plain 2-D patch."""
    hu, g = sphere_volume((0.7, 0.7, 2.5))
    centre = [[10.0, -20.0, 30.0]]
    plain = extract_patches(hu, g, centre, spatial_dims=2)
    slab = extract_patches(hu, g, centre, spatial_dims=2, slab_mm=[-5.0, 0.0, 5.0])
    assert slab.shape == (1, 3, 64, 64) and patch_channels([-5.0, 0.0, 5.0]) == 3 and patch_channels(None) == 1
    np.testing.assert_allclose(slab[:, 1], plain[:, 0])
    # the sphere (12 mm) is smaller 5 mm off its centre: fewer bright samples in the outer planes
    bright = (slab[0] > -400).sum(axis=(1, 2))
    assert bright[1] > bright[0] > 0 and bright[1] > bright[2] > 0
    with pytest.raises(ValueError, match="2-D patches"):
        extract_patches(hu, g, centre, spatial_dims=3, slab_mm=[0.0])


def test_fine_spacing_adds_the_planes_again_at_twice_the_detail(sphere_volume):
    """fine_spacing_mm: channels C..2C-1 are the same planes sampled finer around the same centre, so the
    6 mm radius sphere covers 4x the pixels (pi 12^2 at 0.5 mm) and the first C channels are unchanged."""
    hu, g = sphere_volume((0.7, 0.7, 2.5))
    centre = [[10.0, -20.0, 30.0]]
    planes = [-2.5, 0.0, 2.5]
    slab = extract_patches(hu, g, centre, spatial_dims=2, slab_mm=planes)
    both = extract_patches(hu, g, centre, spatial_dims=2, slab_mm=planes, fine_spacing_mm=0.5)
    assert both.shape == (1, 6, 64, 64) and patch_channels(planes, 0.5) == 6 and patch_channels(None, 0.5) == 2
    np.testing.assert_array_equal(both[:, :3], slab)
    coarse, fine = (both[0, 1] > -430).sum(), (both[0, 4] > -430).sum()
    assert 90 < coarse < 130 and 400 < fine < 510 and 3.6 < fine / coarse < 4.4
    inside = np.argwhere(both[0, 4] > -430).mean(axis=0)
    assert np.abs(inside - 31.5).max() < 1.0
    with pytest.raises(ValueError, match="2-D"):
        extract_patches(hu, g, centre, (16, 16, 16), 1.0, 3, fine_spacing_mm=0.5)


def test_patch_geometry_check_names_the_datalist_and_what_differs(tmp_path):
    """A classifier config trained on patches cut another way fails in one line naming the datalist and each
    differing id (the network's channel count would not match); the same geometry, or a datalist that records
    none, passes and gives the path back."""
    planes = [-5.0, -2.5, 0.0, 2.5, 5.0]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"spatial_dims": 2, "slab_mm": planes, "fine_spacing_mm": 0.5, "training": []}))
    assert check_patch_geometry(datalist, 2, [int(v) if v.is_integer() else v for v in planes], 0.5) == str(datalist)
    with pytest.raises(InputNotFoundError) as exc:
        check_patch_geometry(datalist, 2, [-2.5, 0.0, 2.5], None)
    message = str(exc.value)
    assert message.startswith(f"{datalist}: patches cut with slab_mm [-5.0, -2.5, 0.0, 2.5, 5.0] (the config has "
                              "[-2.5, 0.0, 2.5]), fine_spacing_mm 0.5 (the config has None)")
    assert "\n" not in message and "spatial_dims" not in message
    datalist.write_text(json.dumps({"spatial_dims": 3, "slab_mm": None, "training": []}))
    with pytest.raises(InputNotFoundError, match=r"spatial_dims 3 \(the config has 2\), slab_mm None"):
        check_patch_geometry(datalist, 2, planes)
    assert check_patch_geometry(datalist, 3, None) == str(datalist)
    datalist.write_text(json.dumps({"training": []}))                      # no geometry recorded
    assert check_patch_geometry(datalist, 2, planes) == str(datalist)
    with pytest.raises(InputNotFoundError, match="patch datalist not found"):
        check_patch_geometry(tmp_path / "none.json", 2, planes)
    datalist.write_text("{not json")
    with pytest.raises(InputNotFoundError, match="not a readable JSON datalist"):
        check_patch_geometry(datalist, 2, planes)
