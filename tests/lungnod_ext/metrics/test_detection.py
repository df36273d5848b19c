"""lungnod_ext.metrics.detection against hand-computed answers (LUNA16 matching/FROC/CPM, 3D box IoU and AP)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lungnod_ext.metrics.detection import (average_precision_3d, box_iou_3d, detection_summary, froc, map_50,
                                           map_50_95, match_detections)


# ------------------------------------------------------------------------------------------------ detection
def det(x, y, z, score):
    return {"centre_lps": [x, y, z], "score": score}


def ref(x, y, z, diameter, **kw):
    return {"centre_lps": [x, y, z], "diameter_mm": diameter, **kw}


# Two scans, four nodules. Scan A: R1 (d 10) hit by d0 (0.9) and d1 (0.6, a double detection, ignored),
# d2 (0.8) a FP, R2 (d 6) hit by d3 (0.4, 2 mm off). Scan B: R3 (d 8) hit by d4 (0.7, 3 mm off),
# R4 (d 5) missed: d7 (0.95) is 3 mm off, outside its 2.5 mm radius -> FP; d5 (0.5), d6 (0.3) FPs.
SCAN_A = ([det(1, 1, 1, 0.9), det(2, 0, 0, 0.6), det(100, 100, 100, 0.8), det(50, 2, 0, 0.4)],
          [ref(0, 0, 0, 10), ref(50, 0, 0, 6)])
SCAN_B = ([det(0, 0, 3, 0.7), det(200, 0, 0, 0.5), det(-100, 0, 0, 0.3), det(30, 30, 33, 0.95)],
          [ref(0, 0, 0, 8), ref(30, 30, 30, 5)])


def test_match_detections_luna16_rule():
    m = match_detections(*SCAN_A)
    assert m.tp == [(0, 0), (1, 3)] and m.tp_scores == [0.9, 0.4]
    assert m.fp == [2] and m.fp_scores == [0.8] and m.ignored == [1] and m.fn == []
    m = match_detections(*SCAN_B)
    assert m.tp == [(0, 0)] and m.fp == [1, 2, 3] and m.fn == [1] and m.ignored == []
    # the radius is strict: at exactly diameter / 2 it is a miss (the script's dist < radiusSquared)
    assert match_detections([det(3, 0, 0, 1.0)], [ref(0, 0, 0, 6)]).fn == [0]
    assert match_detections([det(2.999, 0, 0, 1.0)], [ref(0, 0, 0, 6)]).tp == [(0, 0)]
    # hits on an excluded reference are ignored, its miss is not counted
    m = match_detections([det(0, 0, 0, 0.9), det(40, 0, 0, 0.8)], [ref(0, 0, 0, 4, exclude=True), ref(9, 9, 9, 4)])
    assert m.tp == [] and m.ignored == [0] and m.fp == [1] and m.fn == [1]
    assert m.on_excluded_only == [0] and match_detections(*SCAN_A).on_excluded_only == []   # a double hit is not
    # a detection in an excluded and an included reference at once counts as a hit on the included one
    m = match_detections([det(0, 0, 0, 0.9), det(3, 0, 0, 0.5)], [ref(0, 0, 0, 10, exclude=True), ref(4, 0, 0, 4)])
    assert m.on_excluded_only == [0] and m.tp == [(1, 1)]
    # one detection inside two overlapping nodules counts for both (as the script does)
    m = match_detections([det(0, 0, 0, 0.9)], [ref(-2, 0, 0, 10), ref(2, 0, 0, 10)])
    assert m.tp == [(0, 0), (1, 0)] and m.fp == []
    # candidates can be matched on another score key
    m = match_detections([{"centre_lps": [0, 0, 0], "max_prob": 0.3}], [ref(0, 0, 0, 5)], score_key="max_prob")
    assert m.tp_scores == [0.3]
    assert match_detections([], []).tp == [] and match_detections([], [ref(0, 0, 0, 5)]).fn == [0]


def test_match_detections_one_to_one():
    m = match_detections(*SCAN_A, mode="one_to_one")
    assert m.tp == [(0, 0), (1, 3)] and m.fp == [1, 2] and m.ignored == []  # the double detection is a FP
    with pytest.raises(ValueError, match="mode"):
        match_detections(*SCAN_A, mode="nearest")


def test_froc_hand_case():
    """TP scores 0.9, 0.7, 0.4 of 4 nodules; FP scores 0.95, 0.8, 0.5, 0.3 over 2 scans. Curve (FP/scan, sens):
    (0, 0) -> 0.95: (0.5, 0) -> 0.9: (0.5, .25) -> 0.8: (1, .25) -> 0.7: (1, .5) -> 0.5: (1.5, .5)
    -> 0.4: (1.5, .75) -> 0.3: (2, .75). Read at 1/8 .. 8: 0, 0, .25, .5, .75, .75, .75; CPM = 3 / 7."""
    for interpolation in ("luna16", "step"):
        r = froc([SCAN_A[0], SCAN_B[0]], [SCAN_A[1], SCAN_B[1]], interpolation=interpolation)
        assert r.sensitivities == pytest.approx([0, 0, 0.25, 0.5, 0.75, 0.75, 0.75])
        assert r.cpm == pytest.approx(3 / 7)
    assert r.fps_per_scan == pytest.approx([0, 0.5, 0.5, 1, 1, 1.5, 1.5, 2])
    assert r.sensitivity == pytest.approx([0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75])
    assert r.thresholds[0] == math.inf and r.thresholds[1:] == pytest.approx([0.95, 0.9, 0.8, 0.7, 0.5, 0.4, 0.3])
    assert (r.n_references, r.n_scans, r.n_tp, r.n_fp) == (4, 2, 3, 4)
    # dict input, and scans without anything enlarge the FP/scan divisor: 4 scans halve every FP rate
    r4 = froc({"a": SCAN_A[0], "b": SCAN_B[0]}, {"a": SCAN_A[1], "b": SCAN_B[1]}, n_scans=4)
    assert r4.sensitivities == pytest.approx([0, 0.25, 0.5, 0.75, 0.75, 0.75, 0.75])
    assert r4.as_dict()["cpm"] == pytest.approx(3.75 / 7)


def test_froc_perfect_and_blind_detectors():
    refs = [[ref(0, 0, 0, 6), ref(40, 0, 0, 8)], [ref(10, 10, 10, 5)], []]
    perfect = [[det(0, 0, 0, 0.9), det(40, 0, 0, 0.8)], [det(10, 10, 10, 0.7)], []]
    assert froc(perfect, refs).cpm == 1.0
    with_low_fps = [p + [det(500, 500, 500, 0.1)] for p in perfect]  # FPs scored below every TP
    assert froc(with_low_fps, refs).cpm == 1.0
    blind = [[det(300, 0, 0, 0.9)], [], [det(0, 300, 0, 0.5)]]
    r = froc(blind, refs)
    assert r.cpm == 0.0 and r.sensitivities.tolist() == [0.0] * 7
    assert froc([[]] * 3, refs).cpm == 0.0
    assert math.isnan(froc(perfect, [[], [], []]).cpm)  # no reference at all


def test_froc_tie_between_tp_and_fp():
    """One scan: a TP and a FP both scored 0.5. The LUNA16 script interpolates along the diagonal from
    (0, 0) to (1, 1); the step reading only has the two real operating points."""
    dets, refs = [[det(0, 0, 0, 0.5), det(90, 0, 0, 0.5)]], [[ref(0, 0, 0, 10)]]
    luna = froc(dets, refs)
    assert luna.sensitivities == pytest.approx([0.125, 0.25, 0.5, 1, 1, 1, 1])
    assert luna.cpm == pytest.approx(4.875 / 7)
    step = froc(dets, refs, interpolation="step")
    assert step.sensitivities == pytest.approx([0, 0, 0, 1, 1, 1, 1]) and step.cpm == pytest.approx(4 / 7)


def test_froc_matches_the_luna16_script_formula():
    """Our curve read with np.interp == the LUNA16 script's computeFROC (sklearn roc_curve) on random data."""
    import sklearn.metrics as skl
    rng = np.random.default_rng(0)
    dets, refs = [], []
    for _ in range(6):
        case_refs = [ref(*rng.uniform(-100, 100, 3), rng.uniform(4, 20)) for _ in range(rng.integers(0, 4))]
        case_dets = [det(*(np.array(r["centre_lps"]) + rng.normal(0, 2, 3)), round(rng.uniform(), 2))
                     for r in case_refs if rng.uniform() < 0.8]
        case_dets += [det(*rng.uniform(-100, 100, 3), round(rng.uniform(), 2)) for _ in range(rng.integers(0, 8))]
        dets.append(case_dets)
        refs.append(case_refs)
    ours = froc(dets, refs)
    # the script: every nodule (missed ones at -1e9 and excluded from ROC) + every FP, sklearn roc_curve
    gt, prob, exclude = [], [], []
    for d, r in zip(dets, refs):
        m = match_detections(d, r)
        gt += [1.0] * (len(m.tp) + len(m.fn)) + [0.0] * len(m.fp)
        prob += m.tp_scores + [-1e9] * len(m.fn) + m.fp_scores
        exclude += [False] * len(m.tp) + [True] * len(m.fn) + [False] * len(m.fp)
    keep = ~np.asarray(exclude)
    gt_l, prob_l = np.asarray(gt)[keep], np.asarray(prob)[keep]
    fpr, tpr, _ = skl.roc_curve(gt_l, prob_l)
    fps = fpr * (len(prob_l) - gt_l.sum()) / len(dets)
    sens = tpr * gt_l.sum() / sum(gt)
    expected = np.interp(np.array([0.125, 0.25, 0.5, 1, 2, 4, 8]), fps, sens)
    assert ours.sensitivities == pytest.approx(expected, abs=1e-12)
    assert 0 < ours.cpm < 1


def test_detection_summary_at_threshold():
    s = detection_summary([SCAN_A[0], SCAN_B[0]], [SCAN_A[1], SCAN_B[1]], threshold=0.5)
    # kept: A d0 (R1), d1 (double, ignored), d2 (FP); B d4 (R3), d5 (FP), d7 (FP). R2 (hit at 0.4), R4 missed.
    assert (s["tp"], s["fp"], s["fn"], s["ignored"]) == (2, 3, 2, 1)
    assert s["sensitivity"] == pytest.approx(0.5) and s["precision"] == pytest.approx(0.4)
    assert s["f1"] == pytest.approx(2 * 0.5 * 0.4 / 0.9) and s["fp_per_scan"] == pytest.approx(1.5)
    none = detection_summary([[], []], [[], []])
    assert none["sensitivity"] == 1.0 and none["precision"] == 1.0 and none["fp_per_scan"] == 0.0


# ------------------------------------------------------------------------------------------------ boxes
CUBE = (0, 0, 0, 10, 10, 10)


def test_box_iou_3d():
    assert box_iou_3d(CUBE, CUBE)[0, 0] == pytest.approx(1.0)
    assert box_iou_3d(CUBE, (0, 0, 0, 10, 10, 6.2))[0, 0] == pytest.approx(0.62)
    assert box_iou_3d(CUBE, (5, 5, 5, 15, 15, 15))[0, 0] == pytest.approx(125 / 1875)
    assert box_iou_3d(CUBE, (20, 20, 20, 30, 30, 30))[0, 0] == 0.0
    # scaling an axis (voxel -> mm) leaves IoU unchanged
    scale = np.array([0.7, 0.7, 2.5] * 2)
    a, b = np.array([2, 3, 4, 9, 8, 7.0]), np.array([4, 1, 5, 12, 6, 9.0])
    assert box_iou_3d(a * scale, b * scale)[0, 0] == pytest.approx(box_iou_3d(a, b)[0, 0])
    assert box_iou_3d([CUBE, CUBE], [CUBE]).shape == (2, 1)


def test_average_precision_known_answers():
    assert average_precision_3d([[(CUBE, 0.9)]], [[CUBE]]) == pytest.approx(1.0)
    iou62 = [[((0, 0, 0, 10, 10, 6.2), 0.9)]]
    assert average_precision_3d(iou62, [[CUBE]], 0.5) == pytest.approx(1.0)
    assert average_precision_3d(iou62, [[CUBE]], 0.65) == 0.0
    assert map_50(iou62, [[CUBE]]) == pytest.approx(1.0)
    assert map_50_95(iou62, [[CUBE]]) == pytest.approx(0.3)  # matched at 0.50, 0.55, 0.60 of 10 thresholds
    far = (50, 50, 50, 60, 60, 60)
    # a FP ranked above the only TP: precision 0.5 at recall 1 -> every recall point reads 0.5
    assert average_precision_3d([[(far, 0.9), (CUBE, 0.8)]], [[CUBE]]) == pytest.approx(0.5)
    # TP 0.9, FP 0.8, TP 0.7 of 2 GT: recall .5 .5 1, precision 1 .5 2/3 -> envelope 1 2/3 2/3;
    # recall points 0..0.50 (51) read 1, 0.51..1 (50) read 2/3
    other = (20, 0, 0, 30, 10, 10)
    ap = average_precision_3d([[(CUBE, 0.9), (far, 0.8), (other, 0.7)]], [[CUBE, other]])
    assert ap == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)
    # no predictions -> 0; no ground truth -> NaN; a prediction cannot match another case's box
    assert average_precision_3d([[]], [[CUBE]]) == 0.0
    assert math.isnan(average_precision_3d([[(CUBE, 0.9)]], [[]]))
    assert average_precision_3d({"a": [(CUBE, 0.9)], "b": []}, {"a": [], "b": [CUBE]}) == 0.0
    # two predictions on one box: the second is a FP
    assert average_precision_3d([[(CUBE, 0.9), (CUBE, 0.8)]], [[CUBE]]) == pytest.approx(1.0)
    assert average_precision_3d([[(CUBE, 0.8), (CUBE, 0.9)], []], [[CUBE], [far]]) == pytest.approx(51 / 101)
