"""Segmentation loss with an *ignore* value (labels from :class:`lungnod_ext.transforms.labels.BinarizeLabeld`).

LIDC small marks (< 3 mm, a point, no contour) are real findings without an outline: they must not be
taught as background. Training labels carry them (and any other region to leave out) as
``IGNORE_LABEL`` (255); every other non-zero value is a nodule. Shapes: logits and labels
``(B, 1, *spatial)``; labels hold 0 (background), 1..254 (nodule) or 255 (ignore).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from data_prep.training_cohort import IGNORE_LABEL


def split_label(label: torch.Tensor, ignore_value: int = IGNORE_LABEL) -> tuple[torch.Tensor, torch.Tensor]:
    """A label with ignore values -> (target 0/1 float, valid 0/1 float), same shape."""
    valid = (label != ignore_value).to(torch.float32)
    target = ((label > 0.5) & (label != ignore_value)).to(torch.float32)
    return target, valid


class MaskedDiceBCELoss(torch.nn.Module):
    """Soft Dice (over the whole batch, sigmoid) + binary cross-entropy, both blind to ignored voxels.

    ``pos_weight`` > 1 weighs nodule voxels up in the cross-entropy. Returns a scalar tensor.
    """

    def __init__(self, ignore_value: int = IGNORE_LABEL, dice_weight: float = 1.0, bce_weight: float = 1.0,
                 pos_weight: float = 1.0, smooth: float = 1e-5) -> None:
        super().__init__()
        self.ignore_value = ignore_value
        self.dice_weight, self.bce_weight = float(dice_weight), float(bce_weight)
        self.pos_weight = float(pos_weight)
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if logits.shape != label.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and label {tuple(label.shape)} differ in shape")
        target, valid = split_label(label, self.ignore_value)
        logits = logits.float()
        weight = valid * (1.0 + (self.pos_weight - 1.0) * target)
        bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
        bce = bce / weight.sum().clamp_min(1.0)
        prob = torch.sigmoid(logits) * valid
        inter = (prob * target).sum()
        dice = 1.0 - (2.0 * inter + self.smooth) / (prob.sum() + target.sum() + self.smooth)
        return self.bce_weight * bce + self.dice_weight * dice


