"""Fixtures shared by the data_prep.synth tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from data_prep.synth import case_rng, generate_case, write_cohort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_helpers import CONFIG  # noqa: E402  (a module beside this one)


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    """A small synthetic cohort (CONFIG) written once, with the in-memory cases it was generated from."""
    out = tmp_path_factory.mktemp("synth")
    gts = write_cohort(out, CONFIG)
    cases = [generate_case(CONFIG, i, case_rng(CONFIG, i)) for i in range(CONFIG.n_cases)]
    return out, gts, cases
