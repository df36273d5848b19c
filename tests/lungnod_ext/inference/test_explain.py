"""Evidence maps (occlusion sensitivity, GradCAM) point at what makes a patch a nodule, for any torch CNN
(a small one defined here, with in-place ReLUs) and for the project's NoduleCNN in 2D and 3D; PNGs are
written and readable."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from lungnod_ext.networks.classifier import NoduleCNN
from lungnod_ext.inference.explain import evidence_maps, last_conv_layer, write_evidence_png


class TinyCNN(nn.Module):
    """Two conv layers with in-place ReLUs, global max pooling, one logit: any CNN a user might bring."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        conv, pool = (nn.Conv2d, nn.MaxPool2d) if dims == 2 else (nn.Conv3d, nn.MaxPool3d)
        self.body = nn.Sequential(conv(1, 6, 3, padding=1), nn.ReLU(inplace=True), pool(2),
                                  conv(6, 12, 3, padding=1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(12, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.amax(self.body(x), dim=tuple(range(2, x.ndim))))


def _blob_data(dims: int, size: int, blob: tuple[slice, ...], n: int = 32, seed: int = 0):
    """Noise patches in [0, 0.2]; every other one (label 1) gets +0.8 in the ``blob`` region."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 1) + (size,) * dims, generator=g) * 0.2
    y = (torch.arange(n) % 2).float()[:, None]
    for i in range(1, n, 2):
        x[(i, 0) + blob] += 0.8
    return x, y


def _train(net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 60) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = ((net(x) > 0).float() == y).float().mean().item()
    assert acc == 1.0, acc
    return net


def _quadrant_means(m: np.ndarray) -> dict[str, float]:
    h, w = m.shape[-2] // 2, m.shape[-1] // 2
    return {"tl": float(m[..., :h, :w].mean()), "tr": float(m[..., :h, w:].mean()),
            "bl": float(m[..., h:, :w].mean()), "br": float(m[..., h:, w:].mean())}


@pytest.fixture(scope="module")
def tiny_2d():
    """TinyCNN trained on 32x32 patches whose evidence is a blob in the bottom-right quadrant."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = _blob_data(2, 32, (slice(20, 28), slice(19, 27)))
    return _train(TinyCNN(2), x, y).eval(), x[y[:, 0] == 1][:4]


@pytest.mark.parametrize("method", ["occlusion", "gradcam"])
def test_any_cnn_map_peaks_in_the_blob_quadrant(tiny_2d, method):
    net, positives = tiny_2d
    maps = evidence_maps(net, positives, method=method)
    assert maps.shape == (4, 32, 32) and maps.dtype == np.float32 and np.isfinite(maps).all()
    assert maps.min() == 0.0 and maps.max() == 1.0
    for m in maps:
        r, c = np.unravel_index(np.argmax(m), m.shape)
        assert r >= 16 and c >= 16, (method, r, c)                 # bottom-right, where the blob is
        q = _quadrant_means(m)
        assert q["br"] > 2 * max(q["tl"], q["tr"], q["bl"]), (method, q)


def test_gradcam_leaves_the_network_as_it_was(tiny_2d):
    net, positives = tiny_2d
    net.train()
    net.requires_grad_(False)           # frozen inference weights: GradCAM still needs gradients
    try:
        before = {k: v.clone() for k, v in net.state_dict().items()}
        maps = evidence_maps(net, positives[:2], method="gradcam")
        assert maps.shape == (2, 32, 32) and maps.max() == 1.0
        assert net.training                                        # mode restored
        assert all(not p.requires_grad for p in net.parameters())
        assert [m.inplace for m in net.modules() if isinstance(m, nn.ReLU)] == [True, True]
        assert all(not m._forward_hooks and not m._backward_hooks for m in net.modules())   # no hook left
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    finally:
        net.requires_grad_(True)
        net.eval()


def test_flat_and_bad_inputs(tiny_2d):
    net, positives = tiny_2d
    flat = evidence_maps(net, torch.zeros(1, 1, 32, 32))          # nothing to find: all-zero map, no NaN
    assert flat.shape == (1, 32, 32) and np.isfinite(flat).all() and 0.0 <= flat.min() <= flat.max() <= 1.0
    assert evidence_maps(net, torch.zeros(0, 1, 32, 32)).shape == (0, 32, 32)
    with pytest.raises(ValueError, match="method"):
        evidence_maps(net, positives, method="saliency")
    with pytest.raises(ValueError, match="patches must be"):
        evidence_maps(net, positives[0])
    with pytest.raises(ValueError, match="not a module"):
        evidence_maps(net, positives, method="gradcam", target_layer="body.99")
    with pytest.raises(ValueError, match="no Conv2d/Conv3d"):
        last_conv_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 1)))
    assert last_conv_layer(net) == "body.3"


def test_any_cnn_3d_maps_point_at_the_blob():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    blob = (slice(5, 12), slice(9, 14), slice(10, 15))             # crosses the central slice 8, bottom-right
    x, y = _blob_data(3, 16, blob)
    net = _train(TinyCNN(3), x, y).eval()
    positives = x[y[:, 0] == 1][:2]
    central = evidence_maps(net, positives)                         # occlusion, central axial slice
    cube = evidence_maps(net, positives, volume=True)
    grad = evidence_maps(net, positives, method="gradcam")
    assert central.shape == (2, 16, 16) and cube.shape == grad.shape == (2, 16, 16, 16)
    for maps in (central, cube, grad):
        assert np.isfinite(maps).all() and maps.min() == 0.0 and maps.max() == 1.0
    for m in central:
        r, c = np.unravel_index(np.argmax(m), m.shape)
        assert r >= 8 and c >= 8, (r, c)
    for m in (*cube, *grad):
        z, r, c = np.unravel_index(np.argmax(m), m.shape)
        assert 3 <= z <= 13 and r >= 8 and c >= 8, (z, r, c)
        q = _quadrant_means(m)
        assert q["br"] > 2 * max(q["tl"], q["tr"], q["bl"]), q


def test_nodule_cnn_2d_evidence_peaks_on_the_blob(blob_classifier):
    """The project's classifier, trained on a top-left blob (shared fixture): both methods point there."""
    net, x, y, _, _ = blob_classifier
    positives = x[y[:, 0] == 1][:4]
    occlusion = evidence_maps(net, positives)
    assert occlusion.shape == (4, 32, 32) and np.isfinite(occlusion).all()
    assert occlusion.min() >= 0.0 and occlusion.max() <= 1.0
    for m in occlusion:
        peak = np.unravel_index(np.argmax(m), m.shape)
        assert peak[0] < 16 and peak[1] < 16, peak                  # top-left quadrant, where the blob is
    gradcam = evidence_maps(net, positives, method="gradcam")       # coarser (16x16 features, upsampled)
    assert gradcam.shape == (4, 32, 32) and gradcam.min() >= 0.0 and gradcam.max() <= 1.0
    for m in (*occlusion, *gradcam):
        q = _quadrant_means(m)
        assert q["tl"] > 1.5 * max(q["tr"], q["bl"], q["br"]), q


def test_nodule_cnn_3d_maps_and_png(tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = NoduleCNN(spatial_dims=3).eval()
    assert last_conv_layer(net) == "features.3.3"
    patches = torch.rand(2, 1, 32, 32, 32)
    grad = evidence_maps(net, patches, method="gradcam")
    assert grad.shape == (2, 32, 32, 32) and np.isfinite(grad).all() and grad.min() >= 0 and grad.max() <= 1
    maps = evidence_maps(net, patches)  # occlusion: the central axial slice
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert evidence_maps(net, torch.zeros(0, 1, 32, 32, 32)).shape == (0, 32, 32)
    assert evidence_maps(net, torch.zeros(0, 1, 32, 32, 32), method="gradcam").shape == (0, 32, 32, 32)
    path = write_evidence_png(np.full((32, 32, 32), -600.0), grad[0], tmp_path / "e.png", "cand 1 p=0.90")
    img = cv2.imread(str(path))
    assert img.shape == (192, 192 * 2 + 4, 3)


def test_png_shows_the_ct_and_the_heat_where_the_evidence_is(tmp_path):
    patch = np.full((32, 32), -850.0)
    patch[20:28, 19:27] = 40.0                                      # a soft-tissue blob on lung
    evidence = np.zeros((32, 32), np.float32)
    evidence[20:28, 19:27] = 1.0
    path = write_evidence_png(patch, evidence, tmp_path / "sub" / "cand.png", size=128)
    rgb = cv2.imread(str(path))[:, :, ::-1].astype(int)
    assert rgb.shape == (128, 2 * 128 + 4, 3)
    assert not list((tmp_path / "sub").glob(".*part"))
    left, right = rgb[:, :128], rgb[:, 132:]
    assert (left[..., 0] == left[..., 1]).all() and (left[..., 1] == left[..., 2]).all()   # plain grey CT
    assert left[96, 92, 0] > left[20, 20, 0] + 100                  # blob brighter than lung in the lung window
    hot, cold = right[96, 92], right[20, 20]                          # inside the blob / lung far from it
    assert hot[0] > hot[2] + 50                                       # red-ish where the evidence is 1
    assert cold[2] > cold[0]                                          # blue-ish where it is 0
    volume = np.repeat(patch[None], 5, axis=0)
    path3 = write_evidence_png(volume, np.repeat(evidence[None], 5, axis=0), tmp_path / "cand3d.png", size=128)
    np.testing.assert_array_equal(cv2.imread(str(path3)), cv2.imread(str(path)))   # 3D: its central slice
