"""lungnod_ext.networks.losses: Dice + BCE blind to the ignore label (LIDC small marks)."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss

from data_prep.training_cohort import IGNORE_LABEL
from lungnod_ext.networks.losses import MaskedDiceBCELoss


def _case():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 16, 16)
    label = (torch.rand(2, 1, 16, 16) > 0.8).float()
    return logits, label


def test_equals_monai_dice_ce_without_ignored_voxels():
    logits, label = _case()
    ours = MaskedDiceBCELoss()(logits, label)
    ref = DiceCELoss(sigmoid=True, batch=True)(logits, label)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_ignored_voxels_do_not_change_the_loss_or_its_gradient():
    logits, label = _case()
    label[0, 0, :4, :4] = IGNORE_LABEL
    loss = MaskedDiceBCELoss()
    base = loss(logits, label)
    changed = logits.clone()
    changed[0, 0, :4, :4] = 20.0                      # a confident "nodule" where the label is ignored
    assert torch.allclose(loss(changed, label), base)
    x = logits.clone().requires_grad_(True)
    loss(x, label).backward()
    assert torch.count_nonzero(x.grad[0, 0, :4, :4]) == 0 and torch.count_nonzero(x.grad) > 100
    # the same confident prediction on background does cost
    label_bg = label.clone()
    label_bg[0, 0, :4, :4] = 0
    assert loss(changed, label_bg) > loss(logits, label_bg) + 0.1


def test_pos_weight_raises_the_cost_of_missed_nodule_voxels():
    logits, label = _case()
    assert MaskedDiceBCELoss(pos_weight=5.0, dice_weight=0.0)(torch.full_like(logits, -3.0), label) > \
        MaskedDiceBCELoss(pos_weight=1.0, dice_weight=0.0)(torch.full_like(logits, -3.0), label)
