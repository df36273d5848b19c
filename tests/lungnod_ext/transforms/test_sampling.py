"""Crop centres per nodule: a 4-voxel nodule drawn as often as a 27,000-voxel one (size_power 0) or 1/6750
as often (1, per voxel); ignored voxels never."""

import numpy as np
import torch
from monai.transforms import RandCropByPosNegLabeld

from lungnod_ext.transforms.sampling import NoduleBalancedIndicesd, nodule_balanced_indices


def _label():
    lab = np.zeros((1, 120, 90, 90), np.float32)
    lab[0, 10:40, 10:40, 10:40] = 1            # 30^3 voxels
    lab[0, 80:82, 60:62, 60] = 1               # 4 voxels
    lab[0, 100:103, 20:23, 20:23] = 255        # ignored (small mark)
    return lab


def test_every_nodule_gets_the_same_share_and_ignored_voxels_none():
    lab = _label()
    fg, bg = nodule_balanced_indices(lab, per_nodule=100, max_background=5000)
    assert fg.shape == (200,) and bg.shape == (5000,)
    z = np.unravel_index(fg, lab.shape[1:])[0]
    assert (z >= 80).sum() == 100 and (z < 40).sum() == 100
    flat = lab[0].reshape(-1)
    assert set(np.unique(flat[fg])) == {1.0}
    assert set(np.unique(flat[bg])) == {0.0}
    again = nodule_balanced_indices(lab, per_nodule=100, max_background=5000)
    assert np.array_equal(again[0], fg) and np.array_equal(again[1], bg)   # deterministic: cacheable


def test_no_nodule_gives_empty_foreground():
    fg, bg = nodule_balanced_indices(np.zeros((1, 8, 8, 8)), max_background=100)
    assert fg.size == 0 and bg.size == 100


def test_crops_centre_on_the_small_nodule_half_of_the_time():
    d = NoduleBalancedIndicesd("label", per_nodule=256)({"image": torch.rand(1, 120, 90, 90),
                                                         "label": torch.tensor(_label())})
    crop = RandCropByPosNegLabeld(["image", "label"], "label", [16, 16, 3], pos=1, neg=0, num_samples=400,
                                  fg_indices_key="label_fg_indices", bg_indices_key="label_bg_indices")
    crop.set_random_state(0)
    out = crop(d)
    assert set(out[0]) == {"image", "label"}               # the index arrays are used up, not collated
    small = np.mean([0 < o["label"][o["label"] == 1].sum().item() <= 4 for o in out])
    assert 0.4 < small < 0.6
    assert all(o["label"][0, 8, 8, 1] == 1 for o in out)   # the centre voxel is a nodule voxel


def test_size_power_one_draws_per_voxel():
    fg, _ = nodule_balanced_indices(_label(), per_nodule=100, max_background=10, size_power=1.0)
    z = np.unravel_index(fg, _label().shape[1:])[0]
    big, small = int((z < 40).sum()), int((z >= 80).sum())
    assert small == 1 and abs(big - round(100 * 27000 / ((27000 + 4) / 2))) <= 1   # counts = 100 x size / mean
