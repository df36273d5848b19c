"""Evidence maps (occlusion sensitivity, GradCAM) point at what makes a patch a nodule; PNGs are written and readable."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from lungnod_ext.classifier import NoduleCNN
from lungnod_ext.explain import evidence_maps, last_conv_layer, write_evidence_png


def test_evidence_peaks_on_the_blob(blob_classifier):
    net, x, y, _, _ = blob_classifier
    positives = x[y[:, 0] == 1][:4]
    maps = evidence_maps(net, positives)
    assert maps.shape == (4, 32, 32) and np.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    for m in maps:
        peak = np.unravel_index(np.argmax(m), m.shape)
        assert peak[0] < 16 and peak[1] < 16, peak  # top-left quadrant, where the blob is
        assert m[:16, :16].mean() > m[16:, 16:].mean()


def test_3d_maps_and_png(tmp_path):
    torch.manual_seed(0)
    net = NoduleCNN(spatial_dims=3).eval()
    assert last_conv_layer(net).startswith("features.3")
    patches = torch.rand(2, 1, 32, 32, 32)
    grad = evidence_maps(net, patches, method="gradcam")
    assert grad.shape == (2, 32, 32, 32) and grad.min() >= 0 and grad.max() <= 1
    maps = evidence_maps(net, patches)  # occlusion: the central axial slice
    assert maps.shape == (2, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    assert evidence_maps(net, torch.zeros(0, 1, 32, 32, 32)).shape == (0, 32, 32, 32)
    path = write_evidence_png(np.full((32, 32, 32), -600.0), maps[0], tmp_path / "e.png", "cand 1 p=0.90")
    img = cv2.imread(str(path))
    assert img.shape == (192, 192 * 2 + 4, 3)
