"""Shared fixtures: the real LIDC-IDRI-0001 series (read in place) and its conversion.

Under CI (``CI=true``) a test that needs the real series fails when it is missing; elsewhere it skips.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LIDC_ROOT = (REPO_ROOT / ".." / "shared" / "data" / "lidc").resolve()


def _require(path: Path) -> Path:
    if not path.exists():
        msg = f"real LIDC-IDRI data missing at {path}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def lidc_root() -> Path:
    """../shared/data/lidc: LIDC-IDRI-0001, -0002, -0006 (DICOM + XML) and luna16_annotations.csv."""
    return _require(LIDC_ROOT / "LIDC-IDRI-0001").parent


@pytest.fixture(scope="session")
def lidc_series_dir(lidc_root) -> Path:
    """The folder holding the 133 DICOM slices and 069.xml of LIDC-IDRI-0001."""
    return next(lidc_root.glob("LIDC-IDRI-0001/*/*/"))


@pytest.fixture(scope="session")
def luna16_row(lidc_root) -> dict:
    import csv

    with open(lidc_root / "luna16_annotations.csv") as f:
        row = next(csv.DictReader(f))
    return {"series_uid": row["seriesuid"], "centre_lps": [float(row[k]) for k in ("coordX", "coordY", "coordZ")],
            "diameter_mm": float(row["diameter_mm"])}


def _tilt_series(files, tilt_deg: float | None = None) -> None:
    """Rewrite the (z-sorted) DICOM ``files`` in place as a gantry-tilted stack of the same anatomy: slice k's
    pixels moved down by k rows and its ImagePositionPatient moved up (-y, LPS) by as many row spacings."""
    import numpy as np
    import pydicom

    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        arr = ds.pixel_array
        ds.PixelData = np.roll(arr, k, axis=0).astype(arr.dtype).tobytes()
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1] - k * float(ds.PixelSpacing[0]), ipp[2]]
        if tilt_deg is not None:
            ds.GantryDetectorTilt = tilt_deg
        ds.save_as(f)


@pytest.fixture(scope="session")
def tilt_series():
    """``tilt_series(files, tilt_deg=None)``: see :func:`_tilt_series`."""
    return _tilt_series


def _drop_to_floor_mm(record, lung, hu, geometry):
    """mm from an inserted nodule's centroid (``record["centre_voxel"]``, i j k) straight towards the feet to the
    first voxel outside the (z, y, x) ``lung`` mask, and that voxel's HU (None, None when the lungs reach the
    scan's end)."""
    i, j, k = (int(round(v)) for v in record["centre_voxel"])
    down = -1 if geometry.direction_matrix[2, 2] >= 0 else 1
    for n, kk in enumerate(range(k, -1 if down == -1 else lung.shape[0], down)):
        if not lung[kk, j, i]:
            return n * float(geometry.spacing[2]), int(hu[kk, j, i])
    return None, None


@pytest.fixture(scope="session")
def drop_to_floor():
    """``drop_to_floor(record, lung, hu, geometry)`` -> (mm, HU): see :func:`_drop_to_floor_mm`."""
    return _drop_to_floor_mm


@pytest.fixture(scope="session")
def lidc_converted(lidc_root, tmp_path_factory) -> Path:
    """LIDC-IDRI-0001 converted once per session by data_prep's convert (output folder)."""
    from data_prep.convert import ConvertOptions, convert_dicom_root

    out = tmp_path_factory.mktemp("lidc_converted")
    report = convert_dicom_root(lidc_root / "LIDC-IDRI-0001", out, ConvertOptions(progress=False))
    assert len(report.converted) == 1 and not report.failed, report.as_dict()
    return out


SYNTH_CASES = 4


@pytest.fixture(scope="session")
def synth_cohort(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A small synthetic DICOM cohort (4 cases, seed 0) and its ground truth, generated once per session."""
    from data_prep.synth import CohortConfig, write_cohort

    root = tmp_path_factory.mktemp("synth")
    truth = write_cohort(root, CohortConfig(n_cases=SYNTH_CASES, seed=0))
    return root, truth


@pytest.fixture(scope="session")
def synth_converted(synth_cohort, tmp_path_factory) -> Path:
    """The synthetic cohort run through data_prep convert, like real data."""
    from data_prep.convert import ConvertOptions, convert_dicom_root

    root, _ = synth_cohort
    out = tmp_path_factory.mktemp("synth_converted")
    report = convert_dicom_root(root / "dicom", out, ConvertOptions(progress=False))
    assert len(report.converted) == SYNTH_CASES and not report.failed, report.as_dict()
    return out


# Modules whose tests all run on one pytest-xdist worker (``make test`` runs ``-n 2``): their tests share
# slow session fixtures guarded by file locks (test_monailabel.py: building the MONAI Label venv, training
# through it), so spread over two workers one of them would only wait on those locks. xdist's own
# ``--dist loadgroup`` + ``xdist_group`` mark does not group under pytest 9.2 (xdist 3.8 renames
# ``item._nodeid``, which pytest 9 no longer reads), hence this scheduler.
ONE_WORKER_MODULES = ("tests/ecosystem/test_monailabel.py",)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's default 'load' distribution, except that each of ONE_WORKER_MODULES is one work unit; the
    largest unit is handed out first (xdist's loadscope reorder), so it starts while the other worker
    takes the rest of the suite test by test."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class OneWorkerModulesScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_WORKER_MODULES else nodeid

    return OneWorkerModulesScheduling(config, log)
