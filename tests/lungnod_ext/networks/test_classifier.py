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


@pytest.mark.parametrize("dims", [2, 3])
def test_centre_features(dims):
    """centre_features: the head also takes the central cells of the last map (2 x channels in), so a
    blob at the patch centre and the same blob in a corner give different head inputs; TorchScript-able."""
    torch.manual_seed(0)
    net = NoduleCNN(spatial_dims=dims, channels=(8, 16), centre_features=True).eval()
    assert net.head[1].in_features == 32
    size = (16,) * dims
    centre, corner = torch.zeros((1, 1) + size), torch.zeros((1, 1) + size)
    centre[(0, 0) + (slice(6, 10),) * dims] = 1.0
    corner[(0, 0) + (slice(0, 4),) * dims] = 1.0
    with torch.no_grad():
        f_centre, f_corner = net.features(centre), net.features(corner)
        out = net(torch.cat([centre, corner]))
        torch.testing.assert_close(torch.jit.script(net)(torch.cat([centre, corner])), out, atol=1e-6, rtol=1e-5)
    assert out.shape == (2, 1)
    # the centre cells of the blob-at-centre map hold more of it than those of the blob-in-a-corner map
    from lungnod_ext.networks.classifier import _centre
    assert _centre(f_centre).sum() > _centre(f_corner).sum()
    assert _centre(torch.zeros((1, 2) + (4,) * dims)).shape == (1, 2) + (2,) * dims
    assert _centre(torch.zeros((1, 2) + (1,) * dims)).shape == (1, 2) + (1,) * dims


def test_ensemble_is_the_mean_logit_of_its_members(tmp_path):
    from lungnod_ext.networks.classifier import NoduleCNNEnsemble, ensemble_state_dict
    from lungnod_ext.networks.weights import checkpoint_members

    torch.manual_seed(0)
    singles = [NoduleCNN(spatial_dims=2, in_channels=5).eval() for _ in range(3)]
    x = torch.randn(4, 5, 64, 64)
    merged = ensemble_state_dict([singles[0].state_dict(), {"model": singles[1].state_dict()}, singles[2].state_dict()])
    ens = NoduleCNNEnsemble(3, spatial_dims=2, in_channels=5).eval()
    ens.load_state_dict(merged, strict=True)
    with torch.no_grad():
        expected = torch.stack([m(x) for m in singles]).mean(0)
        assert ens(x).shape == (4, 1)
        assert torch.allclose(ens(x), expected, atol=1e-6)
        assert torch.allclose(torch.jit.script(ens)(x), expected, atol=1e-6)     # ckpt_export scripts it
    # a single NoduleCNN checkpoint (what train.json saves) is an ensemble of one
    one = NoduleCNNEnsemble(1, spatial_dims=2, in_channels=5).eval()
    one.load_state_dict(singles[0].state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(one(x), singles[0](x))
    with pytest.raises(RuntimeError, match="Missing key"):
        NoduleCNNEnsemble(2, spatial_dims=2, in_channels=5).load_state_dict(singles[0].state_dict(), strict=True)
    with pytest.raises(ValueError, match="already an ensemble"):
        ensemble_state_dict([merged])
    with pytest.raises(ValueError, match="members"):
        NoduleCNNEnsemble(0)
    torch.save({"model": merged}, tmp_path / "ens.pt")
    torch.save({"model": singles[0].state_dict()}, tmp_path / "one.pt")
    assert checkpoint_members(tmp_path / "ens.pt") == 3
    assert checkpoint_members(tmp_path / "one.pt") == 1
    assert checkpoint_members(tmp_path / "not_trained_yet.pt") == 1
