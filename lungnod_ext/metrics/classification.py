"""Patch classification metrics, pure numpy: ROC AUC and counts / rates at a threshold.

Zero divisions follow :mod:`.overlap`'s rule.
"""

from __future__ import annotations

import numpy as np

from lungnod_ext.metrics.overlap import confusion_counts, safe_ratio


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their mean rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.nonzero(np.diff(xs))[0] + 1]
    ends = np.r_[starts[1:], xs.size]
    ranks_sorted = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    ranks = np.empty(x.size, dtype=float)
    ranks[order] = ranks_sorted
    return ranks


def roc_auc(y_true, y_score) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count 1/2); NaN if a class is absent."""
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(y_score, dtype=float).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binary_classification_metrics(y_true, y_score, threshold: float = 0.5) -> dict:
    """Patch classification: y_true 0/1, y_score probabilities; predicted positive when ``score >= threshold``.

    Returns sensitivity (= recall), specificity, precision, recall, f1, accuracy, roc_auc (threshold-free)
    and the counts tp, fp, fn, tn. Zero divisions follow the module rule.
    """
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(y_score, dtype=float).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels for {s.size} scores")
    counts = confusion_counts(s >= threshold, y)
    tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]
    ok = fp == 0 and fn == 0
    sens = safe_ratio(tp, tp + fn, ok)
    return {"sensitivity": sens, "specificity": safe_ratio(tn, tn + fp, ok), "precision": safe_ratio(tp, tp + fp, ok),
            "recall": sens, "f1": safe_ratio(2 * tp, 2 * tp + fp + fn, ok), "accuracy": safe_ratio(tp + tn, y.size, ok),
            "roc_auc": roc_auc(y, s), **counts, "threshold": float(threshold)}
