"""data_prep.synth.readers: LIDC contours of masks and back."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from data_prep.synth import readers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_helpers import fill_rois  # noqa: E402  (a module beside this one)


def test_contour_round_trip_on_awkward_shapes():
    shapes = {}
    ring = np.zeros((20, 20), bool)
    yy, xx = np.mgrid[:20, :20]
    r = np.hypot(yy - 10, xx - 10)
    ring[(r <= 7) & (r >= 3)] = True
    shapes["annulus"] = ring
    two = np.zeros((12, 20), bool)
    two[2:6, 2:6] = True
    two[6:10, 12:18] = True
    shapes["two pieces"] = two
    line = np.zeros((8, 8), bool)
    line[3, 1:7] = True
    line[1:3, 2] = True
    shapes["one-pixel lines"] = line
    u = np.zeros((10, 10), bool)
    u[2:8, 2:8] = True
    u[2:7, 4] = False
    shapes["one-pixel notch"] = u
    diag = np.zeros((8, 8), bool)
    diag[1:4, 1:4] = True
    diag[4:7, 4:7] = True
    shapes["touching at a corner"] = diag
    diamond = np.zeros((5, 5), bool)
    diamond[[1, 2, 2, 3], [2, 1, 3, 2]] = True
    shapes["one-pixel hole"] = diamond
    for name, m in shapes.items():
        contours = readers.mask_contours(m)
        assert np.array_equal(fill_rois(m.shape, contours), m), name
        assert np.array_equal(readers.fill_contours(m.shape, contours), m), name
    inc = [c[0] for c in readers.mask_contours(ring)]
    assert sorted(inc) == [False, True]                       # annulus: one region, one hole
    assert [c[0] for c in readers.mask_contours(two)] == [True, True]
    assert [c[0] for c in readers.mask_contours(diamond)] == [True, False]
