"""Nodule detection metrics, pure numpy: LUNA16 matching, FROC and CPM, counts at a threshold, 3D box AP
(mAP@0.5, mAP@0.5:0.95).

Conventions follow the LUNA16 evaluation script (``noduleCADEvaluationLUNA16.py``); see
:func:`match_detections` and :func:`froc`. Positions are LPS mm, diameters mm, boxes
``(x0, y0, z0, x1, y1, z1)`` LPS mm. Zero divisions follow :mod:`.overlap`'s rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from lungnod_ext.metrics.overlap import safe_ratio

LUNA16_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""False positives per scan at which LUNA16 reads the FROC curve; CPM is the mean sensitivity there."""
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)
IOU_THRESHOLDS_50_95 = np.linspace(0.5, 0.95, 10)


@dataclass
class DetectionMatch:
    """Result of :func:`match_detections` for one scan.

    tp: (reference index, detection index) pairs, the detection being the highest-scoring hit of that
    reference; fp: detection indices that hit no reference; fn: reference indices (not excluded) with no hit;
    ignored: detection indices neither TP nor FP (a lower-scoring second hit on a nodule, or a hit on an
    excluded reference); tp_scores: the TP detections' scores, aligned with ``tp``; on_excluded_only: detection
    indices whose centre lies in excluded references only (LUNA16's irrelevant findings; a subset of ``ignored``
    in ``luna16`` mode).
    """

    tp: list[tuple[int, int]] = field(default_factory=list)
    fp: list[int] = field(default_factory=list)
    fn: list[int] = field(default_factory=list)
    ignored: list[int] = field(default_factory=list)
    tp_scores: list[float] = field(default_factory=list)
    fp_scores: list[float] = field(default_factory=list)
    on_excluded_only: list[int] = field(default_factory=list)


def _centres(items: Sequence[Mapping], what: str) -> np.ndarray:
    if not items:
        return np.zeros((0, 3))
    arr = np.asarray([it["centre_lps"] for it in items], dtype=float)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"every {what} needs a 3-value centre_lps (mm)")
    return arr


def match_detections(detections: Sequence[Mapping], references: Sequence[Mapping], mode: str = "luna16",
                     score_key: str = "score") -> DetectionMatch:
    """Match one scan's detections to its reference nodules.

    detections: dicts with ``centre_lps`` (mm) and ``score`` (or ``score_key``, e.g. ``"max_prob"`` for
    candidates). references: dicts with ``centre_lps`` (mm), ``diameter_mm`` and optionally
    ``exclude: True`` (LUNA16's ``annotations_excluded.csv``: nodules < 3 mm, non-nodules, nodules seen by
    fewer than 3 readers: hits on them are ignored, misses are not counted).

    ``mode="luna16"`` does exactly what the LUNA16 script does: a detection hits a reference when the
    distance between centres is **strictly less** than the reference radius (``dist < diameter / 2``, the
    script's ``dist < radiusSquared``). Every detection hitting a reference is removed from the false
    positives; for each reference only its highest-scoring hit is the TP, the other hits are ignored
    (neither TP nor FP: the script's "double detections"). A detection inside two overlapping references
    counts as a hit for both. ``mode="one_to_one"`` is stricter: detections are taken by descending score,
    each hits at most one reference (the nearest free one within its radius), and a second detection on an
    already-hit reference is a false positive.
    """
    det_xyz = _centres(detections, "detection")
    ref_xyz = _centres(references, "reference")
    scores = np.asarray([float(d[score_key]) for d in detections], dtype=float)
    radius = np.asarray([float(r["diameter_mm"]) / 2.0 for r in references], dtype=float)
    excluded = np.asarray([bool(r.get("exclude", False)) for r in references], dtype=bool)
    dist = np.linalg.norm(det_xyz[:, None, :] - ref_xyz[None, :, :], axis=-1)  # (n_det, n_ref)
    hits = dist < radius[None, :]
    out = DetectionMatch(on_excluded_only=[int(d) for d in np.nonzero(hits[:, excluded].any(1)
                                                                     & ~hits[:, ~excluded].any(1))[0]])
    if mode == "luna16":
        handled = np.zeros(len(detections), dtype=bool)
        for r in range(len(references)):
            hitting = np.nonzero(hits[:, r])[0]
            handled[hitting] = True
            if excluded[r]:
                continue
            if hitting.size == 0:
                out.fn.append(r)
                continue
            best = int(hitting[np.argmax(scores[hitting])])  # first of the highest scores
            out.tp.append((r, best))
            out.tp_scores.append(float(scores[best]))
        tp_dets = {d for _, d in out.tp}
        out.ignored = [int(d) for d in np.nonzero(handled)[0] if int(d) not in tp_dets]
        out.fp = [int(d) for d in np.nonzero(~handled)[0]]
    elif mode == "one_to_one":
        taken = np.zeros(len(references), dtype=bool)
        for d in np.argsort(-scores, kind="stable"):
            free = np.nonzero(hits[d] & ~taken)[0]
            if free.size:
                r = int(free[np.argmin(dist[d, free])])
                taken[r] = True
                if excluded[r]:
                    out.ignored.append(int(d))
                else:
                    out.tp.append((r, int(d)))
                    out.tp_scores.append(float(scores[d]))
            elif hits[d].any() and excluded[hits[d]].all():
                out.ignored.append(int(d))
            else:
                out.fp.append(int(d))
        out.fn = [r for r in range(len(references)) if not taken[r] and not excluded[r]]
        out.tp.sort()
        out.tp_scores = [float(scores[d]) for _, d in out.tp]
        out.fp.sort()
        out.ignored.sort()
    else:
        raise ValueError(f"unknown matching mode {mode!r}; use 'luna16' or 'one_to_one'")
    out.fp_scores = [float(scores[d]) for d in out.fp]
    return out


def _per_case(per_case_detections, per_case_references) -> list[tuple[Sequence, Sequence]]:
    """Pair detections and references case by case (dicts keyed by case id, or aligned sequences)."""
    if isinstance(per_case_detections, Mapping) or isinstance(per_case_references, Mapping):
        dets = dict(per_case_detections) if isinstance(per_case_detections, Mapping) else None
        refs = dict(per_case_references) if isinstance(per_case_references, Mapping) else None
        if dets is None or refs is None:
            raise ValueError("give detections and references both as dicts keyed by case, or both as lists")
        return [(dets.get(c, []), refs.get(c, [])) for c in list(dict.fromkeys([*refs, *dets]))]
    if len(per_case_detections) != len(per_case_references):
        raise ValueError(f"{len(per_case_detections)} detection lists for {len(per_case_references)} cases")
    return list(zip(per_case_detections, per_case_references))


@dataclass
class FROCResult:
    """FROC analysis. ``fp_rates`` / ``sensitivities``: the curve read at the requested FP/scan rates;
    ``cpm``: their mean; ``fps_per_scan`` / ``sensitivity`` / ``thresholds``: the full curve, one point per
    distinct score (descending thresholds, detections with ``score >= threshold`` kept), starting at (0, 0)
    with threshold +inf."""

    fp_rates: np.ndarray
    sensitivities: np.ndarray
    cpm: float
    fps_per_scan: np.ndarray
    sensitivity: np.ndarray
    thresholds: np.ndarray
    n_references: int
    n_scans: int
    n_tp: int
    n_fp: int

    def as_dict(self) -> dict:
        return {"fp_rates": self.fp_rates.tolist(), "sensitivities": self.sensitivities.tolist(), "cpm": self.cpm,
                "fps_per_scan": self.fps_per_scan.tolist(), "sensitivity": self.sensitivity.tolist(),
                "thresholds": [float(t) for t in self.thresholds], "n_references": self.n_references,
                "n_scans": self.n_scans, "n_tp": self.n_tp, "n_fp": self.n_fp}


def froc_curve(tp_scores, fp_scores, n_references: int, n_scans: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fps_per_scan, sensitivity, thresholds) swept over the distinct scores, from (0, 0) at +inf down."""
    tp = np.asarray(tp_scores, dtype=float)
    fp = np.asarray(fp_scores, dtype=float)
    thresholds = np.unique(np.concatenate([tp, fp]))[::-1]
    tp_sorted, fp_sorted = np.sort(tp), np.sort(fp)
    n_tp = tp.size - np.searchsorted(tp_sorted, thresholds, side="left")  # scores >= threshold
    n_fp = fp.size - np.searchsorted(fp_sorted, thresholds, side="left")
    fps = np.concatenate([[0.0], n_fp / float(n_scans)])
    sens = np.concatenate([[0.0], n_tp / float(n_references) if n_references else np.zeros(len(thresholds))])
    return fps, sens, np.concatenate([[np.inf], thresholds])


def froc(per_case_detections, per_case_references, n_scans: int | None = None,
         fp_rates: Sequence[float] = LUNA16_FP_RATES, interpolation: str = "luna16", mode: str = "luna16",
         score_key: str = "score") -> FROCResult:
    """FROC and CPM over scans.

    per_case_detections / per_case_references: dicts keyed by case id, or lists aligned by case, of the
    dicts :func:`match_detections` takes. n_scans: the number of scans evaluated (the FP/scan divisor;
    default: the number of cases given. Give it when scans with neither detections nor references are left
    out). The sensitivity denominator is every non-excluded reference, detected or not.

    The curve is swept over every distinct score. ``interpolation`` reads it at ``fp_rates``:

    * ``"luna16"`` (default): ``np.interp`` over the curve's points, as the LUNA16 script does (it interpolates
      ``sklearn.metrics.roc_curve`` output). Between operating points this is a step function (the FP count
      rises while the TP count stays), and at an FP rate reached exactly it takes the best sensitivity there,
      i.e. the sensitivity at the lowest threshold whose FP/scan <= rate. The one difference from a pure
      step: when a TP and an FP share a score, the script's curve has a diagonal segment and the value is
      interpolated along it.
    * ``"step"``: the best sensitivity of an operating point (a real threshold) with FP/scan <= rate; no
      diagonal segments. Equal to ``"luna16"`` unless a TP and an FP tie in score.

    CPM = mean of the sensitivities at ``fp_rates``. A run with no references at all gives NaN.
    """
    if interpolation not in ("luna16", "step"):
        raise ValueError(f"unknown interpolation {interpolation!r}; use 'luna16' or 'step'")
    cases = _per_case(per_case_detections, per_case_references)
    n_scans = len(cases) if n_scans is None else int(n_scans)
    if n_scans <= 0:
        raise ValueError("n_scans must be > 0")
    tp_scores, fp_scores, n_refs = [], [], 0
    for dets, refs in cases:
        m = match_detections(dets, refs, mode=mode, score_key=score_key)
        tp_scores += m.tp_scores
        fp_scores += m.fp_scores
        n_refs += len(m.tp) + len(m.fn)
    fps, sens, thresholds = froc_curve(tp_scores, fp_scores, n_refs, n_scans)
    rates = np.asarray(fp_rates, dtype=float)
    if n_refs == 0:
        at = np.full(rates.shape, np.nan)
    elif interpolation == "luna16":
        at = np.interp(rates, fps, sens)
    else:
        at = np.array([sens[fps <= r + 1e-12].max() for r in rates])
    return FROCResult(rates, at, float(np.mean(at)) if at.size else float("nan"), fps, sens, thresholds,
                      n_refs, n_scans, len(tp_scores), len(fp_scores))


def detection_summary(per_case_detections, per_case_references, n_scans: int | None = None,
                      threshold: float = 0.5, mode: str = "luna16", score_key: str = "score") -> dict:
    """Detection counts and rates at one score threshold (detections with ``score >= threshold`` kept).

    Returns tp (hit references), fp, fn, ignored, sensitivity = tp / (tp + fn), precision = tp / (tp + fp),
    f1, fp_per_scan, n_scans. Matching as :func:`match_detections`; zero divisions follow the module rule.
    """
    cases = _per_case(per_case_detections, per_case_references)
    n_scans = len(cases) if n_scans is None else int(n_scans)
    tp = fp = fn = ignored = 0
    for dets, refs in cases:
        kept = [d for d in dets if float(d[score_key]) >= threshold]
        m = match_detections(kept, refs, mode=mode, score_key=score_key)
        tp, fp, fn, ignored = tp + len(m.tp), fp + len(m.fp), fn + len(m.fn), ignored + len(m.ignored)
    ok = fp == 0 and fn == 0
    sens, prec = safe_ratio(tp, tp + fn, ok), safe_ratio(tp, tp + fp, ok)
    return {"tp": tp, "fp": fp, "fn": fn, "ignored": ignored, "sensitivity": sens, "precision": prec,
            "f1": safe_ratio(2 * tp, 2 * tp + fp + fn, ok), "fp_per_scan": fp / n_scans if n_scans else float("nan"),
            "n_scans": n_scans, "threshold": float(threshold)}


def box_iou_3d(a, b) -> np.ndarray:
    """IoU of axis-aligned 3D boxes ``(x0, y0, z0, x1, y1, z1)`` (min corner, max corner): (n, 6) x (m, 6) -> (n, m).

    Any unit works as long as both sides use the same: end-exclusive voxel boxes (``bbox_voxel``) or LPS mm
    boxes (``bbox_lps_mm``). On a grid whose axes are aligned with LPS both give the same IoU, because IoU
    does not change when an axis is scaled or shifted.
    """
    a = np.asarray(a, dtype=float).reshape(-1, 6)
    b = np.asarray(b, dtype=float).reshape(-1, 6)
    lo = np.maximum(a[:, None, :3], b[None, :, :3])
    hi = np.minimum(a[:, None, 3:], b[None, :, 3:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=-1)
    vol_a = np.prod(np.clip(a[:, 3:] - a[:, :3], 0.0, None), axis=-1)
    vol_b = np.prod(np.clip(b[:, 3:] - b[:, :3], 0.0, None), axis=-1)
    union = vol_a[:, None] + vol_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def average_precision_3d(pred_boxes, gt_boxes, iou_threshold: float = 0.5) -> float:
    """COCO-style AP of 3D boxes for one class, over cases.

    pred_boxes: per case (dict keyed by case or list aligned with ``gt_boxes``) a list of ``(box, score)``;
    gt_boxes: per case a list of boxes; boxes as in :func:`box_iou_3d`.

    Matching as pycocotools: all predictions sorted by descending score (stable: ties keep input order); each
    takes, in its own case, the not-yet-matched ground truth of highest IoU if that IoU >= ``iou_threshold``
    (TP), else it is an FP. Precision is made monotone (each precision replaced by the best precision at any
    higher recall) and read at the 101 recall points 0, 0.01, ..., 1 (0 where a recall is never reached);
    AP is their mean. No ground truth at all gives NaN (COCO reports -1).
    """
    cases = _per_case(pred_boxes, gt_boxes)
    n_gt = sum(len(g) for _, g in cases)
    if n_gt == 0:
        return float("nan")
    entries = []  # (score, case index, box)
    for c, (preds, _) in enumerate(cases):
        entries += [(float(score), c, box) for box, score in preds]
    order = np.argsort(-np.asarray([e[0] for e in entries], dtype=float), kind="mergesort")
    matched = [np.zeros(len(g), dtype=bool) for _, g in cases]
    gts = [np.asarray(g, dtype=float).reshape(-1, 6) for _, g in cases]
    is_tp = np.zeros(len(entries), dtype=bool)
    for rank, e in enumerate(order):
        _, c, box = entries[e]
        if not len(gts[c]):
            continue
        ious = box_iou_3d(box, gts[c])[0]
        ious[matched[c]] = -1.0
        best = int(np.argmax(ious))
        if ious[best] >= iou_threshold:
            matched[c][best] = True
            is_tp[rank] = True
    if not entries:
        return 0.0
    tp_cum = np.cumsum(is_tp)
    recall_curve = tp_cum / n_gt
    envelope = np.maximum.accumulate((tp_cum / np.arange(1, len(entries) + 1))[::-1])[::-1]
    idx = np.searchsorted(recall_curve, COCO_RECALL_POINTS, side="left")
    sampled = np.zeros(COCO_RECALL_POINTS.size)
    reached = idx < len(entries)
    sampled[reached] = envelope[idx[reached]]
    return float(np.mean(sampled))


def map_50(pred_boxes, gt_boxes) -> float:
    """AP at IoU 0.5 (one class, so mAP = AP)."""
    return average_precision_3d(pred_boxes, gt_boxes, 0.5)


def map_50_95(pred_boxes, gt_boxes) -> float:
    """Mean AP over IoU thresholds 0.50, 0.55, ..., 0.95 (COCO's primary metric)."""
    return float(np.mean([average_precision_3d(pred_boxes, gt_boxes, t) for t in IOU_THRESHOLDS_50_95]))
