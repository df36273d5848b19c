"""Voxel overlap metrics, pure numpy: confusion counts, Dice, IoU, precision, recall, specificity, F1.

Zero-division rule (here and in :mod:`.detection` / :mod:`.classification`): a ratio whose denominator is 0
is **1.0 when the prediction makes no error at all** (it equals the truth, e.g. both masks empty) and
**0.0 otherwise**. So two empty masks have Dice = IoU = precision = recall = 1.0; an empty prediction
against a non-empty truth has precision 0.0 (like scikit-learn's ``zero_division=0``) and Dice 0.0.
Masks: any shape, non-zero = foreground. :func:`from_engine_ignoring` feeds MONAI's metric handlers with
ignored voxels (label 255) left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from data_prep.training_cohort import IGNORE_LABEL


def safe_ratio(numerator: float, denominator: float, no_error: bool) -> float:
    """``numerator / denominator``; when the denominator is 0: 1.0 if the prediction made no error, else 0.0."""
    if denominator == 0:
        return 1.0 if no_error else 0.0
    return float(numerator) / float(denominator)


def confusion_counts(pred, truth) -> dict[str, int]:
    """TP, FP, FN, TN voxel counts of two binary masks of the same shape (non-zero = foreground)."""
    p, t = np.asarray(pred) != 0, np.asarray(truth) != 0
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from truth shape {t.shape}")
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(t)) - tp
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(p.size) - tp - fp - fn}


def _from_counts(c: Mapping[str, int]) -> dict[str, float]:
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    ok = fp == 0 and fn == 0
    return {
        "dice": safe_ratio(2 * tp, 2 * tp + fp + fn, ok),
        "iou": safe_ratio(tp, tp + fp + fn, ok),
        "precision": safe_ratio(tp, tp + fp, ok),
        "recall": safe_ratio(tp, tp + fn, ok),
        "specificity": safe_ratio(tn, tn + fp, ok),
        "f1": safe_ratio(2 * tp, 2 * tp + fp + fn, ok),
    }


def dice(pred, truth) -> float:
    """Dice = 2|P & T| / (|P| + |T|); both empty -> 1.0."""
    return _from_counts(confusion_counts(pred, truth))["dice"]


def iou(pred, truth) -> float:
    """Intersection over union (Jaccard); both empty -> 1.0."""
    return _from_counts(confusion_counts(pred, truth))["iou"]


def precision(pred, truth) -> float:
    """TP / (TP + FP); an empty prediction -> 1.0 if the truth is empty too, else 0.0."""
    return _from_counts(confusion_counts(pred, truth))["precision"]


def recall(pred, truth) -> float:
    """Sensitivity TP / (TP + FN); an empty truth -> 1.0 if the prediction is empty too, else 0.0."""
    return _from_counts(confusion_counts(pred, truth))["recall"]


sensitivity = recall


def specificity(pred, truth) -> float:
    """TN / (TN + FP); a truth with no background -> 1.0 if the prediction is exact, else 0.0."""
    return _from_counts(confusion_counts(pred, truth))["specificity"]


def f1(pred, truth) -> float:
    """2 TP / (2 TP + FP + FN): for masks this equals Dice."""
    return _from_counts(confusion_counts(pred, truth))["f1"]


def voxel_metrics(pred, truth) -> dict[str, float]:
    """All voxel metrics at once (dice, iou, precision, recall, specificity, f1) plus the four counts."""
    counts = confusion_counts(pred, truth)
    return {**_from_counts(counts), **counts}
def from_engine_ignoring(keys: Sequence[str] = ("pred", "label"), ignore_value: int = IGNORE_LABEL):
    """Like ``monai.handlers.from_engine(keys)`` for metrics: ignored voxels count as background in both
    the prediction and the label (lists of per-item tensors)."""

    def _transform(output):
        items = output if isinstance(output, list) else [output]
        preds, labels = [], []
        for item in items:
            label = item[keys[1]]
            ignore = label == ignore_value
            pred = item[keys[0]].clone()
            pred[ignore] = 0
            lab = (label > 0.5) & ~ignore
            preds.append(pred)
            labels.append(lab.to(pred.dtype))
        return preds, labels

    return _transform

