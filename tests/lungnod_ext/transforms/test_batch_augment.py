"""RandomBatchAugmentation: each augmentation equals the MONAI transform it replaces, drawn per sample with its
probability, reproducible by seed, on 2D and 3D batches, and usable as a SupervisedTrainer's prepare_batch."""

from __future__ import annotations

import pytest
import torch
from monai.transforms import AdjustContrast, Rotate

from lungnod_ext.transforms.batch_augment import RandomBatchAugmentation

OFF = dict(flip_prob=0.0, rotate_prob=0.0, intensity_prob=0.0, noise_prob=0.0)


def _batch(n=8, shape=(5, 32, 32), seed=0) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


def test_all_off_is_the_identity_and_the_label_passes():
    x = _batch()
    label = torch.arange(8.0).view(8, 1)
    image, out_label = RandomBatchAugmentation(**OFF)({"image": x, "label": label})
    assert torch.equal(image, x)
    assert torch.equal(out_label, label)


def test_flips_with_probability_one_flip_both_in_plane_axes():
    x = _batch()
    y = RandomBatchAugmentation(**{**OFF, "flip_prob": 1.0}).augment(x)
    assert torch.equal(y, x.flip(-1).flip(-2))


def test_each_flip_is_drawn_per_sample_at_its_probability():
    x = _batch(n=2000, shape=(1, 4, 4))
    y = RandomBatchAugmentation(**{**OFF, "flip_prob": 0.5}, seed=3).augment(x)
    unchanged = (y == x).flatten(1).all(1).float().mean().item()
    assert 0.20 <= unchanged <= 0.30                      # neither axis flipped: 0.5 * 0.5


def test_rotation_matches_monai_rotate_at_the_same_angle():
    x = torch.zeros(1, 2, 48, 40)                          # not square: the turn must stay rigid
    x[0, 0, 10:22, 8:16] = 1.0
    x[0, 1, 30:40, 20:34] = 0.5
    aug = RandomBatchAugmentation(**OFF)
    for angle in (0.26, -0.2, 0.05):
        ours = aug._rotate(x, torch.tensor([angle]))[0]
        # MONAI's positive angle turns the other way; the drawn range is symmetric
        monai = Rotate(-angle, padding_mode="border")(x[0])
        assert torch.allclose(ours, torch.as_tensor(monai), atol=1e-4)


def test_rotation_is_drawn_within_its_range():
    x = torch.zeros(400, 1, 33, 33)
    x[:, 0, 16, 4:29] = 1.0                                  # a horizontal bar through the centre
    y = RandomBatchAugmentation(**{**OFF, "rotate_prob": 1.0, "rotate_range": 0.2618}, seed=1).augment(x)
    moved = (y - x).abs().flatten(1).sum(1)
    assert (moved > 1.0).float().mean() > 0.9               # nearly every bar turned
    # the bar's end rows: at most 12 px * sin(15 deg) = 3.1 px off the centre row
    rows = torch.arange(33.0).view(1, 33, 1)
    weight = y[:, 0]
    mean_row = (weight * rows).sum((1, 2)) / weight.sum((1, 2))
    assert torch.allclose(mean_row, torch.full_like(mean_row, 16.0), atol=0.2)
    ends = (weight[:, :, 4:6] * rows).sum((1, 2)) / weight[:, :, 4:6].sum((1, 2)).clamp_min(1e-6)
    assert (ends - 16.0).abs().max() <= 3.5


def test_contrast_matches_monai_adjust_contrast_per_sample():
    x = _batch(n=4) * torch.tensor([1.0, 0.5, 0.2, 2.0]).view(4, 1, 1, 1)
    y = RandomBatchAugmentation(**{**OFF, "intensity_prob": 1.0}, scale_factor=0.0, gamma=(0.8, 0.8)).augment(x)
    for i in range(4):
        assert torch.allclose(y[i], torch.as_tensor(AdjustContrast(0.8)(x[i])), atol=1e-5)


def test_intensity_scale_is_one_factor_per_sample_within_its_range():
    x = _batch(n=200) + 0.5
    y = RandomBatchAugmentation(**{**OFF, "intensity_prob": 1.0}, scale_factor=0.1, gamma=(1.0, 1.0), seed=2).augment(x)
    ratio = (y / x).flatten(1)
    assert torch.allclose(ratio.min(1).values, ratio.max(1).values, atol=1e-4)
    assert 0.9 - 1e-5 <= ratio.min() and ratio.max() <= 1.1 + 1e-5
    assert ratio[:, 0].std() > 0.03                          # uniform on +-0.1: std 0.058


def test_noise_std_is_drawn_up_to_its_maximum():
    x = torch.zeros(500, 1, 32, 32)
    y = RandomBatchAugmentation(**{**OFF, "noise_prob": 0.3}, noise_std=0.02, seed=4).augment(x)
    std = y.flatten(1).std(1)
    noisy = std > 0
    assert 0.24 <= noisy.float().mean() <= 0.36
    assert std.max() <= 0.021 and std[noisy].mean() == pytest.approx(0.01, abs=0.002)


def test_the_seed_sets_the_stream():
    x = _batch()
    a = RandomBatchAugmentation(seed=7).augment(x)
    assert torch.equal(a, RandomBatchAugmentation(seed=7).augment(x))
    assert not torch.equal(a, RandomBatchAugmentation(seed=8).augment(x))
    aug = RandomBatchAugmentation(seed=7)
    assert not torch.equal(aug.augment(x), aug.augment(x))   # the stream goes on between batches


def test_3d_batches_turn_in_plane_and_keep_depth():
    x = torch.zeros(2, 1, 3, 24, 24)
    x[:, 0, 1, 6:12, 4:20] = 1.0
    aug = RandomBatchAugmentation(spatial_dims=3, **{**OFF, "rotate_prob": 1.0})
    y = aug._rotate(x, torch.tensor([0.2, -0.2]))
    assert y.shape == x.shape
    assert torch.equal(y[:, :, 0], x[:, :, 0]) and torch.equal(y[:, :, 2], x[:, :, 2])   # empty slices stay empty
    plane = RandomBatchAugmentation(**OFF)._rotate(x[:, :, 1], torch.tensor([0.2, -0.2]))
    assert torch.allclose(y[:, :, 1], plane, atol=1e-5)
    with pytest.raises(ValueError, match="expected a"):
        aug.augment(torch.zeros(2, 1, 24, 24))


@pytest.mark.parametrize("bad", [dict(spatial_dims=1), dict(flip_prob=1.5), dict(gamma=(1.2, 0.8)),
                                 dict(enabled="false")])   # the string `monai.bundle run --batch_augmentation false` gives
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match="RandomBatchAugmentation"):
        RandomBatchAugmentation(**bad)


def test_disabled_passes_the_batch_through():
    x = _batch()
    image, _ = RandomBatchAugmentation(enabled=False)({"image": x, "label": torch.zeros(8, 1)})
    assert torch.equal(image, x)
