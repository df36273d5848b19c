"""Candidates: thresholding + 26-connected components, filters, measurements, files, the MONAI wrapper."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
from scipy import ndimage as ndi
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from data_prep.masks import sphere_mask
from data_prep.nifti_io import write_nifti
from lungnod_ext.inference.candidates import (CSV_COLUMNS, ExtractCandidatesd, extract_candidates,
                                    extract_candidates_and_labels, write_candidates)
from lungnod_ext.apps.pipeline import SEG_BUNDLE
from lungnod_ext.data.meta import geometry_from_meta_tensor
from data_prep.coords import Geometry

SPACING = (0.7, 0.7, 2.5)  # (i, j, k) mm
ORIGIN = (-150.0, -120.0, -300.0)  # LPS mm


def geometry(shape_ijk=(64, 48, 24), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), origin=ORIGIN) -> Geometry:
    return Geometry(origin, SPACING, tuple(float(v) for v in direction), shape_ijk)


def test_components_are_measured_and_ordered_by_max_prob():
    g = geometry()
    prob = np.zeros(g.shape_zyx, dtype=np.float32)
    prob[5:8, 10:20, 10:20] = 0.7                 # 3 x 10 x 10 = 300 voxels, max 0.7
    prob[6, 15, 15] = 0.95                        # -> id 1
    prob[15:17, 30:34, 40:46] = 0.9               # 2 x 4 x 6 = 48 voxels, max 0.9 (id 2)
    prob[20, 40, 60] = 0.99                       # one voxel: 1.225 mm^3 < 10 mm^3 -> dropped
    prob[2, 2, 2] = 0.4                           # below threshold
    hu = np.full(g.shape_zyx, -800, dtype=np.int16)
    hu[5:8, 10:20, 10:20] = 30
    cands, labels = extract_candidates_and_labels(prob, g, hu_zyx=hu)
    assert [c["id"] for c in cands] == [1, 2]
    big, small = cands  # the big one holds the highest probability (0.95)
    assert small["max_prob"] == pytest.approx(0.9) and big["max_prob"] == pytest.approx(0.95)
    assert small["n_voxels"] == 48 and big["n_voxels"] == 300
    assert big["volume_mm3"] == pytest.approx(300 * 0.7 * 0.7 * 2.5)
    assert big["diameter_mm"] == pytest.approx((6 * big["volume_mm3"] / math.pi) ** (1 / 3))
    assert big["centre_voxel"] == pytest.approx([14.5, 14.5, 6.0])
    assert big["centre_lps"] == pytest.approx([-150 + 14.5 * 0.7, -120 + 14.5 * 0.7, -300 + 6 * 2.5])
    assert big["bbox_voxel"] == [10, 10, 5, 20, 20, 8]
    assert big["bbox_lps_mm"] == pytest.approx([-150 + 9.5 * 0.7, -120 + 9.5 * 0.7, -300 + 4.5 * 2.5,
                                                -150 + 19.5 * 0.7, -120 + 19.5 * 0.7, -300 + 7.5 * 2.5])
    assert big["mean_hu"] == pytest.approx(30.0) and small["mean_hu"] == pytest.approx(-800.0)
    assert big["mean_prob"] == pytest.approx((299 * 0.7 + 0.95) / 300, rel=1e-6)
    assert labels.dtype == np.uint16
    assert (labels == 1).sum() == 300 and (labels == 2).sum() == 48 and labels.max() == 2
    assert labels[20, 40, 60] == 0 and labels[2, 2, 2] == 0
    # list version agrees; max_candidates keeps the best
    assert extract_candidates(prob, g, hu_zyx=hu) == cands
    top, top_labels = extract_candidates_and_labels(prob, g, max_candidates=1)
    assert len(top) == 1 and top[0]["max_prob"] == pytest.approx(0.95) and top[0]["id"] == 1
    assert set(np.unique(top_labels)) == {0, 1} and (top_labels == 1).sum() == 300
    assert math.isnan(top[0]["mean_hu"])


def test_26_connectivity_joins_diagonal_voxels():
    g = geometry()
    prob = np.zeros(g.shape_zyx, dtype=np.float32)
    for n in range(6):  # a diagonal line through (z, y, x): corner-connected only
        prob[5 + n, 10 + n, 10 + n] = 1.0
    cands = extract_candidates(prob, g, min_volume_mm3=0)
    assert len(cands) == 1 and cands[0]["n_voxels"] == 6


def test_nothing_above_threshold_gives_empty_list():
    g = geometry()
    prob = np.full(g.shape_zyx, 0.49, dtype=np.float32)
    cands, labels = extract_candidates_and_labels(prob, g)
    assert cands == [] and labels.shape == g.shape_zyx and labels.max() == 0
    assert extract_candidates(np.zeros(g.shape_zyx), g) == []


def test_min_volume_in_mm3():
    g = geometry()
    prob = np.zeros(g.shape_zyx, dtype=np.float32)
    prob[3, 3:6, 3:6] = 1.0  # 9 voxels = 11.025 mm^3
    assert len(extract_candidates(prob, g, min_volume_mm3=11.0)) == 1
    assert extract_candidates(prob, g, min_volume_mm3=11.1) == []


def test_lung_filter_uses_mm_distances_on_anisotropic_voxels():
    g = geometry()  # spacing x 0.7, y 0.7, z 2.5 mm
    lung = np.zeros(g.shape_zyx, dtype=np.uint8)
    lung[0:10, :, 0:30] = 1
    prob = np.zeros(g.shape_zyx, dtype=np.float32)
    prob[12:14, 20:24, 5:9] = 0.8       # 3 slices above the lung's last slice (9): 3 * 2.5 = 7.5 mm
    prob[2:4, 20:24, 40:44] = 0.9       # 11 columns right of the lung's last column (29): 11 * 0.7 = 7.7 mm
    prob[4:6, 30:34, 10:14] = 0.6       # inside the lung
    def kept(dilate):
        return sorted(round(c["max_prob"], 2) for c in extract_candidates(prob, g, lung_mask_zyx=lung,
                                                                           lung_dilate_mm=dilate, min_volume_mm3=0))
    assert kept(0.0) == [0.6]
    assert kept(7.0) == [0.6]
    assert kept(7.5) == [0.6, 0.8]          # z gap: 7.5 mm, would be 3 voxels if counted in voxels
    assert kept(7.7) == [0.6, 0.8, 0.9]     # x gap: 7.7 mm, 11 voxels
    assert len(extract_candidates(prob, g, min_volume_mm3=0)) == 3  # no lung mask: no filter


def test_empty_lung_mask_warns_and_keeps_candidates():
    g = geometry()
    prob = np.zeros(g.shape_zyx, dtype=np.float32)
    prob[5:8, 10:14, 10:14] = 0.8
    with pytest.warns(UserWarning, match="lung mask is empty"):
        cands = extract_candidates(prob, g, lung_mask_zyx=np.zeros(g.shape_zyx, dtype=bool))
    assert len(cands) == 1


def test_bad_shapes_are_reported():
    g = geometry()
    with pytest.raises(ValueError, match="does not match geometry"):
        extract_candidates(np.zeros((3, 4, 5)), g)
    with pytest.raises(ValueError, match="hu_zyx shape"):
        extract_candidates(np.zeros(g.shape_zyx), g, hu_zyx=np.zeros((3, 4, 5)))


def test_write_candidates_json_and_csv(tmp_path):
    g = geometry()
    prob = np.zeros(g.shape_zyx, dtype=np.float32)
    prob[5:8, 10:20, 10:20] = 0.7
    prob[15:17, 30:34, 40:46] = 0.9
    cands = extract_candidates(prob, g)  # no HU: mean_hu NaN -> null / empty cell
    cands[0]["cls_prob"] = np.float32(0.25)  # a later stage may add keys: they become extra CSV columns
    cands[0]["reviewed"] = np.bool_(True)
    paths = write_candidates(cands, tmp_path / "c.json", tmp_path / "c.csv", {"case": "case_001", "model": "m1"})
    assert paths == [tmp_path / "c.json", tmp_path / "c.csv"]
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["case"] == "case_001" and doc["coordinate_system"] == "LPS" and doc["units"] == "mm"
    assert doc["model"] == "m1" and len(doc["candidates"]) == 2
    assert doc["candidates"][1]["mean_hu"] is None
    assert doc["candidates"][0]["cls_prob"] == 0.25 and doc["candidates"][0]["reviewed"] is True
    assert doc["candidates"][1]["centre_lps"] == pytest.approx(cands[1]["centre_lps"])
    with open(tmp_path / "c.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[: len(CSV_COLUMNS)] == list(CSV_COLUMNS)
    assert list(rows[0])[len(CSV_COLUMNS):] == ["cls_prob", "reviewed"]
    assert float(rows[1]["centre_x_lps_mm"]) == pytest.approx(cands[1]["centre_lps"][0])
    assert float(rows[1]["bbox_z1_lps_mm"]) == pytest.approx(cands[1]["bbox_lps_mm"][5])
    assert int(rows[0]["bbox_k1"]) == cands[0]["bbox_voxel"][5]
    assert rows[0]["mean_hu"] == "" and rows[0]["cls_prob"] == "0.25" and rows[1]["cls_prob"] == ""
    assert not list(tmp_path.glob(".*part"))  # no temporary left behind


def test_write_empty_candidates(tmp_path):
    write_candidates([], tmp_path / "e.json", tmp_path / "e.csv", {"case": "empty"})
    doc = json.loads((tmp_path / "e.json").read_text())
    assert doc == {"case": "empty", "coordinate_system": "LPS", "units": "mm", "candidates": []}
    assert (tmp_path / "e.csv").read_text() == ",".join(CSV_COLUMNS) + "\n"


# ------------------------------------------------------------------------------------------------ MONAI
@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, 1, 0, 0, 0, 1)],
                         ids=["identity", "i_to_right"])
def test_monai_loaded_nifti_gives_lps_centre(tmp_path, direction):
    """NIfTI written by data_prep -> MONAI LoadImaged + EnsureChannelFirstd (C, X, Y, Z), RAS affine ->
    ExtractCandidatesd -> the LPS centre of a blob placed at a known LPS position."""
    g = geometry(shape_ijk=(80, 60, 20), direction=direction, origin=(-150.3, -120.7, -300.25))
    blob_ijk = (50, 20, 12)
    expected_lps = np.array(g.origin) + np.array(direction, float).reshape(3, 3) @ (np.array(SPACING) * blob_ijk)
    if direction[0] == 1:
        assert expected_lps == pytest.approx([-150.3 + 35.0, -120.7 + 14.0, -300.25 + 30.0])
    else:
        assert expected_lps == pytest.approx([-150.3 - 35.0, -120.7 + 14.0, -300.25 + 30.0])
    blob = sphere_mask(g, expected_lps, 8.0).astype(bool)  # symmetric about a voxel centre
    assert blob[12, 20, 50] and blob.sum() > 50
    prob = np.where(blob, 0.9, 0.02).astype(np.float32)
    hu = np.where(blob, 45, -850).astype(np.int16)
    write_nifti(tmp_path / "pred.nii.gz", prob, g)
    write_nifti(tmp_path / "img.nii.gz", hu, g)

    load = Compose([LoadImaged(keys=["image", "pred"]), EnsureChannelFirstd(keys=["image", "pred"])])
    data = load({"image": str(tmp_path / "img.nii.gz"), "pred": str(tmp_path / "pred.nii.gz")})
    assert tuple(data["pred"].shape) == (1, 80, 60, 20)                       # (C, X, Y, Z)
    assert np.allclose(data["pred"][0].numpy().transpose(2, 1, 0), prob)    # -> our (z, y, x)
    g_loaded = geometry_from_meta_tensor(data["pred"])
    assert g_loaded.shape == g.shape and np.allclose(g_loaded.affine_lps(), g.affine_lps(), atol=1e-4)

    out = ExtractCandidatesd(keys="pred", image_key="image", output_dir=str(tmp_path / "cands"))(data)
    cands = out["candidates"]
    assert len(cands) == 1
    assert cands[0]["centre_lps"] == pytest.approx(expected_lps.tolist(), abs=1e-3)
    assert cands[0]["centre_voxel"] == pytest.approx(list(blob_ijk), abs=1e-6)
    assert cands[0]["mean_hu"] == pytest.approx(45.0) and cands[0]["max_prob"] == pytest.approx(0.9)
    labels = out["candidate_labels"]
    assert isinstance(labels, MetaTensor) and tuple(labels.shape) == (1, 80, 60, 20)
    assert np.array_equal(labels[0].numpy().transpose(2, 1, 0) == 1, blob)
    assert torch.allclose(labels.affine.double(), data["pred"].affine.double())
    doc = json.loads((tmp_path / "cands" / "pred_candidates.json").read_text())
    assert doc["case"] == "pred" and doc["candidates"][0]["centre_lps"] == pytest.approx(expected_lps, abs=1e-3)
    assert (tmp_path / "cands" / "pred_candidates.csv").exists()


def test_dict_transform_two_channel_softmax_lung_mask_and_empty():
    g = geometry(shape_ijk=(40, 30, 10))
    fg = np.zeros(g.shape_zyx, dtype=np.float32)
    fg[3:6, 5:10, 5:10] = 0.8        # in the lung
    fg[3:6, 20:25, 30:35] = 0.9      # far from it
    lung = np.zeros(g.shape_zyx, dtype=np.uint8)
    lung[:, :15, :15] = 1
    def to_cxyz(a):  # (z, y, x) -> (1, X, Y, Z)
        return a.transpose(2, 1, 0)[None]

    pred = MetaTensor(torch.from_numpy(np.concatenate([to_cxyz(1 - fg), to_cxyz(fg)]).copy()),
                      affine=torch.from_numpy(g.affine_ras()))
    data = {"pred": pred, "lung": MetaTensor(torch.from_numpy(to_cxyz(lung).copy()),
                                             affine=torch.from_numpy(g.affine_ras()))}
    out = ExtractCandidatesd(keys="pred", image_key=None, lung_mask_key="lung", lung_dilate_mm=2.0)(data)
    assert len(out["candidates"]) == 1 and out["candidates"][0]["max_prob"] == pytest.approx(0.8)
    assert out["candidates"][0]["centre_voxel"] == pytest.approx([7.0, 7.0, 4.0])
    empty = {"pred": MetaTensor(torch.zeros(1, 40, 30, 10), affine=torch.from_numpy(g.affine_ras()))}
    out = ExtractCandidatesd(keys="pred", image_key="image", allow_missing_keys=False)(empty)
    assert out["candidates"] == [] and int(out["candidate_labels"].max()) == 0
    with pytest.raises(KeyError, match="lung"):
        ExtractCandidatesd(keys="pred", lung_mask_key="lung")(empty)


def test_lung_core_fraction_drops_segments_outside_the_lung():
    """Components with less than min_lung_core_fraction of their voxels in the lung core are dropped;
    without the rule, or with an empty core (no lung found), every component stays."""
    g = geometry(shape_ijk=(40, 30, 10))
    prob = np.zeros(g.shape_zyx, dtype=np.float32)
    prob[3:6, 5:10, 5:10] = 0.8        # inside the core: 75 voxels
    prob[3:6, 20:25, 20:30] = 0.9      # 150 voxels, 40 of them (27 %) inside
    core = np.zeros(g.shape_zyx, dtype=np.uint8)
    core[:, :15, :15] = 1
    core[3:5, 20:25, 20:24] = 1
    both, _ = extract_candidates_and_labels(prob, g, lung_core_zyx=core, min_lung_core_fraction=0.0)
    assert len(both) == 2
    kept, labels = extract_candidates_and_labels(prob, g, lung_core_zyx=core, min_lung_core_fraction=0.35)
    assert [c["n_voxels"] for c in kept] == [75] and kept[0]["id"] == 1 and int(labels.max()) == 1
    assert len(extract_candidates_and_labels(prob, g, lung_core_zyx=core, min_lung_core_fraction=0.25)[0]) == 2
    assert len(extract_candidates_and_labels(prob, g, lung_core_zyx=np.zeros_like(core),
                                             min_lung_core_fraction=0.35)[0]) == 2


def chest_phantom():
    """A chest of 200 x 160 x 24 voxels (140 x 112 mm, 0.7 mm pixels, 2.5 mm slices): body 40 HU, one -850 HU
    lung at z 2-21, y 30-129, x 40-119, noise 10 HU -> (geometry, (z, y, x) index grids, hu, lung, to_cxyz: a
    (z, y, x) array as a (1, X, Y, Z) MetaTensor on the geometry)."""
    g = geometry(shape_ijk=(200, 160, 24))
    z, y, x = np.meshgrid(*[np.arange(n) for n in g.shape_zyx], indexing="ij")
    hu = np.full(g.shape_zyx, -1000.0, np.float32)
    hu[:, 10:150, 10:190] = 40.0
    lung = (z >= 2) & (z < 22) & (y >= 30) & (y < 130) & (x >= 40) & (x < 120)
    hu[lung] = -850.0
    hu += np.random.default_rng(0).normal(0, 10, hu.shape).astype(np.float32)

    def to_cxyz(a):
        return MetaTensor(torch.from_numpy(np.ascontiguousarray(a.transpose(2, 1, 0)[None])),
                          affine=torch.from_numpy(g.affine_ras()))
    return g, (z, y, x), hu, lung, to_cxyz


def test_dict_transform_computes_the_lung_core_from_the_image():
    """A chest: body 40 HU, one -850 HU lung; a segment inside the lung is kept, one in the soft tissue beside
    it (touching the lung, so the 10 mm lung filter alone keeps it) is dropped by the core rule."""
    g, (z, y, x), hu, lung, to_cxyz = chest_phantom()
    prob = np.zeros(g.shape_zyx, dtype=np.float32)
    inside = (np.abs(z - 12) <= 1) & (np.abs(y - 80) <= 6) & (np.abs(x - 80) <= 6)
    outside = (np.abs(z - 12) <= 1) & (np.abs(y - 80) <= 6) & (x >= 120) & (x < 140)
    prob[inside] = 0.9
    prob[outside] = 0.95
    hu[inside] = 40.0
    data = {"pred": to_cxyz(prob), "image": to_cxyz(hu), "lung": to_cxyz(lung.astype(np.uint8))}
    everything = ExtractCandidatesd(keys="pred", lung_mask_key="lung", lung_dilate_mm=10.0)(data)["candidates"]
    assert len(everything) == 2
    kept = ExtractCandidatesd(keys="pred", lung_mask_key="lung", lung_dilate_mm=10.0, min_lung_core_fraction=0.35,
                              lung_core_closing_mm=15.0)(data)["candidates"]
    assert len(kept) == 1 and kept[0]["max_prob"] == pytest.approx(0.9)
    assert kept[0]["centre_voxel"] == pytest.approx([80.0, 80.0, 12.0])

    # a lung core given by the pipeline (LungMaskd's core_key) is used instead of working it out: a core
    # holding both segments keeps both, an empty core restricts nothing, one of another grid is an error
    wide = to_cxyz(((y >= 20) & (y < 140) & (x >= 30) & (x < 150)).astype(np.uint8))
    extract = ExtractCandidatesd(keys="pred", lung_mask_key="lung", lung_dilate_mm=10.0, min_lung_core_fraction=0.35,
                                 lung_core_key="core")
    assert len(extract({**data, "core": wide})["candidates"]) == 2
    assert len(extract({**data, "core": to_cxyz(np.zeros_like(prob, dtype=np.uint8))})["candidates"]) == 2
    assert len(extract(data)["candidates"]) == 1                     # no core in the data: from the image
    with pytest.raises(ValueError, match="lung_core"):
        extract({**data, "core": MetaTensor(torch.zeros(1, 10, 10, 10))})


def test_a_mass_against_the_wall_survives_the_lung_core_rule():
    """A 45 mm mass on the chest wall (its lung half segmented: 35 mm equivalent diameter) is a bite too big for
    the core's 15 mm closing, so the core rule alone drops it; lung air borders most of it, so with
    mass_min_diameter_mm 30 it stays, while a block of soft tissue as large beside the lung (air on one side
    only) is still dropped, and so is the mass when smaller masses only are exempt."""
    g, (z, y, x), hu, lung, to_cxyz = chest_phantom()
    ball = ((z - 12) * 2.5) ** 2 + ((y - 80) * 0.7) ** 2 + ((x - 120) * 0.7) ** 2 <= 22.5 ** 2
    hu[ball] = 40.0
    prob = np.zeros(g.shape_zyx, dtype=np.float32)
    prob[ball & (x < 120)] = 0.95                     # the mass's lung half
    block = (z >= 6) & (z < 19) & (y >= 40) & (y < 80) & (x >= 15) & (x < 40)
    prob[block] = 0.9                                  # soft tissue beside the lung, as large
    data = {"pred": to_cxyz(prob), "image": to_cxyz(hu), "lung": to_cxyz(lung.astype(np.uint8))}
    common = dict(keys="pred", lung_mask_key="lung", lung_dilate_mm=10.0, min_lung_core_fraction=0.35,
                  lung_core_closing_mm=15.0)
    everything = ExtractCandidatesd(keys="pred", lung_mask_key="lung", lung_dilate_mm=10.0)(data)["candidates"]
    assert sorted(round(c["diameter_mm"]) for c in everything) == [31, 35]
    assert ExtractCandidatesd(**common)(data)["candidates"] == []
    kept = ExtractCandidatesd(**common, mass_min_diameter_mm=30.0)(data)["candidates"]
    assert len(kept) == 1 and kept[0]["max_prob"] == pytest.approx(0.95)
    assert ExtractCandidatesd(**common, mass_min_diameter_mm=40.0)(data)["candidates"] == []
    assert ExtractCandidatesd(**common, mass_min_diameter_mm=30.0, mass_min_air_contact=0.9)(data)["candidates"] == []
    k, j, i = 12, 80, 105                              # a slice of the mass: its shell is mostly lung air
    from lungnod_ext.inference.candidates import air_contact
    seg = (ball & (x < 120))[k - 1:k + 2, j - 40:j + 40, i - 30:i + 30]
    assert 0.5 < air_contact(seg, hu[k - 1:k + 2, j - 40:j + 40, i - 30:i + 30], (2.5, 0.7, 0.7)) < 0.8


def test_a_segment_on_a_contrast_filled_vessel_is_dropped_but_not_a_calcified_or_juxta_vascular_nodule():
    """A contrast-filled aorta (250 HU, 20 mm across, through every slice) beside the lung: a segment on its edge
    (about 60 % of its voxels in the aorta) is dropped with max_enhanced_share 0.5, while a calcified nodule (400
    HU, 6 mm, its density ending within 10 mm) and a soft nodule touching the aorta (40 HU) are kept."""
    g, (z, y, x), hu, lung, to_cxyz = chest_phantom()
    aorta = ((y - 80) * 0.7) ** 2 + ((x - 135) * 0.7) ** 2 <= 10.0 ** 2
    hu[aorta] = 250.0
    prob = np.zeros(g.shape_zyx, dtype=np.float32)
    edge = (np.abs(z - 12) <= 2) & (np.abs(y - 80) <= 5) & (x >= 117) & (x < 127)
    prob[edge] = 0.95
    calcified = ((z - 12) * 2.5) ** 2 + ((y - 50) * 0.7) ** 2 + ((x - 70) * 0.7) ** 2 <= 3.0 ** 2
    hu[calcified] = 400.0
    prob[calcified] = 0.9
    soft = ((z - 6) * 2.5) ** 2 + ((y - 90) * 0.7) ** 2 + ((x - 113) * 0.7) ** 2 <= 6.0 ** 2
    hu[soft] = 40.0
    prob[soft] = 0.85
    assert (soft & aorta).sum() == 0 and ndi.binary_dilation(soft, iterations=2)[aorta].any()
    data = {"pred": to_cxyz(prob), "image": to_cxyz(hu), "lung": to_cxyz(lung.astype(np.uint8))}
    common = dict(keys="pred", lung_mask_key="lung", lung_dilate_mm=10.0)
    assert len(ExtractCandidatesd(**common)(data)["candidates"]) == 3            # off by default
    kept = ExtractCandidatesd(**common, max_enhanced_share=0.5)(data)["candidates"]
    assert sorted(c["max_prob"] for c in kept) == pytest.approx([0.85, 0.9])
    assert len(ExtractCandidatesd(**common, max_enhanced_share=0.7)(data)["candidates"]) == 3
    assert len(ExtractCandidatesd(**common, max_enhanced_share=0.5, enhanced_hu=300.0)(data)["candidates"]) == 3

    from lungnod_ext.inference.candidates import enhanced_share
    box = (slice(4, 21), slice(60, 101), slice(100, 144))           # the edge segment's box grown by 10 mm
    assert 0.5 < enhanced_share(edge[box], hu[box]) < 0.7
    box = (slice(7, 18), slice(31, 70), slice(51, 90))              # the calcified nodule's, likewise
    assert calcified[box].sum() == calcified.sum() and enhanced_share(calcified[box], hu[box]) == 0.0


def test_windowed_image_warns_and_grid_mismatch_fails():
    g = geometry(shape_ijk=(20, 20, 10))
    prob = np.zeros((1, 20, 20, 10), dtype=np.float32)
    prob[0, 5:9, 5:9, 3:6] = 0.9
    affine = torch.from_numpy(g.affine_ras())
    pred = MetaTensor(torch.from_numpy(prob), affine=affine)
    windowed = MetaTensor(torch.full((1, 20, 20, 10), 0.3), affine=affine)
    with pytest.warns(UserWarning, match="windowed"):
        out = ExtractCandidatesd(keys="pred")({"pred": pred, "image": windowed})
    assert len(out["candidates"]) == 1
    with pytest.raises(ValueError, match="different grids"):
        ExtractCandidatesd(keys="pred")({"pred": pred, "image": MetaTensor(torch.zeros(1, 10, 10, 5))})
    with pytest.raises(ValueError, match="decollate"):
        ExtractCandidatesd(keys="pred")({"pred": MetaTensor(torch.zeros(1, 1, 20, 20, 10), affine=affine)})


def test_the_shipped_mass_rule_keeps_a_partly_segmented_mass_on_the_wall():
    """Where the U-Net outlines only part of a mass on the diaphragm or the wall (its segment 25 mm equivalent
    diameter, a bite of 32 mm, too wide for the core's 15 mm closing), the rule with the configs' 20 mm keeps
    it; the 30 mm of segmentation 0.11.0-0.12.0 dropped it. Both configs carry the same value."""
    g, (z, y, x), hu, lung, to_cxyz = chest_phantom()
    ball = ((z - 12) * 2.5) ** 2 + ((y - 80) * 0.7) ** 2 + ((x - 120) * 0.7) ** 2 <= 16.0 ** 2
    hu[ball] = 40.0
    prob = np.zeros(g.shape_zyx, dtype=np.float32)
    prob[ball & (x < 120)] = 0.95
    data = {"pred": to_cxyz(prob), "image": to_cxyz(hu), "lung": to_cxyz(lung.astype(np.uint8))}
    common = dict(keys="pred", lung_mask_key="lung", lung_dilate_mm=10.0, min_lung_core_fraction=0.35,
                  lung_core_closing_mm=15.0)
    everything = ExtractCandidatesd(keys="pred", lung_mask_key="lung", lung_dilate_mm=10.0)(data)["candidates"]
    assert [round(c["diameter_mm"]) for c in everything] == [25]
    assert ExtractCandidatesd(**common)(data)["candidates"] == []                     # the core rule alone
    assert ExtractCandidatesd(**common, mass_min_diameter_mm=30.0)(data)["candidates"] == []
    configs = [json.loads((SEG_BUNDLE / "configs" / f).read_text()) for f in ("inference.json", "evaluate.json")]
    shipped = {c["mass_min_diameter_mm"] for c in configs}
    assert shipped == {20.0}
    kept = ExtractCandidatesd(**common, mass_min_diameter_mm=shipped.pop())(data)["candidates"]
    assert len(kept) == 1 and round(kept[0]["diameter_mm"]) == 25
