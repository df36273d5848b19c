"""lungnod_ext.transforms.slab: neighbouring slices as channels for the 2-D U-Net (training crops and inference)."""

from __future__ import annotations

import pytest
import torch

from lungnod_ext.transforms.slab import SlabToChannelsd, slab_channels


def test_slab_to_channels_orders_slices_and_keeps_centre_label():
    image = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(1, 2, 3, 3)   # (1, H, W, 3): value encodes k
    label = torch.zeros(1, 2, 3, 3)
    label[..., 1] = 1.0
    label[..., 2] = 255.0
    out = SlabToChannelsd("image", "label", slab=3)({"image": image, "label": label})
    assert out["image"].shape == (3, 2, 3) and out["label"].shape == (1, 2, 3)
    for k in range(3):
        assert torch.equal(out["image"][k], image[0, ..., k])
    assert torch.equal(out["label"], torch.ones(1, 2, 3))                       # the centre slice only


def test_slab_to_channels_rejects_wrong_depth():
    with pytest.raises(ValueError, match=r"must be \(1, H, W, 3\)"):
        SlabToChannelsd("image", slab=3)({"image": torch.zeros(1, 4, 4, 5)})
    with pytest.raises(ValueError, match="odd"):
        SlabToChannelsd("image", slab=2)


def test_slab_channels_repeat_edge_slices():
    vol = torch.arange(4, dtype=torch.float32).reshape(1, 1, 1, 1, 4).expand(1, 1, 2, 2, 4)
    x = slab_channels(vol, 0, 4, 3)                                             # (4, 3, 2, 2)
    assert x.shape == (4, 3, 2, 2)
    assert x[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
