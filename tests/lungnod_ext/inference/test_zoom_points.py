"""lungnod_ext.inference.zoom_points: the strongest dot-filter peaks of the lung, carried as world points."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor

from lungnod_ext.inference.zoom_points import ZOOM_POINTS_KEY, AddZoomPointsd, blob_peaks, zoom_points_mask


def _phantom():
    """(z, y, x) 40 x 80 x 80 at 2.0 x 1.5 x 1.5 mm: lung at -850 HU, a 7 mm ball of 0 HU centred at voxel
    (20, 30, 30), and a 3 mm wide vessel (0 HU) along y at z 20, x 60."""
    spacing = np.array([2.0, 1.5, 1.5])
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip((40, 80, 80), spacing)], indexing="ij")
    hu = np.full((40, 80, 80), -850.0, np.float32)
    hu[(z - 40.0) ** 2 + (y - 45.0) ** 2 + (x - 45.0) ** 2 <= 3.5 ** 2] = 0.0
    hu[((z - 40.0) ** 2 + (x - 90.0) ** 2 <= 1.5 ** 2)] = 0.0
    return hu, spacing


def test_the_strongest_peak_is_the_ball_not_the_vessel():
    """One peak: the ball's centre (a vessel answers the dot filter far less); outside the lung mask
    nothing is searched; an empty mask or max_peaks 0 gives none."""
    hu, spacing = _phantom()
    assert blob_peaks(hu, spacing, np.ones(hu.shape, bool), max_peaks=1).tolist() == [[20, 30, 30]]
    lung = np.ones(hu.shape, bool)
    lung[:, :, :45] = False
    assert [20, 30, 30] not in blob_peaks(hu, spacing, lung, max_peaks=5).tolist()
    assert len(blob_peaks(hu, spacing, np.zeros(hu.shape, bool))) == 0
    assert len(blob_peaks(hu, spacing, None, max_peaks=0)) == 0


def test_points_mask_is_a_box_of_the_asked_half_size_on_any_grid():
    """A world point -> +-8 mm boxes: 5 px of 1.5 mm, 4 slices of 2 mm; on a grid shifted by 12 px (a crop)
    the same point lands 12 px lower; NaN rows and points off the grid add nothing."""
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    affine[:3, 3] = [-50.0, -60.0, 100.0]
    point = affine @ np.array([30, 30, 20, 1.0])
    pts = np.array([point[:3], [np.nan] * 3, [1e4, 1e4, 1e4]])
    mask = zoom_points_mask(pts, affine, (80, 80, 40))
    idx = np.argwhere(mask)
    assert idx.min(axis=0).tolist() == [25, 25, 16] and idx.max(axis=0).tolist() == [35, 35, 24]
    cropped = affine.copy()
    cropped[:3, 3] += affine[:3, :3] @ np.array([12, 12, 0])
    assert np.argwhere(zoom_points_mask(pts, cropped, (60, 60, 40))).min(axis=0).tolist() == [13, 13, 16]
    assert not zoom_points_mask(np.full((4, 3), np.nan), affine, (80, 80, 40)).any()


def test_transform_puts_the_peaks_in_the_metadata_as_ras_points():
    """(1, X, Y, Z) MetaTensor (affine with the spacing and an origin) -> meta[ZOOM_POINTS_KEY]: (max_peaks,
    3), the ball's centre in RAS mm first, NaN where there are fewer peaks; enabled False: all NaN."""
    hu, spacing = _phantom()
    affine = torch.diag(torch.tensor([*spacing[::-1], 1.0], dtype=torch.float64))
    affine[:3, 3] = torch.tensor([-50.0, -60.0, 100.0], dtype=torch.float64)
    image = MetaTensor(torch.from_numpy(hu.transpose(2, 1, 0).copy())[None], affine=affine)
    lung = MetaTensor(torch.ones_like(image, dtype=torch.uint8), affine=affine)
    out = AddZoomPointsd(keys="image", max_peaks=3)({"image": image, "lung_roi": lung})
    points = out["image"].meta[ZOOM_POINTS_KEY]
    assert tuple(points.shape) == (3, 3)
    np.testing.assert_allclose(points[0].numpy(), [-50.0 + 30 * 1.5, -60.0 + 30 * 1.5, 100.0 + 20 * 2.0])
    assert torch.isfinite(points).all(dim=1).sum() >= 1
    off = AddZoomPointsd(keys="image", max_peaks=3, enabled=False)({"image": image.clone(), "lung_roi": lung})
    assert torch.isnan(off["image"].meta[ZOOM_POINTS_KEY]).all()
