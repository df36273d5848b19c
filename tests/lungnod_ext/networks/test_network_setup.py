"""prepare_for_inference: channels-last weights for 2-D and 3-D convolution nets, same outputs, eval mode."""

from __future__ import annotations

import torch
from monai.networks.nets import FlexibleUNet, UNet

from lungnod_ext.networks.classifier import NoduleCNN
from lungnod_ext.networks.network_setup import memory_format_for, prepare_for_inference


def _conv_weight(net: torch.nn.Module) -> torch.Tensor:
    """A convolution weight whose layout tells the formats apart (more than one input channel)."""
    return next(p for p in net.parameters() if p.ndim >= 4 and p.shape[1] > 1)


def test_2d_and_3d_nets_get_channels_last_and_give_the_same_output():
    torch.manual_seed(0)
    cases = [(FlexibleUNet(1, 1, "resnet18", pretrained=False, spatial_dims=2), torch.rand(2, 1, 64, 64),
              torch.channels_last),
             (UNet(3, 1, 1, (8, 16, 32), (2, 2), num_res_units=1, norm="batch"), torch.rand(1, 1, 32, 32, 32),
              torch.channels_last_3d)]
    for net, x, expected_format in cases:
        net.eval()
        with torch.inference_mode():
            before = net(x)
        fast = prepare_for_inference(net, "cpu")
        assert memory_format_for(fast) == expected_format and not fast.training
        assert _conv_weight(fast).is_contiguous(memory_format=expected_format)
        with torch.inference_mode():
            after = fast(x)
        assert before.shape == after.shape
        assert torch.allclose(before, after, atol=1e-5), float((before - after).abs().max())


def test_loading_a_checkpoint_keeps_the_layout():
    torch.manual_seed(1)
    trained = NoduleCNN(spatial_dims=2)
    net = prepare_for_inference(NoduleCNN(spatial_dims=2))
    net.load_state_dict(trained.state_dict())
    assert _conv_weight(net).is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(4, 1, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(net(x), trained.eval()(x), atol=1e-5)


def test_nets_without_convolutions_are_left_contiguous():
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    assert memory_format_for(mlp) == torch.contiguous_format
    assert prepare_for_inference(mlp, channels_last=True)[0].weight.is_contiguous()
    plain = prepare_for_inference(FlexibleUNet(1, 1, "resnet18", pretrained=False, spatial_dims=2), channels_last=False)
    assert _conv_weight(plain).is_contiguous() and not _conv_weight(plain).is_contiguous(memory_format=torch.channels_last)
