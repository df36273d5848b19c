"""lungnod_ext.metrics.classification against hand-computed answers (patch metrics, ROC AUC with ties)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lungnod_ext.metrics.classification import binary_classification_metrics, roc_auc


# ------------------------------------------------------------------------------------------------ patches
def test_binary_classification_metrics_hand_case():
    y = [1, 1, 0, 0, 1, 0]
    s = [0.9, 0.4, 0.6, 0.2, 0.8, 0.1]  # at 0.5: TP 2 (0.9, 0.8), FN 1 (0.4), FP 1 (0.6), TN 2
    m = binary_classification_metrics(y, s)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 2)
    for k in ("sensitivity", "recall", "specificity", "precision", "f1"):
        assert m[k] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["roc_auc"] == pytest.approx(8 / 9)  # 9 positive/negative pairs, 0.4 loses to 0.6 only
    assert binary_classification_metrics(y, s, threshold=0.35)["sensitivity"] == 1.0


def test_roc_auc_ties_and_degenerate():
    assert roc_auc([1, 0, 1, 0], [0.5, 0.5, 0.7, 0.3]) == pytest.approx(3.5 / 4)  # the tie counts 1/2
    assert roc_auc([1, 0], [0.5, 0.5]) == 0.5
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))
    import sklearn.metrics as skl
    rng = np.random.default_rng(1)
    y, s = rng.integers(0, 2, 300), np.round(rng.uniform(size=300), 1)  # many ties
    assert roc_auc(y, s) == pytest.approx(skl.roc_auc_score(y, s), abs=1e-12)
