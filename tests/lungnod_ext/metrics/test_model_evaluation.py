"""lungnod_ext.metrics.model_evaluation: subsets with excluded nodules and small marks, FROC / operating point, Dice."""

from __future__ import annotations

import numpy as np

import pytest

from lungnod_ext.metrics.model_evaluation import (per_nodule_axes, per_nodule_dice, score_stage, size_band,
                                                subset_references)

REFS = {"a": [{"nodule_id": 1, "centre_lps": [0, 0, 0], "diameter_mm": 10.0, "n_readers": 4},
              {"nodule_id": 2, "centre_lps": [50, 0, 0], "diameter_mm": 6.0, "n_readers": 1}],
        "b": []}
MARKS = {"b": [{"centre_lps": [0, 80, 0], "diameter_mm": 10.0, "exclude": True}]}


def _det(x, y, s1, s2):
    return {"centre_lps": [x, y, 0.0], "max_prob": s1, "cls_prob": s2}


DETS = {"a": [_det(1, 0, 0.9, 0.95), _det(50, 1, 0.8, 0.7), _det(0, 40, 0.95, 0.1)],
        "b": [_det(0, 81, 0.9, 0.9), _det(30, 30, 0.7, 0.2)]}


def test_subset_excludes_other_nodules_and_small_marks():
    three = subset_references(REFS, lambda r: r["n_readers"] >= 3, MARKS)
    assert [r["exclude"] for r in three["a"]] == [False, True] and three["b"][0]["exclude"]
    s1 = score_stage(DETS, three, "max_prob")
    # nodule 1 found; the hit on the 1-reader nodule and on the small mark are ignored; 2 false positives
    assert s1["n_nodules"] == 1 and s1["sensitivity"] == 1.0 and s1["fp"] == 2 and s1["fp_per_scan"] == 1.0
    s12 = score_stage(DETS, three, "cls_prob")
    assert s12["fp"] == 0 and s12["froc"]["0.125"] == 1.0 and s12["cpm"] == 1.0
    everything = score_stage(DETS, subset_references(REFS, lambda r: True, MARKS), "max_prob")
    assert everything["n_nodules"] == 2 and everything["tp"] == 2 and everything["fp"] == 2


def test_froc_reads_the_fp_rate_where_the_nodule_appears():
    refs = subset_references(REFS, lambda r: r["n_readers"] >= 3, MARKS)
    r = score_stage(DETS, refs, "max_prob")
    # sorted by score: FP 0.95 (a), then TP 0.9 (a) and the ignored small-mark hit: 1 FP over 2 scans = 0.5
    assert r["froc"]["0.25"] == 0.0 and r["froc"]["0.5"] == 1.0


def test_per_nodule_dice_uses_the_components_touching_each_nodule():
    ref = np.zeros((4, 10, 10), np.uint16)
    ref[1:3, 2:6, 2:6] = 1                 # 32 voxels
    ref[1:3, 7:9, 7:9] = 2                 # 8 voxels, never touched
    cand = np.zeros_like(ref)
    cand[1:3, 2:6, 3:7] = 5                # 32 voxels, 24 overlap
    cand[0, 0, 0] = 6                      # elsewhere
    d = per_nodule_dice(cand, ref, [1, 2])
    assert np.isclose(d[1], 2 * 24 / 64) and d[2] == 0.0
    assert per_nodule_dice(cand, ref, [1], kept_ids=[6]) == {1: 0.0}


def test_per_nodule_axes_pairs_each_nodule_with_the_components_touching_it():
    ref = np.zeros((4, 20, 20), np.uint16)
    ref[1:3, 2:8, 2:12] = 1                # 6 x 10 pixels of 0.5 mm on two slices: 3 x 5 mm
    ref[1:3, 15:17, 15:17] = 2             # never touched
    cand = np.zeros_like(ref)
    cand[1, 2:8, 2:8] = 5                  # the left 3 x 3 mm of nodule 1 ...
    cand[2, 2:10, 6:12] = 7                # ... and a 4 x 3 mm piece on the next slice
    cand[0, 0, 0] = 9                      # elsewhere
    axes = per_nodule_axes(cand, ref, [1, 2], (2.5, 0.5, 0.5))
    assert axes[1]["reference"] == pytest.approx([np.hypot(3, 5), 2 * 3 * 5 / np.hypot(3, 5)])
    assert axes[1]["predicted"] == pytest.approx([5.0, 3.0 * 4.0 / 5.0 * 2])   # slice 2's 4 x 3 mm piece is longer
    assert axes[2] == {"reference": pytest.approx([np.sqrt(2), np.sqrt(2)]), "predicted": None}


def test_size_band():
    assert [size_band(d) for d in (2.0, 3.0, 5.9, 6.0, 12.0, 26.4, 45)] == \
        ["< 3 mm", "3-6 mm", "3-6 mm", "6-10 mm", "10-20 mm", "20-40 mm", ">= 40 mm"]


def test_read_small_marks_reads_luna16_irrelevant_point_marks(tmp_path):
    """Both kinds of LIDC point mark (< 3 mm nodule, non-nodule) are excluded 10 mm spheres; ``kinds`` narrows."""
    from lungnod_ext.metrics.model_evaluation import read_small_marks

    table = tmp_path / "small_marks.csv"
    table.write_text("case_id,kind,centre_x_lps_mm,centre_y_lps_mm,centre_z_lps_mm\n"
                     "a,small_nodule,1,2,3\na,non_nodule,120.9,-24.7,-195\nb,non_nodule,0,0,0\n")
    marks = read_small_marks(table, ["a"])
    assert list(marks) == ["a"] and [m["kind"] for m in marks["a"]] == ["small_nodule", "non_nodule"]
    assert all(m["exclude"] and m["diameter_mm"] == 10.0 for m in marks["a"])
    assert marks["a"][1]["centre_lps"] == [120.9, -24.7, -195.0]
    assert [m["kind"] for m in read_small_marks(table, kinds=("small_nodule",))["a"]] == ["small_nodule"]
    # a candidate 3.6 mm from the non-nodule mark is ignored, one at 5.5 mm is a false positive
    dets = {"a": [{"centre_lps": [118.6, -27.0, -193.3], "s": 0.9}, {"centre_lps": [120.9, -19.2, -195], "s": 0.8}]}
    r = score_stage(dets, subset_references({"a": []}, lambda r: True, marks), "s")
    assert r["fp"] == 1 and r["n_nodules"] == 0
