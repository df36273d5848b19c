"""Segmentation loss with an *ignore* value (labels from :class:`lungnod_ext.transforms.labels.BinarizeLabeld`).

LIDC small marks (< 3 mm, a point, no contour) are real findings without an outline: they must not be
taught as background. Training labels carry them (and any other region to leave out) as
``IGNORE_LABEL`` (255); every other non-zero value is a nodule. Shapes: logits and labels
``(B, 1, *spatial)``; labels hold 0 (background), 1..254 (nodule) or 255 (ignore).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from data_prep.training_cohort import IGNORE_LABEL


def split_label(label: torch.Tensor, ignore_value: int = IGNORE_LABEL) -> tuple[torch.Tensor, torch.Tensor]:
    """A label with ignore values -> (target 0/1 float, valid 0/1 float), same shape."""
    valid = (label != ignore_value).to(torch.float32)
    target = ((label > 0.5) & (label != ignore_value)).to(torch.float32)
    return target, valid


def component_weights(target: torch.Tensor, reference_size: float, max_weight: float) -> torch.Tensor:
    """Per-voxel weights that give each connected nodule component of a sample about the same total weight.

    ``target``: (B, 1, *spatial) 0/1. A component of n voxels (touching voxels, corners included) gets
    ``clip(reference_size / n, 1, max_weight)`` on its voxels; background keeps 1. So a component smaller than
    ``reference_size`` voxels counts as much as one of that size (up to ``max_weight`` times its own), larger ones
    as themselves. Same shape and device as ``target``, float32."""
    mask = target.detach().cpu().numpy() > 0.5
    weights = np.ones(mask.shape, np.float32)
    structure = ndimage.generate_binary_structure(mask.ndim - 2, mask.ndim - 2)
    for b in range(mask.shape[0]):
        labels, n = ndimage.label(mask[b, 0], structure)
        if n:
            sizes = np.bincount(labels.ravel())[1:].astype(np.float32)
            per_label = np.concatenate([[1.0], np.clip(reference_size / sizes, 1.0, max_weight)]).astype(np.float32)
            weights[b, 0] = per_label[labels]
    return torch.from_numpy(weights).to(target.device)


class MaskedDiceBCELoss(torch.nn.Module):
    """Soft Dice (over the whole batch, sigmoid) + binary cross-entropy, both blind to ignored voxels.

    ``pos_weight`` > 1 weighs nodule voxels up in the cross-entropy. ``balance_size`` > 0 (voxels, e.g. a 10 mm
    disc at 1.5 mm pixels: about 35) weighs each nodule component smaller than that up to count as one of that
    size, at most ``balance_max_weight`` times (:func:`component_weights`), in both terms: the batch's large
    nodules then no longer drown its small ones (0: off). Returns a scalar tensor.
    """

    def __init__(self, ignore_value: int = IGNORE_LABEL, dice_weight: float = 1.0, bce_weight: float = 1.0,
                 pos_weight: float = 1.0, smooth: float = 1e-5, balance_size: float = 0.0,
                 balance_max_weight: float = 10.0) -> None:
        super().__init__()
        self.ignore_value = ignore_value
        self.dice_weight, self.bce_weight = float(dice_weight), float(bce_weight)
        self.pos_weight = float(pos_weight)
        self.smooth = float(smooth)
        if balance_size < 0 or balance_max_weight < 1:
            raise ValueError(f"balance_size must be >= 0 and balance_max_weight >= 1, got {balance_size}, "
                             f"{balance_max_weight}")
        self.balance_size, self.balance_max_weight = float(balance_size), float(balance_max_weight)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if logits.shape != label.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and label {tuple(label.shape)} differ in shape")
        target, valid = split_label(label, self.ignore_value)
        logits = logits.float()
        if self.balance_size > 0:   # the component weights ride on the mask (target is 0 wherever valid is 0)
            valid = valid * component_weights(target, self.balance_size, self.balance_max_weight)
        weight = valid * (1.0 + (self.pos_weight - 1.0) * target)
        bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
        bce = bce / weight.sum().clamp_min(1.0)
        prob = torch.sigmoid(logits) * valid
        inter = (prob * target).sum()
        dice = 1.0 - (2.0 * inter + self.smooth) / (prob.sum() + (target * valid).sum() + self.smooth)
        return self.bce_weight * bce + self.dice_weight * dice


