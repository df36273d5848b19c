"""data_prep.synth.cohort: cases in memory (nodules against the written ground truth, nodule counts, UIDs,
config validation)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from data_prep.synth import CohortConfig
from data_prep.synth.cohort import case_uids, planned_nodule_count, sop_uid_for

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_helpers import CONFIG, check_nodules  # noqa: E402  (a module beside this one)


def test_cohort_nodules(cohort):
    _, gts, cases = cohort
    for gt, case in zip(gts, cases):
        check_nodules(case)
        truth = case.truth_instance_mask()
        for n in gt["nodules"]:
            m = truth == n["id"]
            assert n["n_voxels"] == m.sum() and np.isclose(n["volume_mm3"], m.sum() * 10.0)   # 2 x 2 x 2.5 mm
            assert CONFIG.diameter_mm[0] * 0.99 <= n["diameter_mm"] <= CONFIG.diameter_mm[1] * 1.01
            kk, jj, ii = np.nonzero(m)
            assert np.allclose(n["centre_voxel"], [ii.mean(), jj.mean(), kk.mean()])
            assert np.allclose(n["centre_lps"], case.geometry.voxel_to_world(n["centre_voxel"]))


def test_cohort_has_empty_and_multi_nodule_cases(cohort):
    _, gts, _ = cohort
    counts = [gt["n_nodules"] for gt in gts]
    assert 0 in counts and max(counts) >= 2
    default = [planned_nodule_count(CohortConfig(), i) for i in range(3)]
    assert 0 in default and max(default) >= 2


def test_uids_are_deterministic_and_seed_dependent():
    a = case_uids(CONFIG, 0)
    assert a == case_uids(CONFIG, 0)
    assert case_uids(CohortConfig(**{**CONFIG.__dict__, "n_cases": 9}), 0) == a     # cohort size irrelevant
    b = case_uids(CohortConfig(**{**CONFIG.__dict__, "seed": 4}), 0)
    assert a["series"] != b["series"] and a["series"] != case_uids(CONFIG, 1)["series"]
    assert sop_uid_for(CONFIG, 0, 5) == sop_uid_for(CONFIG, 0, 5) != sop_uid_for(CONFIG, 0, 6)


def test_config_validation():
    with pytest.raises(ValueError, match="nodule_types"):
        CohortConfig(nodule_types=("cavity",)).validate()
    with pytest.raises(ValueError, match="diameter_mm"):
        CohortConfig(diameter_mm=(2.0, 10.0)).validate()
    with pytest.raises(ValueError, match="readers_per_nodule"):
        CohortConfig(readers_per_nodule=(0, 4)).validate()
    with pytest.raises(ValueError, match="cavitary_fraction"):
        CohortConfig(cavitary_fraction=2.0).validate()
