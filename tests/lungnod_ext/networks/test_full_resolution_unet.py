"""FullResolutionUNet: with 0 channels exactly FlexibleUNet; with a full-resolution skip the same shapes, the
output layer still last (init_output_prior), trainable channels-last like the bundle's network."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import FlexibleUNet

from lungnod_ext.networks.full_resolution_unet import FullResolutionUNet
from lungnod_ext.networks.network_setup import init_output_prior, prepare_for_training

DECODER = (64, 32, 16, 16, 8)


def test_zero_channels_is_flexible_unet():
    torch.manual_seed(0)
    plain = FlexibleUNet(3, 1, "resnet18", decoder_channels=DECODER).eval()
    torch.manual_seed(0)
    same = FullResolutionUNet(3, 1, "resnet18", full_resolution_channels=0, decoder_channels=DECODER).eval()
    assert list(plain.state_dict()) == list(same.state_dict())
    same.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 64, 96)
    with torch.inference_mode():
        assert torch.equal(plain(x), same(x))


def test_skip_adds_one_branch_and_keeps_shapes_2d_and_3d():
    plain = FlexibleUNet(3, 1, "resnet18", decoder_channels=DECODER)
    net = FullResolutionUNet(3, 1, "resnet18", full_resolution_channels=16, decoder_channels=DECODER)
    assert list(net._modules) == ["encoder", "decoder", "full_resolution", "segmentation_head"]
    # branch: 3 -> 16 -> 16 (3 x 3, no bias) + 2 batch norms; last block: 16 more input channels into its first conv
    extra = 3 * 16 * 9 + 16 * 16 * 9 + 2 * 2 * 16 + 16 * DECODER[-1] * 9
    assert sum(p.numel() for p in net.parameters()) - sum(p.numel() for p in plain.parameters()) == extra
    net.eval()
    with torch.inference_mode():
        assert net(torch.rand(1, 3, 96, 64)).shape == (1, 1, 96, 64)
        net3d = FullResolutionUNet(1, 2, "resnet18", spatial_dims=3, full_resolution_channels=4,
                                   decoder_channels=DECODER).eval()
        assert net3d(torch.rand(1, 1, 32, 64, 32)).shape == (1, 2, 32, 64, 32)
    with pytest.raises(ValueError, match="full_resolution_channels"):
        FullResolutionUNet(3, 1, "resnet18", full_resolution_channels=-1)


def test_output_prior_still_sets_the_segmentation_head():
    net = init_output_prior(FullResolutionUNet(3, 1, "resnet18", decoder_channels=DECODER), 0.01)
    head = net.segmentation_head[0]
    assert torch.allclose(head.bias, torch.logit(torch.tensor([0.01])))
    assert not torch.allclose(net.full_resolution.conv_1.conv.weight, torch.zeros(()))


def test_trains_channels_last_and_the_branch_learns():
    torch.manual_seed(0)
    net = prepare_for_training(FullResolutionUNet(3, 1, "resnet18", decoder_channels=DECODER), "cpu", True)
    before = net.full_resolution.conv_0.conv.weight.detach().clone()
    x, y = torch.rand(4, 3, 64, 64), (torch.rand(4, 1, 64, 64) > 0.9).float()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    assert not torch.equal(before, net.full_resolution.conv_0.conv.weight)
