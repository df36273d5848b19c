"""prepare_for_inference: channels-last weights for 2-D and 3-D convolution nets, same outputs, eval mode;
prepare_for_training: the same layout on request for training, the same course of training."""

from __future__ import annotations

import torch
from monai.networks.nets import FlexibleUNet, UNet

from lungnod_ext.networks.classifier import NoduleCNN
from lungnod_ext.networks.network_setup import memory_format_for, prepare_for_inference, prepare_for_training


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


def _train_steps(channels_last: bool, steps: int = 3) -> tuple[list[float], torch.nn.Module]:
    """``steps`` Adam steps of the segmentation bundle's network (ResNet-18 FlexibleUNet, 3 slab channels) on
    fixed random slabs and masks -> (losses, network)."""
    torch.manual_seed(0)
    net = prepare_for_training(FlexibleUNet(3, 1, "resnet18", pretrained=False, spatial_dims=2), "cpu", channels_last)
    x, target = torch.rand(4, 3, 64, 64), (torch.rand(4, 1, 64, 64) > 0.9).float()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), target)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses, net


def test_training_in_channels_last_follows_the_default_layouts_course():
    plain_losses, plain = _train_steps(channels_last=False)
    fast_losses, fast = _train_steps(channels_last=True)
    assert _conv_weight(plain).is_contiguous() and not _conv_weight(plain).is_contiguous(memory_format=torch.channels_last)
    assert _conv_weight(fast).is_contiguous(memory_format=torch.channels_last)     # still so after the updates
    assert abs(plain_losses[0] - fast_losses[0]) < 1e-5                       # same start, float noise apart
    assert plain_losses[-1] < plain_losses[0] and fast_losses[-1] < fast_losses[0]
    assert all(abs(a - b) < 1e-4 for a, b in zip(plain_losses, fast_losses)), (plain_losses, fast_losses)
    reloaded = FlexibleUNet(3, 1, "resnet18", pretrained=False, spatial_dims=2)   # its checkpoint, default layout
    reloaded.load_state_dict(fast.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(reloaded.eval()(x), fast.eval()(x), atol=1e-4)
