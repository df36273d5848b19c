"""Patches cut in world space: a known sphere lands in the patch centre whatever the scan's voxel size;
hard negatives come from the segmenter's false-positive candidates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_prep.nifti_io import write_nifti
from data_prep.coords import Geometry
from lungnod_ext.apps.patch_dataset import build_patch_dataset
from lungnod_ext.data.samplers import balance_weights, balanced_sampler
from lungnod_ext.inference.patches import extract_patches, patch_channels


def _sphere_volume(spacing, centre_lps=(10.0, -20.0, 30.0), radius=6.0):
    shape = tuple(int(round(120 / s)) for s in spacing)
    g = Geometry(origin=(-50.0, -80.0, -30.0), spacing=spacing, shape=shape)
    zyx = np.indices(g.shape_zyx).reshape(3, -1).T
    world = g.voxel_to_world(zyx[:, ::-1].astype(float))
    inside = np.linalg.norm(world - np.asarray(centre_lps), axis=1) <= radius
    hu = np.where(inside, 40.0, -900.0).reshape(g.shape_zyx).astype(np.float32)
    return hu, g


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.7, 2.5)])
def test_sphere_at_the_patch_centre_with_fixed_physical_size(spacing):
    hu, g = _sphere_volume(spacing)
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


def test_outside_the_scan_is_air():
    hu, g = _sphere_volume((1.0, 1.0, 1.0))
    p = extract_patches(hu, g, [(-50.0, -80.0, -30.0)], (16, 16, 16), 1.0, 3)[0, 0]
    assert p[:7, :7, :7].max() == -1024.0


def test_balanced_sampler_draws_half_positives():
    data = [{"label": [1]}] * 10 + [{"label": [0]}] * 90
    w = balance_weights(data, 0.5)
    assert sum(w[:10]) == pytest.approx(0.5) and sum(w[10:]) == pytest.approx(0.5)
    draws = [data[i]["label"][0] for i in balanced_sampler(data, 0.5, num_samples=4000, seed=1)]
    assert 0.45 < np.mean(draws) < 0.55


def _converted_case(tmp_path, candidates: list[dict], small_marks: str | None = None):
    """A one-case convert folder (a 12 mm sphere nodule) and a candidates folder -> (converted, candidates dir)."""
    hu, g = _sphere_volume((1.0, 1.0, 1.0))
    conv = tmp_path / "converted"
    (conv / "images").mkdir(parents=True)
    write_nifti(conv / "images" / "C1.nii.gz", hu.astype(np.int16), g)
    (conv / "nodules.csv").write_text("case_id,centre_x_lps_mm,centre_y_lps_mm,centre_z_lps_mm,diameter_mm\n"
                                      "C1,10.0,-20.0,30.0,12.0\n")
    if small_marks:
        (conv / "small_marks.csv").write_text(small_marks)
    (conv / "datalist.json").write_text(json.dumps({"training": [{"image": "images/C1.nii.gz"}], "validation": []}))
    cands = tmp_path / "cands" / "C1"
    cands.mkdir(parents=True)
    (cands / "C1_candidates.json").write_text(json.dumps({"candidates": candidates}))
    return conv, tmp_path / "cands"


def test_build_dataset_uses_false_positive_candidates_as_hard_negatives(tmp_path):
    conv, cands = _converted_case(tmp_path, [
        {"id": 1, "centre_lps": [11.0, -20.0, 30.0], "max_prob": 0.9},     # hits the nodule
        {"id": 2, "centre_lps": [-30.0, 10.0, 0.0], "max_prob": 0.8}])     # a false positive
    path = build_patch_dataset(conv, tmp_path / "patches", candidates_dir=cands, positive_copies=3,
                               random_negatives_per_case=4)
    d = json.loads(path.read_text())
    kinds = [e["kind"] for e in d["training"]]
    assert kinds.count("nodule") == 3 and kinds.count("candidate_hit") == 1 and kinds.count("hard_negative") == 1
    assert all(e["label"] == [0] for e in d["training"] if e["kind"] in ("hard_negative", "lung"))
    first = np.load(tmp_path / "patches" / d["training"][0]["image"])
    assert first.shape == (5, 64, 64) and first.dtype == np.float32  # the default: 2.5D, 5 planes of 64 x 64 at 1 mm


def test_slab_patches_are_planes_along_the_slice_axis():
    """2.5D patches: one axial plane per offset, as channels; the centre plane is the plain 2-D patch."""
    hu, g = _sphere_volume((0.7, 0.7, 2.5))
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


def test_build_dataset_slab_vessels_and_small_marks(tmp_path):
    conv, cands = _converted_case(tmp_path, [
        {"id": 1, "centre_lps": [-31.0, 10.0, 0.0], "max_prob": 0.8},      # at a small mark: left out
        {"id": 2, "centre_lps": [0.0, 0.0, -20.0], "max_prob": 0.7}],      # at a non-nodule mark: negative
        "case_id,kind,centre_x_lps_mm,centre_y_lps_mm,centre_z_lps_mm\n"
        "C1,small_nodule,-30.0,10.0,0.0\nC1,non_nodule,0.0,0.0,-20.0\n")
    path = build_patch_dataset(conv, tmp_path / "patches", candidates_dir=cands, positive_copies=1,
                               random_negatives_per_case=2, slab_mm=[-2.5, 0.0, 2.5])
    d = json.loads(path.read_text())
    kinds = [e["kind"] for e in d["training"]]
    assert kinds.count("hard_negative") == 1 and d["slab_mm"] == [-2.5, 0.0, 2.5]
    assert np.load(tmp_path / "patches" / d["training"][0]["image"]).shape == (3, 64, 64)
