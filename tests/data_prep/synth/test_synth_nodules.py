"""data_prep.synth.nodules: the nodule model (shape volume, intensities and sites of each type)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from data_prep.coords import Geometry
from data_prep.synth import CohortConfig, case_rng, generate_case
from data_prep.synth import nodules

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_helpers import SMALL, check_nodules  # noqa: E402  (a module beside this one)


@pytest.fixture(scope="module")
def typed_cases():
    """One in-memory case per nodule type (two nodules each, 8-16 mm)."""
    out = {}
    for t in nodules.NODULE_TYPES:
        cfg = CohortConfig(seed=11, nodules_per_case=(2, 2), nodule_types=(t,), diameter_mm=(8.0, 16.0), **SMALL)
        out[t] = generate_case(cfg, 0, case_rng(cfg, 0))
    return out


def test_nodules_of_each_type(typed_cases):
    for t, case in typed_cases.items():
        seen = check_nodules(case)
        assert seen.count(t) >= 1, (t, seen)


def test_nodule_spec_volume_matches_diameter():
    rng = np.random.default_rng(1)
    geom = Geometry((0.0, 0.0, 0.0), (0.5, 0.5, 0.5), shape=(80, 80, 80))
    for t in nodules.NODULE_TYPES:
        spec = nodules.random_nodule_spec(rng, t, 20.0)
        got = nodules._crop_fields(spec, (20.0, 20.0, 20.0), geom, 1.0)
        assert got is not None
        _, rn, surface = got
        volume = (rn <= surface).sum() * 0.125
        assert abs(volume / (np.pi / 6 * 20.0 ** 3) - 1) < 0.03, t
