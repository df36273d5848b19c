"""The stage-2 CNN: shapes in 2D and 3D, any patch size, TorchScript equality."""

from __future__ import annotations

import pytest
import torch

from lungnod_ext.networks.classifier import NoduleCNN


@pytest.mark.parametrize("dims,shape", [(2, (3, 1, 64, 64)), (3, (2, 1, 32, 32, 32)), (3, (1, 1, 48, 40, 36))])
def test_output_shape(dims, shape):
    net = NoduleCNN(spatial_dims=dims).eval()
    with torch.no_grad():
        out = net(torch.rand(shape))
    assert out.shape == (shape[0], 1) and torch.isfinite(out).all()


@pytest.mark.parametrize("dims", [2, 3])
def test_torchscript_matches(dims):
    torch.manual_seed(0)
    net = NoduleCNN(spatial_dims=dims).eval()
    x = torch.rand((2, 1) + (32,) * dims)
    scripted = torch.jit.script(net)
    traced = torch.jit.trace(net, x)
    with torch.no_grad():
        ref = net(x)
        torch.testing.assert_close(scripted(x), ref, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(traced(x), ref, atol=1e-6, rtol=1e-5)


def test_bad_dims():
    with pytest.raises(ValueError, match="spatial_dims"):
        NoduleCNN(spatial_dims=4)


def test_learns_a_bright_blob(blob_classifier):
    """A few steps separate patches with a blob from patches without (the CNN can learn)."""
    net, x, y, first, last = blob_classifier
    with torch.no_grad():
        acc = ((net(x) > 0).float() == y).float().mean().item()
    assert last < 0.5 * first and acc == 1.0
