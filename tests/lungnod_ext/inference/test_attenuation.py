"""Nodule attenuation from HU (lungnod_ext.inference.attenuation): solid, part-solid, ground-glass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from lungnod_ext.inference.attenuation import (ATTENUATION_KEYS, MeasureAttenuationd, add_attenuation, attenuation_class,
                                               nodule_attenuation, reader_attenuation)

SPACING = (1.0, 0.5, 0.5)          # (z, y, x) mm
LUNG_HU = -850.0


def sphere(shape, centre, radius_mm, spacing=SPACING) -> np.ndarray:
    z, y, x = np.indices(shape).astype(float)
    c = np.asarray(centre, float)
    sp = np.asarray(spacing, float)
    return ((z - c[0]) * sp[0]) ** 2 + ((y - c[1]) * sp[1]) ** 2 + ((x - c[2]) * sp[2]) ** 2 <= radius_mm ** 2


def nodule(radius_mm, core_mm=0.0, halo_hu=-550.0, core_hu=20.0, noise_hu=0.0, seed=0):
    """A (z, y, x) lung volume with a sphere of ``halo_hu`` (ground glass) around a solid core of ``core_mm``
    radius at ``core_hu``; a solid nodule is halo_hu = core_hu. -> (hu, whole region)."""
    shape = (30, 60, 60)
    centre = (15, 30, 30)
    hu = np.full(shape, LUNG_HU, np.float32)
    region = sphere(shape, centre, radius_mm)
    hu[region] = halo_hu
    if core_mm:
        hu[sphere(shape, centre, core_mm)] = core_hu
    if noise_hu:
        hu += np.random.default_rng(seed).normal(0.0, noise_hu, shape).astype(np.float32)
    return hu, region


def test_the_classes_follow_the_solid_fraction():
    assert attenuation_class(0.0) == "ground-glass"
    assert attenuation_class(0.049) == "ground-glass"
    assert attenuation_class(0.05) == "part-solid"
    assert attenuation_class(0.249) == "part-solid"
    assert attenuation_class(0.25) == "solid"
    assert attenuation_class(1.0) == "solid"
    assert attenuation_class(0.1, ground_glass_below=0.2) == "ground-glass"


@pytest.mark.parametrize("texture,expected", [(1, "ground-glass"), (2, "ground-glass"), (2.5, "part-solid"),
                                               (3, "part-solid"), (3.5, "solid"), (4, "solid"), (5, "solid"),
                                               (None, None), (float("nan"), None)])
def test_lidc_readers_texture_ratings_map_to_the_three_classes(texture, expected):
    assert reader_attenuation(texture) == expected


def test_a_solid_nodule_is_solid_with_its_solid_component_its_own_size():
    hu, region = nodule(5.0, halo_hu=20.0)
    got = nodule_attenuation(hu, region, SPACING)
    assert got["attenuation"] == "solid"
    # the smoothing dims the outermost pixels against the lung: a 10 mm sphere's solid part is 9-11 mm
    assert 0.9 <= got["solid_fraction"] < 1.0
    assert 9.0 <= got["solid_short_axis_mm"] <= got["solid_long_axis_mm"] <= 11.0


def test_a_ground_glass_nodule_has_no_solid_component_even_with_noise():
    hu, region = nodule(6.0, halo_hu=-450.0, noise_hu=100.0)
    got = nodule_attenuation(hu, region, SPACING)
    assert got["attenuation"] == "ground-glass"
    assert got["solid_fraction"] < 0.01
    # without the 0.5 mm smoothing, single noisy pixels above -300 HU (1.5 sd: about 7 %) would make it part-solid
    unsmoothed = nodule_attenuation(hu, region, SPACING, smooth_mm=0.0)
    assert unsmoothed["attenuation"] == "part-solid" and unsmoothed["solid_fraction"] == pytest.approx(0.067, abs=0.015)


def test_a_part_solid_nodule_reports_its_solid_core():
    hu, region = nodule(8.0, core_mm=4.0)                 # core 8 mm across in a 16 mm nodule
    got = nodule_attenuation(hu, region, SPACING)
    assert got["attenuation"] == "part-solid"
    assert got["solid_fraction"] == pytest.approx(0.125, abs=0.02)     # (4 / 8)^3 of the volume
    assert 8.0 <= got["solid_long_axis_mm"] <= 9.0
    assert got["solid_mean_axial_diameter_mm"] == pytest.approx((got["solid_long_axis_mm"]
                                                                 + got["solid_short_axis_mm"]) / 2, abs=0.06)


def test_small_outlines_count_dimmer_voxels_as_solid():
    """Under 8 mm long axis a voxel is solid from -400 HU (partial volume dims small solid nodules); a 5 mm
    nodule at -350 HU reads solid, the same density over 12 mm reads ground-glass."""
    small_hu, small = nodule(2.5, halo_hu=-350.0)
    got = nodule_attenuation(small_hu, small, SPACING)
    assert got["attenuation"] == "solid" and got["solid_fraction"] >= 0.4      # the edge pixels smooth below
    assert nodule_attenuation(small_hu, small, SPACING, small_long_axis_mm=0.0)["attenuation"] == "ground-glass"
    big_hu, big = nodule(6.0, halo_hu=-350.0)
    assert nodule_attenuation(big_hu, big, SPACING)["attenuation"] == "ground-glass"


def test_the_solid_component_is_the_largest_solid_piece():
    hu, region = nodule(8.0)
    core = sphere(hu.shape, (15, 30, 30), 3.0)
    speck = sphere(hu.shape, (15, 30, 42), 1.0)           # a vessel's cross-section inside the ground glass
    hu[core | speck] = 20.0
    got = nodule_attenuation(hu, region, SPACING)
    assert 6.0 <= got["solid_long_axis_mm"] <= 7.0         # the core only, not core to speck (about 13 mm)


def test_ground_glass_has_no_solid_axes_and_empty_regions_none():
    hu, region = nodule(6.0, halo_hu=-600.0)
    got = nodule_attenuation(hu, region, SPACING)
    assert got == {"attenuation": "ground-glass", "solid_fraction": 0.0, "solid_long_axis_mm": None,
                   "solid_short_axis_mm": None, "solid_mean_axial_diameter_mm": None}
    assert nodule_attenuation(hu, np.zeros(hu.shape, bool), SPACING) is None


def test_every_candidate_of_a_label_map_is_measured_in_its_box():
    shape = (30, 60, 120)
    hu = np.full(shape, LUNG_HU, np.float32)
    labels = np.zeros(shape, np.int32)
    solid = sphere(shape, (15, 30, 30), 5.0)
    ggo = sphere(shape, (15, 30, 90), 5.0)
    hu[solid], hu[ggo] = 10.0, -600.0
    labels[solid], labels[ggo] = 1, 2

    def box(mask):
        k, j, i = np.nonzero(mask)
        return [int(i.min()), int(j.min()), int(k.min()), int(i.max()) + 1, int(j.max()) + 1, int(k.max()) + 1]

    cands = [{"id": 1, "bbox_voxel": box(solid), "probability": 0.9}, {"id": 2, "bbox_voxel": box(ggo)}]
    out = add_attenuation(cands, labels, hu, SPACING)
    assert [c["attenuation"] for c in out] == ["solid", "ground-glass"]
    assert out[0]["probability"] == 0.9 and "attenuation" not in cands[0]        # copies, inputs untouched
    assert all(set(ATTENUATION_KEYS) <= set(c) for c in out)


def test_the_bundle_step_reads_the_grid_of_the_image():
    # (X, Y, Z) channel-first as the bundle holds them; 0.5 x 0.5 x 1.0 mm voxels
    hu_zyx, region = nodule(8.0, core_mm=4.0)
    labels_zyx = region.astype(np.int32)
    affine = torch.diag(torch.tensor([-0.5, -0.5, 1.0, 1.0], dtype=torch.float64))
    image = MetaTensor(torch.from_numpy(hu_zyx.transpose(2, 1, 0)[None].copy()), affine=affine)
    labels = MetaTensor(torch.from_numpy(labels_zyx.transpose(2, 1, 0)[None].copy()), affine=affine)
    k, j, i = np.nonzero(region)
    cand = {"id": 1, "bbox_voxel": [int(i.min()), int(j.min()), int(k.min()), int(i.max()) + 1, int(j.max()) + 1,
                                    int(k.max()) + 1]}
    out = MeasureAttenuationd()({"candidate_labels": labels, "ct_hu": image, "candidates": [cand]})
    direct = nodule_attenuation(hu_zyx, region, SPACING)
    assert out["candidates"][0]["attenuation"] == "part-solid"
    assert {k: out["candidates"][0][k] for k in ATTENUATION_KEYS} == direct
    off = MeasureAttenuationd(enabled=False)({"candidate_labels": labels, "ct_hu": image, "candidates": [cand]})
    assert "attenuation" not in off["candidates"][0]
    assert MeasureAttenuationd()({"candidate_labels": labels, "ct_hu": image, "candidates": []})["candidates"] == []
