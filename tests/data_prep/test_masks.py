"""Contour filling, reader grouping and consensus, on hand-made cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.lidc_xml import Roi
from data_prep.masks import (SparseMask, bounding_box, consensus_mask, equivalent_diameter_mm, fill_slice_contours, group_marks,
                             nodule_stats, rasterize_rois, sphere_mask)
from data_prep.coords import Geometry


def _roi(points, inclusion=True):
    return Roi(None, None, inclusion, np.asarray(points, dtype=np.int32))


def test_square_contour_includes_its_boundary():
    m = fill_slice_contours((30, 30), [_roi([(5, 5), (14, 5), (14, 14), (5, 14)])])
    assert m.sum() == 100 and m[5, 5] and m[14, 14] and not m[15, 14]


def test_exclusion_clears_interior_keeps_its_rim():
    outer = _roi([(0, 0), (20, 0), (20, 20), (0, 20)])
    hole = _roi([(5, 5), (15, 5), (15, 15), (5, 15)], inclusion=False)
    m = fill_slice_contours((25, 25), [outer, hole])
    assert m.sum() == 21 * 21 - 9 * 9
    assert m[5, 5] and m[5, 10] and not m[10, 10]


def test_cv2_contours_round_trip():
    """cv2.findContours boundary pixels filled back give the same mask (the synthetic readers rely on it)."""
    import cv2

    yy, xx = np.mgrid[:64, :64]
    mask = (((yy - 30) / 14.0) ** 2 + ((xx - 33) / 9.0) ** 2 <= 1) & ~(((yy - 30) ** 2 + (xx - 33) ** 2) <= 9)
    cs, hier = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    rois = [_roi(c[:, 0, :], inclusion=hier[0][n][3] < 0) for n, c in enumerate(cs)]
    assert sorted(r.inclusion for r in rois) == [False, True]
    assert np.array_equal(fill_slice_contours(mask.shape, rois), mask)


def test_rasterize_places_slices_and_offsets():
    sm = rasterize_rois({3: [_roi([(10, 20), (12, 20), (12, 22), (10, 22)])], 5: [_roi([(11, 21), (11, 21)])]},
                        (8, 40, 40))
    assert sm.offset_zyx == (3, 20, 10) and sm.array.shape == (3, 3, 3)
    assert sm.n_voxels == 9 + 1 and not sm.array[1].any()
    full = sm.paste(np.zeros(3, int), np.array([8, 40, 40]))
    assert full[3, 20:23, 10:13].all() and full[5, 21, 11]
    np.testing.assert_allclose(sm.centroid_ijk(), [(11 * 9 + 11) / 10, (21 * 9 + 21) / 10, (3 * 9 + 5) / 10])


def test_consensus_needs_half_of_the_readers():
    a = SparseMask((0, 0, 0), np.array([[[1, 1, 1, 0]]], bool))
    b = SparseMask((0, 0, 1), np.array([[[1, 1, 1]]], bool))
    c = SparseMask((0, 0, 2), np.array([[[1]]], bool))
    cons, count = consensus_mask([a, b, c], 0.5)
    assert cons.offset_zyx == (0, 0, 0)
    assert count.array[0, 0].tolist() == [1, 2, 3, 1]
    assert cons.array[0, 0].tolist() == [False, True, True, False]
    assert consensus_mask([a, b, c], 1.0)[0].array[0, 0].tolist() == [False, False, True, False]
    assert consensus_mask([a, b], 0.5)[0].array[0, 0].tolist() == [True, True, True, True]  # 2 readers: union


def test_grouping_never_joins_one_readers_marks():
    # reader A marked two nodules close together, B and C marked each once
    pos = {0: 0.0, 1: 2.0, 2: 0.5, 3: 2.4}
    readers = ["A", "A", "B", "C"]
    groups = group_marks(4, lambda a, b: abs(pos[a] - pos[b]) if abs(pos[a] - pos[b]) < 3 else None, readers)
    assert groups == [[0, 2], [1, 3]]
    assert all(len({readers[i] for i in g}) == len(g) for g in groups)


def test_sphere_and_stats():
    g = Geometry((-10.0, 20.0, -100.0), (0.5, 0.5, 1.0), shape=(80, 80, 40))
    m = sphere_mask(g, (0.0, 35.0, -80.0), 10.0)
    s = nodule_stats(m, g, hu_zyx=np.full(g.shape_zyx, -5, np.int16))
    assert s["volume_mm3"] == pytest.approx(4 / 3 * np.pi * 5 ** 3, rel=0.03)
    assert s["diameter_mm"] == pytest.approx(10.0, rel=0.02)
    np.testing.assert_allclose(s["centre_lps"], (0.0, 35.0, -80.0), atol=1e-6)
    assert s["mean_hu"] == -5
    assert equivalent_diameter_mm(4 / 3 * np.pi * 8) == pytest.approx(4.0)
    # a sphere partly outside the grid is cut, not an error
    assert sphere_mask(g, (-12.0, 20.0, -100.0), 6.0).sum() > 0
    assert sphere_mask(g, (500.0, 0.0, 0.0), 6.0).sum() == 0


def test_bounding_box_grows_per_axis_and_clips():
    mask = np.zeros((10, 20, 30), dtype=bool)
    mask[2:4, 5:9, 0:3] = True
    mask[6, 7, 4] = True
    assert bounding_box(mask) == (slice(2, 7), slice(5, 9), slice(0, 5))
    assert bounding_box(mask, (0, 1, 2)) == (slice(2, 7), slice(4, 10), slice(0, 7))  # x clipped at 0
    assert bounding_box(mask, 5) == (slice(0, 10), slice(0, 14), slice(0, 10))
    assert bounding_box(np.zeros((4, 4, 4))) is None
