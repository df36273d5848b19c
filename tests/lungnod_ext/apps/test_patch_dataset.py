"""lungnod_ext.apps.patch_dataset: nodule patches, and hard negatives from the segmenter's false-positive candidates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_prep.nifti_io import write_nifti
from lungnod_ext.apps.patch_dataset import build_patch_dataset, detector_prior


def _converted_case(tmp_path, sphere_volume, candidates: list[dict], small_marks: str | None = None):
    """A one-case convert folder (a 12 mm sphere nodule) and a candidates folder -> (converted, candidates dir)."""
    hu, g = sphere_volume((1.0, 1.0, 1.0))
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


def test_build_dataset_uses_false_positive_candidates_as_hard_negatives(tmp_path, sphere_volume):
    conv, cands = _converted_case(tmp_path, sphere_volume, [
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


def test_build_dataset_slab_vessels_and_small_marks(tmp_path, sphere_volume):
    conv, cands = _converted_case(tmp_path, sphere_volume, [
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


def test_build_dataset_with_a_finer_second_sampling(tmp_path, sphere_volume):
    """fine_spacing_mm: every patch holds the planes twice (spacing_mm, then the finer sampling), the datalist
    says so, and a single plane keeps its channel axis."""
    conv, cands = _converted_case(tmp_path, sphere_volume, [])
    path = build_patch_dataset(conv, tmp_path / "patches", candidates_dir=cands, positive_copies=1,
                               random_negatives_per_case=1, slab_mm=[-2.5, 0.0, 2.5], fine_spacing_mm=0.5)
    d = json.loads(path.read_text())
    nodule = np.load(tmp_path / "patches" / d["training"][0]["image"])
    assert d["fine_spacing_mm"] == 0.5 and nodule.shape == (6, 64, 64)
    # the 12 mm sphere at the centre: pi 6^2 = 113 samples at 1 mm, 4x as many at 0.5 mm
    assert 90 < (nodule[1] > -430).sum() < 130 and 400 < (nodule[4] > -430).sum() < 510
    single = build_patch_dataset(conv, tmp_path / "single", candidates_dir=cands, positive_copies=1,
                                 random_negatives_per_case=1, slab_mm=None, fine_spacing_mm=0.5)
    first = json.loads(single.read_text())["training"][0]["image"]
    assert np.load(tmp_path / "single" / first).shape == (2, 64, 64)


def test_dot_filter_candidates_get_their_own_kinds_and_prior(tmp_path, sphere_volume):
    """Candidates with ``detector`` "blob" become ``blob_hit`` / ``blob_negative`` with their rank; the prior is
    their share of hits (1 of 3), or of those ranked below ``max_rank`` (1 of 2); the segmenter's keep theirs."""
    conv, cands = _converted_case(tmp_path, sphere_volume, [
        {"id": 1, "centre_lps": [11.0, -20.0, 30.0], "max_prob": 0.9},
        {"id": 2, "centre_lps": [10.0, -21.0, 30.0], "max_prob": 0.0, "detector": "blob", "blob_rank": 0},
        {"id": 3, "centre_lps": [-30.0, 10.0, 0.0], "max_prob": 0.0, "detector": "blob", "blob_rank": 1},
        {"id": 4, "centre_lps": [0.0, 10.0, 0.0], "max_prob": 0.0, "detector": "blob", "blob_rank": 7}])
    path = build_patch_dataset(conv, tmp_path / "patches", candidates_dir=cands, positive_copies=1,
                               random_negatives_per_case=1)
    entries = json.loads(path.read_text())["training"]
    blob = sorted((e["blob_rank"], e["kind"], e["label"]) for e in entries if e["blob_rank"] >= 0)
    assert blob == [(0, "blob_hit", [1]), (1, "blob_negative", [0]), (7, "blob_negative", [0])]
    assert {e["blob_rank"] for e in entries if not e["kind"].startswith("blob")} == {-1}   # one key set for batching
    assert [e["kind"] for e in entries].count("candidate_hit") == 1
    assert detector_prior(path) == 1 / 3
    assert detector_prior(path, max_rank=5) == 1 / 2
    assert detector_prior(path, split="validation") is None
    case = entries[0]["case"]
    assert detector_prior(path, skip_cases=[case + "_other"]) == 1 / 3 and detector_prior(path, skip_cases=[case]) is None


@pytest.mark.parametrize("detector,rank_key", [("pleural", "cap_rank"), ("faint", "blob_rank")])
def test_other_detectors_get_their_own_kinds_and_prior(tmp_path, sphere_volume, detector, rank_key):
    """Candidates of the pleural caps (``detector`` "pleural") and of the dot filter's faint quota ("faint")
    become ``<detector>_hit`` / ``<detector>_negative``; their prior is their own share of hits (1 of 2), whatever
    ``max_rank`` (a setting of the strongest dot-filter peaks), and the dot filter's is apart (0 of 1)."""
    conv, cands = _converted_case(tmp_path, sphere_volume, [
        {"id": 1, "centre_lps": [10.5, -20.0, 30.0], "max_prob": 0.0, "detector": detector, rank_key: 130},
        {"id": 2, "centre_lps": [-30.0, 10.0, 0.0], "max_prob": 0.0, "detector": detector, rank_key: 0},
        {"id": 3, "centre_lps": [0.0, 10.0, 0.0], "max_prob": 0.0, "detector": "blob", "blob_rank": 0}])
    path = build_patch_dataset(conv, tmp_path / "patches", candidates_dir=cands, positive_copies=1,
                               random_negatives_per_case=1)
    entries = json.loads(path.read_text())["training"]
    kinds = sorted((e["kind"], e["label"]) for e in entries if e["kind"].startswith((detector, "blob")))
    assert kinds == [("blob_negative", [0]), (f"{detector}_hit", [1]), (f"{detector}_negative", [0])]
    assert detector_prior(path, detector=detector) == 1 / 2
    assert detector_prior(path, max_rank=0, detector=detector) == 1 / 2
    assert detector_prior(path) == 0.5 / 2          # no hit among 1: the Jeffreys estimate, not 0


def test_a_detector_without_hits_or_negatives_gets_a_prior_strictly_inside_0_1(tmp_path):
    """0 of n and n of n give (0.5) / (n + 1) and (n + 0.5) / (n + 1): a classifier config refuses 0 and 1."""
    path = tmp_path / "datalist.json"
    negatives = [{"case": "a", "kind": "faint_negative"}] * 999
    path.write_text(json.dumps({"training": negatives, "validation": [{"case": "b", "kind": "faint_hit"}] * 3}))
    assert detector_prior(path, detector="faint") == pytest.approx(0.0005)
    assert detector_prior(path, split="validation", detector="faint") == pytest.approx(3.5 / 4)
    assert float(f"{detector_prior(path, detector='faint'):.3g}") == 0.0005    # as the recipe writes it
