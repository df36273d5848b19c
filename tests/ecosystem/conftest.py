"""Fixtures shared by the ecosystem tests: the demo cohort and each bundle's training data."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """8 synthetic cases converted by the README demo's data stage (6 training, 2 validation)."""
    out = tmp_path_factory.mktemp("eco_demo")
    subprocess.run([sys.executable, "-m", "data_prep", "-q", "demo", "--out", str(out)], check=True,
                   capture_output=True, timeout=300)
    return out / "converted"


@pytest.fixture(scope="module")
def bundle_dataset(cohort) -> Callable[[str], Path]:
    """bundle name -> its --dataset_dir: the converted cohort, or (classification) patches built from it once."""

    def dataset_dir(bundle: str) -> Path:
        if bundle == "lung_nodule_ct_classification":
            from lungnod_ext.apps.patch_dataset import build_patch_dataset

            patches = cohort.parent / "patches"
            if not (patches / "datalist.json").is_file():
                build_patch_dataset(cohort, patches, positive_copies=2, random_negatives_per_case=4)
            return patches
        return cohort

    return dataset_dir
