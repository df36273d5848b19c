"""The synthetic DICOM cohort goes through convert like real data: masks and table match the truth."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from data_prep.dicom_series import case_id_for
from data_prep.nifti_io import read_nifti


def _dice(a, b):
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * np.logical_and(a, b).sum() / s


def _truth_by_case(truth):
    return {case_id_for(t["patient_id"], t["series_uid"]): t for t in truth}


def test_cohort_has_empty_and_multi_nodule_cases(synth_cohort):
    _, truth = synth_cohort
    counts = [t["n_nodules"] for t in truth]
    assert 0 in counts and max(counts) >= 2


def test_masks_match_ground_truth_per_nodule(synth_cohort, synth_converted):
    root, truth = synth_cohort
    n_checked = 0
    for case_id, t in _truth_by_case(truth).items():
        inst, geom = read_nifti(synth_converted / "instances" / f"{case_id}.nii.gz")
        cons_truth, gt_geom = read_nifti(root / t["consensus_mask"])
        true_mask, _ = read_nifti(root / t["truth_mask"])
        np.testing.assert_allclose(geom.affine_lps(), gt_geom.affine_lps(), atol=1e-4)
        prov = json.loads((synth_converted / "provenance" / f"{case_id}.json").read_text())
        assert prov["n_nodules"] == t["n_nodules"]
        for row in prov["nodules"]:
            ours = inst == row["nodule_id"]
            # the generated nodule under our nodule's centre
            i, j, k = np.round(row["centre_voxel"]).astype(int)
            gid = int(true_mask[k, j, i]) or int(np.bincount(true_mask[ours]).argmax())
            assert gid > 0
            assert _dice(ours, cons_truth == gid) == 1.0  # contours -> fill -> vote is exact
            assert _dice(ours, true_mask == gid) > 0.95
            n_checked += 1
    assert n_checked == sum(t["n_nodules"] for t in truth) >= 3


def test_nodule_table_matches_generated_table(synth_cohort, synth_converted):
    _, truth = synth_cohort
    by_case = _truth_by_case(truth)
    rows = list(csv.DictReader(open(synth_converted / "nodules.csv")))
    assert len(rows) == sum(t["n_nodules"] for t in truth)
    for r in rows:
        t = by_case[r["case_id"]]
        centre = np.array([float(r[f"centre_{a}_lps_mm"]) for a in "xyz"])
        gt = min(t["nodules"], key=lambda n: np.linalg.norm(np.asarray(n["centre_lps"]) - centre))
        assert np.linalg.norm(np.asarray(gt["centre_lps"]) - centre) < 1.0
        assert float(r["diameter_mm"]) == pytest.approx(gt["mask_diameter_mm"], rel=0.05)
        assert int(r["n_readers"]) == gt["n_readers"]
        assert float(r["malignancy_median"]) == gt["median_malignancy"]
        assert r["series_uid"] == t["series_uid"] and r["patient_id"] == t["patient_id"]
    small = list(csv.DictReader(open(synth_converted / "small_marks.csv")))
    assert sum(r["kind"] == "small_nodule" for r in small) == sum(len(t["small_nodules"]) for t in truth)


def test_workers_give_identical_outputs(synth_cohort, synth_converted, tmp_path):
    from data_prep.convert import ConvertOptions, convert_dicom_root

    root, _ = synth_cohort
    r = convert_dicom_root(root / "dicom", tmp_path, ConvertOptions(workers=2, progress=False))
    assert len(r.converted) == 4 and not r.failed
    for sub in ("images", "labels", "instances"):
        for p in sorted((synth_converted / sub).glob("*.nii.gz")):
            assert (tmp_path / sub / p.name).read_bytes() == p.read_bytes()
    assert (tmp_path / "nodules.csv").read_text() == (synth_converted / "nodules.csv").read_text()


def test_killed_run_resumes_and_matches(synth_cohort, synth_converted, tmp_path):
    """SIGKILL mid-cohort, then re-run: every case complete and identical to an uninterrupted run."""
    root, _ = synth_cohort
    cmd = [sys.executable, "-m", "data_prep", "-q", "convert", str(root / "dicom"), "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "provenance").glob("*.json")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list((tmp_path / "provenance").glob("*.json")))
    assert done_before < 4  # really interrupted mid-cohort
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert f"reused {done_before}" in p.stdout
    assert not [f for f in tmp_path.rglob("*") if f.name.endswith(".part")]
    for sub in ("images", "labels", "instances"):
        ref = sorted(f.name for f in (synth_converted / sub).glob("*.nii.gz"))
        assert sorted(f.name for f in (tmp_path / sub).glob("*.nii.gz")) == ref
        for name in ref:
            assert (tmp_path / sub / name).read_bytes() == (synth_converted / sub / name).read_bytes()


def test_datalist_from_converted_cohort(synth_converted, tmp_path):
    from data_prep.datalist import make_datalist

    dl = make_datalist(synth_converted, n_folds=2, val_fold=0, seed=0)
    patients = lambda key: {e["patient_id"] for e in dl[key]}  # noqa: E731
    assert dl["training"] and dl["validation"]
    assert not patients("training") & patients("validation")
    assert all((synth_converted / e["image"]).exists() and (synth_converted / e["label"]).exists()
               for e in dl["training"] + dl["validation"])
