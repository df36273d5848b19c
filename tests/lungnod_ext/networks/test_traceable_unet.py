"""TraceableFlexibleUNet: MONAI's FlexibleUNet with ResNet "A" shortcuts that TorchScript tracing follows
(the segmentation bundle's network_def; lungnod_ext.networks.traceable_unet)."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import FlexibleUNet

from lungnod_ext.networks.traceable_unet import TraceableFlexibleUNet, ZeroPadShortcut


def _pair(in_channels, backbone, spatial_dims):
    torch.manual_seed(0)
    monai_net = FlexibleUNet(in_channels, 1, backbone, pretrained=False, spatial_dims=spatial_dims)
    ours = TraceableFlexibleUNet(in_channels, 1, backbone, pretrained=False, spatial_dims=spatial_dims)
    assert list(ours.state_dict()) == list(monai_net.state_dict())      # the shortcut holds no weights
    ours.load_state_dict(monai_net.state_dict())
    return monai_net, ours


@pytest.mark.parametrize("spatial_dims,shape", [(2, (2, 3, 64, 64)), (3, (1, 1, 32, 32, 32))])
def test_same_network_and_a_trace_that_holds_for_other_inputs(spatial_dims, shape):
    monai_net, ours = _pair(shape[1], "resnet18", spatial_dims)
    assert sum(isinstance(m, ZeroPadShortcut) for m in ours.modules()) == 3      # layers 2-4 downsample
    monai_net.eval(), ours.eval()
    g = torch.Generator().manual_seed(1)
    traced_on, x = torch.rand(shape, generator=g), 4 * torch.rand(shape, generator=g)
    with torch.no_grad():
        expected = monai_net(x)
        assert torch.equal(ours(x), expected)
        ours_traced = torch.jit.trace(ours, traced_on)
        monai_traced = torch.jit.trace(monai_net, traced_on)
        assert torch.equal(ours_traced(x), expected)
        # MONAI's own trace keeps the residual of the example input (``out.data``): wrong on any other input
        assert not torch.allclose(monai_traced(x), expected, rtol=0, atol=1e-6)


def test_training_gradients_unchanged_and_no_shortcut_for_bottleneck_encoders():
    monai_net, ours = _pair(3, "resnet18", 2)
    x, y = torch.rand(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.7).float()
    for net in (monai_net, ours):
        torch.nn.functional.binary_cross_entropy_with_logits(net(x), y).backward()
    grads = dict(monai_net.named_parameters())
    assert all(torch.allclose(p.grad, grads[k].grad, atol=1e-6) for k, p in ours.named_parameters())
    _, resnet50 = _pair(1, "resnet50", 2)                                     # shortcut "B": convolutions
    assert not any(isinstance(m, ZeroPadShortcut) for m in resnet50.modules())
