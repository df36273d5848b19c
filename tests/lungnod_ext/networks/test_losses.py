"""lungnod_ext.networks.losses: Dice + BCE blind to the ignore label (LIDC small marks)."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss

from data_prep.training_cohort import IGNORE_LABEL
from lungnod_ext.networks.losses import MaskedDiceBCELoss, component_weights


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


def test_component_weights_give_small_components_the_weight_of_the_reference_size():
    target = torch.zeros(2, 1, 32, 32)
    target[0, 0, 2:12, 2:12] = 1      # 100 voxels: larger than the reference, keeps 1
    target[0, 0, 20, 20] = 1          # 1 voxel: 35x, capped at 10
    target[1, 0, 5:7, 5:7] = 1        # 4 voxels: 35 / 4
    w = component_weights(target, reference_size=35, max_weight=10)
    assert w.shape == target.shape and w.dtype == torch.float32
    assert w[0, 0, 5, 5] == 1 and w[0, 0, 20, 20] == 10 and w[1, 0, 5, 5] == 8.75
    assert w[0, 0, 15, 15] == 1 and w[1, 0, 0, 0] == 1    # background
    assert torch.all(component_weights(torch.zeros(1, 1, 4, 4, 4), 35, 10) == 1)   # 3-D, no component


def test_balance_makes_a_missed_small_nodule_cost_more_beside_a_found_large_one():
    """A batch where the large nodule is found and the small one is missed: balanced, the miss costs more;
    off (balance_size 0) the loss is the plain one to the last bit."""
    label = torch.zeros(1, 1, 32, 32)
    label[0, 0, 2:14, 2:14] = 1
    label[0, 0, 25:27, 25:27] = 1
    label[0, 0, 30, 0] = IGNORE_LABEL
    logits = torch.full_like(label, -6.0)
    logits[0, 0, 2:14, 2:14] = 6.0     # large one found, small one missed
    plain = MaskedDiceBCELoss()(logits, label)
    assert torch.equal(MaskedDiceBCELoss(balance_size=0)(logits, label), plain)
    balanced = MaskedDiceBCELoss(balance_size=35, balance_max_weight=10)(logits, label)
    assert balanced > 1.5 * plain
    found = logits.clone()
    found[0, 0, 25:27, 25:27] = 6.0
    assert MaskedDiceBCELoss(balance_size=35)(found, label) < 0.1 * balanced
    with pytest.raises(ValueError, match="balance"):
        MaskedDiceBCELoss(balance_size=-1)
