"""Fixtures shared by the lungnod_ext tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def blob_classifier():
    """A 2D NoduleCNN trained until it separates 32x32 patches with a bright blob in the top-left quadrant
    (label 1) from plain noise (label 0). Returns (net in eval mode, x, y, first loss, last loss)."""
    from lungnod_ext.networks.classifier import NoduleCNN

    torch.manual_seed(0)
    net = NoduleCNN(spatial_dims=2, channels=(8, 16), dropout=0.0)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    x = torch.rand(32, 1, 32, 32) * 0.2
    y = (torch.arange(32) % 2).float()[:, None]
    x[y[:, 0] == 1, :, 4:12, 4:12] += 0.8
    loss_fn = torch.nn.BCEWithLogitsLoss()
    first = loss_fn(net(x), y).item()
    for _ in range(40):
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
    with torch.no_grad():  # settle batch-norm running statistics on the final weights
        for _ in range(20):
            net(x)
    return net.eval(), x, y, first, loss.item()


@pytest.fixture
def sphere_volume():
    """A factory: spacing (i, j, k) mm -> (HU volume (z, y, x), Geometry) of a 120 mm field of air (-900 HU)
    holding a 40 HU sphere (by default 6 mm in radius at LPS (10, -20, 30)), whatever the voxel size."""
    from data_prep.coords import Geometry

    def make(spacing, centre_lps=(10.0, -20.0, 30.0), radius=6.0):
        shape = tuple(int(round(120 / s)) for s in spacing)
        g = Geometry(origin=(-50.0, -80.0, -30.0), spacing=spacing, shape=shape)
        zyx = np.indices(g.shape_zyx).reshape(3, -1).T
        world = g.voxel_to_world(zyx[:, ::-1].astype(float))
        inside = np.linalg.norm(world - np.asarray(centre_lps), axis=1) <= radius
        hu = np.where(inside, 40.0, -900.0).reshape(g.shape_zyx).astype(np.float32)
        return hu, g

    return make
