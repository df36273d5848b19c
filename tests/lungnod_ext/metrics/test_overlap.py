"""lungnod_ext.metrics.overlap against hand-computed answers: confusion counts, overlap metrics, the ignore label."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lungnod_ext.metrics.overlap import (dice, f1, from_engine_ignoring, iou, precision, recall, specificity,
                                         voxel_metrics)


# ------------------------------------------------------------------------------------------------ voxels
def test_voxel_metrics_hand_case():
    truth = np.zeros((2, 5), dtype=bool)
    pred = np.zeros((2, 5), dtype=bool)
    truth[0, :4] = True          # 4 voxels
    pred[0, 2:5] = True          # 3 voxels, 2 of them in the truth: TP 2, FP 1, FN 2, TN 5
    assert dice(pred, truth) == pytest.approx(4 / 7)
    assert iou(pred, truth) == pytest.approx(2 / 5)
    assert precision(pred, truth) == pytest.approx(2 / 3)
    assert recall(pred, truth) == pytest.approx(1 / 2)
    assert specificity(pred, truth) == pytest.approx(5 / 6)
    assert f1(pred, truth) == pytest.approx(4 / 7)
    m = voxel_metrics(pred.astype(np.uint8), truth.astype(np.uint8) * 3)  # any non-zero is foreground
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 2, 5) and m["dice"] == pytest.approx(4 / 7)


def test_voxel_metrics_empty_masks():
    empty = np.zeros((3, 3, 3), dtype=bool)
    some = empty.copy()
    some[1, 1, 1] = True
    both_empty = voxel_metrics(empty, empty)
    assert all(both_empty[k] == 1.0 for k in ("dice", "iou", "precision", "recall", "specificity", "f1"))
    missed = voxel_metrics(empty, some)       # nothing predicted, one voxel of truth
    assert missed["dice"] == 0.0 and missed["iou"] == 0.0 and missed["precision"] == 0.0 and missed["recall"] == 0.0
    assert missed["specificity"] == 1.0
    spurious = voxel_metrics(some, empty)     # one voxel predicted, empty truth
    assert spurious["dice"] == 0.0 and spurious["precision"] == 0.0 and spurious["recall"] == 0.0
    assert spurious["specificity"] == pytest.approx(26 / 27)
    full = np.ones((2, 2), dtype=bool)
    assert specificity(full, full) == 1.0
    with pytest.raises(ValueError, match="shape"):
        dice(empty, np.zeros((2, 2)))


# ------------------------------------------------------------------------------------------------ ignore label
def test_metric_transform_treats_ignored_as_background():
    pred = torch.ones(1, 4)
    label = torch.tensor([[1.0, 255.0, 0.0, 1.0]])
    preds, labels = from_engine_ignoring()([{"pred": pred, "label": label}])
    assert preds[0].tolist() == [[1.0, 0.0, 1.0, 1.0]] and labels[0].tolist() == [[1.0, 0.0, 0.0, 1.0]]
