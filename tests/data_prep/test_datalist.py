"""Datalist: case collection, patient-level folds (no leak, deterministic, balanced, stratified), MONAI round trip.

Converted folders are faked: tiny NIfTI images / labels and provenance json, as ``convert`` writes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from data_prep.datalist import collect_cases, make_datalist, patient_kfold, write_datalist
from data_prep.errors import DataPrepError, InputNotFoundError
from data_prep.nifti_io import write_nifti
from data_prep.coords import Geometry

GEOM = Geometry((-10.0, 5.0, -50.0), (1.0, 1.0, 2.0), shape=(4, 3, 2))


def _case_id(patient: str, series: str) -> str:
    return f"{patient}_{hashlib.sha1(series.encode()).hexdigest()[:8]}"


def _fake_case(root: Path, patient: str, series: str, n_nodules: int, labelled: bool = True,
               provenance: bool = True, status: str = "complete") -> str:
    case = _case_id(patient, series)
    write_nifti(root / "images" / f"{case}.nii.gz", np.full(GEOM.shape_zyx, -800, np.int16), GEOM)
    if labelled:
        lab = np.zeros(GEOM.shape_zyx, np.uint8)
        for z, y, x in [(0, 0, 0), (0, 2, 2), (1, 0, 3)][:n_nodules]:   # n voxels, no two touching
            lab[z, y, x] = 1
        write_nifti(root / "labels" / f"{case}.nii.gz", lab, GEOM)
    if provenance:
        prov = {"case_id": case, "patient_id": patient, "series_uid": series, "status": status,
                "image": f"images/{case}.nii.gz", "label": f"labels/{case}.nii.gz" if labelled else None,
                "n_nodules": n_nodules if labelled else 0}
        (root / "provenance").mkdir(parents=True, exist_ok=True)
        (root / "provenance" / f"{case}.json").write_text(json.dumps(prov))
    return case


def _cohort_spec(n_patients: int = 30, seed: int = 7):
    """Patients with 1-3 series each; about a third of the patients have nodules."""
    rng = np.random.default_rng(seed)
    spec = []
    for p in range(n_patients):
        patient = f"LIDC-IDRI-{p + 1:04d}"
        positive = p % 3 == 0
        for s in range(int(rng.integers(1, 4))):
            spec.append((patient, f"1.2.840.{p}.{s}", int(rng.integers(1, 4)) if positive and s == 0 else 0))
    return spec


def _cases_from_spec(spec):
    return [{"case_id": _case_id(p, s), "patient_id": p, "n_nodules": n} for p, s, n in spec]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """A fake converted folder: 30 patients (1-3 series each), 3 unlabelled extra cases."""
    root = tmp_path_factory.mktemp("converted")
    for p, s, n in _cohort_spec():
        _fake_case(root, p, s, n)
    for k in range(3):
        _fake_case(root, f"UNLAB-{k}", f"9.9.{k}", 0, labelled=False)
    return root


# ------------------------------------------------------------------------------------------------
# collect_cases
# ------------------------------------------------------------------------------------------------

def test_collect_cases_reads_provenance(converted):
    cases = collect_cases(converted)
    spec = _cohort_spec()
    assert len(cases) == len(spec) + 3
    assert [c["case_id"] for c in cases] == sorted(c["case_id"] for c in cases)
    by_id = {c["case_id"]: c for c in cases}
    p, s, n = spec[0]
    c = by_id[_case_id(p, s)]
    assert c == {"case_id": _case_id(p, s), "patient_id": p, "image": f"images/{_case_id(p, s)}.nii.gz",
                 "label": f"labels/{_case_id(p, s)}.nii.gz", "n_nodules": n}
    assert by_id[_case_id("UNLAB-0", "9.9.0")]["label"] is None


def test_collect_cases_patient_id_from_provenance_not_name(tmp_path):
    case = _fake_case(tmp_path, "PAT_WITH_UNDERSCORE", "1.2.3", 1)
    assert collect_cases(tmp_path)[0]["patient_id"] == "PAT_WITH_UNDERSCORE"
    prov_path = tmp_path / "provenance" / f"{case}.json"
    prov = json.loads(prov_path.read_text())
    prov_path.write_text(json.dumps({**prov, "patient_id": "anon 7"}))
    assert collect_cases(tmp_path)[0]["patient_id"] == "anon 7"   # the record wins over the name
    prov_path.unlink()                                             # no provenance: name before the last "_"
    c = collect_cases(tmp_path)[0]
    assert c["patient_id"] == "PAT_WITH_UNDERSCORE" and c["label"] == f"labels/{case}.nii.gz"
    assert c["n_nodules"] == 1                                 # counted from the label


def test_collect_cases_without_provenance_counts_label_components(tmp_path):
    _fake_case(tmp_path, "P1", "1", 2, provenance=False)
    _fake_case(tmp_path, "P2", "2", 0, provenance=False)
    _fake_case(tmp_path, "P3", "3", 0, labelled=False, provenance=False)
    got = {c["patient_id"]: (c["n_nodules"], c["label"] is not None) for c in collect_cases(tmp_path)}
    assert got == {"P1": (2, True), "P2": (0, True), "P3": (0, False)}


def test_collect_cases_skips_incomplete_and_checks_labels(tmp_path):
    _fake_case(tmp_path, "P1", "1", 1)
    _fake_case(tmp_path, "P2", "2", 1, status="running")
    assert [c["patient_id"] for c in collect_cases(tmp_path)] == ["P1"]
    case = _fake_case(tmp_path, "P3", "3", 1)
    (tmp_path / "labels" / f"{case}.nii.gz").unlink()
    with pytest.raises(InputNotFoundError, match="label named by"):
        collect_cases(tmp_path)


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(InputNotFoundError, match="no images/<case>.nii.gz"):
        collect_cases(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(InputNotFoundError, match="no images/<case>.nii.gz"):
        make_datalist(tmp_path)
    with pytest.raises(InputNotFoundError, match="no such folder"):
        write_datalist(tmp_path / "missing")


# ------------------------------------------------------------------------------------------------
# patient_kfold
# ------------------------------------------------------------------------------------------------

def _fold_stats(cases, folds, n_folds):
    patients_in = defaultdict(set)
    for c in cases:
        patients_in[c["patient_id"]].add(folds[c["case_id"]])
    n_cases = Counter(folds.values())
    positive = {p for p in patients_in if any(c["n_nodules"] for c in cases if c["patient_id"] == p)}
    pos_per_fold = Counter(next(iter(patients_in[p])) for p in positive)
    neg_per_fold = Counter(next(iter(patients_in[p])) for p in patients_in if p not in positive)
    return (patients_in, [n_cases[f] for f in range(n_folds)], [pos_per_fold[f] for f in range(n_folds)],
            [neg_per_fold[f] for f in range(n_folds)])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("n_folds", [3, 5])
def test_no_patient_in_two_folds_and_balance(seed, n_folds):
    cases = _cases_from_spec(_cohort_spec())
    folds = patient_kfold(cases, n_folds=n_folds, seed=seed)
    assert set(folds) == {c["case_id"] for c in cases} and set(folds.values()) == set(range(n_folds))
    patients_in, n_cases, n_pos, n_neg = _fold_stats(cases, folds, n_folds)
    assert all(len(f) == 1 for f in patients_in.values())
    # patients have at most 3 series: folds differ by at most 3 cases; positives by at most one patient
    assert max(n_cases) - min(n_cases) <= 3, n_cases
    assert max(n_pos) - min(n_pos) <= 1, n_pos
    assert max(n_neg) - min(n_neg) <= 2, n_neg


def test_folds_deterministic_for_a_seed_and_vary_with_it():
    cases = _cases_from_spec(_cohort_spec())
    a = patient_kfold(cases, seed=0)
    shuffled = [cases[i] for i in np.random.default_rng(99).permutation(len(cases))]
    assert patient_kfold(shuffled, seed=0) == a                  # input order does not matter
    assert patient_kfold(list(reversed(cases)), seed=0) == a
    assert patient_kfold(cases, seed=1) != a


def test_folds_do_not_depend_on_hash_randomisation():
    repo = str(Path(__file__).resolve().parents[2])
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from data_prep.datalist import patient_kfold; "
            "cases = [{'case_id': f'P{p}_{s}', 'patient_id': f'P{p}', 'n_nodules': p % 2} "
            "for p in range(20) for s in range(1 + p % 3)]; "
            "print(json.dumps(patient_kfold(cases, 5, 3), sort_keys=True))")
    outs = {subprocess.run([sys.executable, "-c", code, repo], env={**os.environ, "PYTHONHASHSEED": h},
                           capture_output=True, text=True, check=True).stdout for h in ("1", "2", "12345")}
    assert len(outs) == 1
    folds = json.loads(outs.pop())
    assert len(folds) == sum(1 + p % 3 for p in range(20)) and set(folds.values()) == set(range(5))


def test_stratification_spreads_nodule_patients():
    # 10 positive patients listed first, 10 negatives: without stratification a fold can get all
    # positives; with it every fold of 5 gets exactly 2
    cases = [{"case_id": f"P{p:02d}_x", "patient_id": f"P{p:02d}", "n_nodules": int(p < 10)} for p in range(20)]
    for seed in range(5):
        folds = patient_kfold(cases, n_folds=5, seed=seed, stratify_by_nodules=True)
        _, n_cases, n_pos, n_neg = _fold_stats(cases, folds, 5)
        assert n_pos == [2] * 5 and n_neg == [2] * 5 and n_cases == [4] * 5
    spreads = []
    for seed in range(20):
        folds = patient_kfold(cases, n_folds=5, seed=seed, stratify_by_nodules=False)
        _, n_cases, n_pos, _ = _fold_stats(cases, folds, 5)
        assert n_cases == [4] * 5
        spreads.append(max(n_pos) - min(n_pos))
    assert max(spreads) >= 2          # unstratified splits do get unbalanced


# ------------------------------------------------------------------------------------------------
# make_datalist / write_datalist
# ------------------------------------------------------------------------------------------------

def test_datalist_lists_and_folds(converted):
    d = make_datalist(converted, n_folds=5, val_fold=1, test_fold=3, seed=4)
    assert (d["n_folds"], d["seed"], d["val_fold"], d["test_fold"]) == (5, 4, 1, 3)
    assert {e["fold"] for e in d["validation"]} == {1}
    assert {e["fold"] for e in d["training"]} == {0, 2, 4}
    labelled_test = [e for e in d["testing"] if e["fold"] is not None]
    unlabelled_test = [e for e in d["testing"] if e["fold"] is None]
    assert {e["fold"] for e in labelled_test} == {3} and all("label" in e for e in labelled_test)
    assert sorted(e["patient_id"] for e in unlabelled_test) == ["UNLAB-0", "UNLAB-1", "UNLAB-2"]
    assert all(set(e) == {"image", "fold", "case_id", "patient_id"} for e in unlabelled_test)
    entries = d["training"] + d["validation"] + labelled_test
    assert len(entries) == len(_cohort_spec())
    assert all(set(e) == {"image", "label", "fold", "case_id", "patient_id"} for e in entries)
    lists_of_patient = defaultdict(set)
    for name in ("training", "validation", "testing"):
        for e in d[name]:
            lists_of_patient[e["patient_id"]].add(name)
    assert all(len(v) == 1 for v in lists_of_patient.values())
    e = d["training"][0]
    assert e["image"] == f"images/{e['case_id']}.nii.gz" and e["label"] == f"labels/{e['case_id']}.nii.gz"
    # same split as patient_kfold on the labelled cases
    folds = patient_kfold([c for c in collect_cases(converted) if c["label"]], 5, 4)
    assert all(folds[e["case_id"]] == e["fold"] for e in entries)


def test_datalist_without_label_requirement_splits_everything(converted):
    d = make_datalist(converted, n_folds=5, seed=0, require_labels=False)
    assert d["testing"] == []
    entries = d["training"] + d["validation"]
    assert len(entries) == len(_cohort_spec()) + 3
    unlab = [e for e in entries if e["patient_id"].startswith("UNLAB")]
    assert len(unlab) == 3 and all("label" not in e and e["fold"] in range(5) for e in unlab)


def test_monai_round_trip(converted, tmp_path):
    from monai.data import load_decathlon_datalist

    default = write_datalist(converted, n_folds=5, val_fold=0, test_fold=4, seed=0)
    assert default == converted / "datalist.json"
    elsewhere = write_datalist(converted, tmp_path / "lists" / "dl.json", n_folds=5, val_fold=0, test_fold=4, seed=0)
    assert json.loads(elsewhere.read_text())["training"][0]["image"].startswith("../")
    assert not list((tmp_path / "lists").glob(".*part"))              # atomic write leaves no temporary
    for path in (default, elsewhere):
        for key in ("training", "validation", "testing"):
            items = load_decathlon_datalist(path, True, key)
            assert items, key
            for item in items:
                assert Path(item["image"]).is_file() and Path(item["image"]).is_absolute()
                assert Path(item["image"]).resolve().parent == (converted / "images").resolve()
                if "label" in item:
                    assert Path(item["label"]).is_file()
                    assert Path(item["label"]).name == Path(item["image"]).name
    monai_training = load_decathlon_datalist(default, True, "training")
    ours = json.loads(default.read_text())["training"]
    assert [i["case_id"] for i in monai_training] == [e["case_id"] for e in ours]


def test_datalist_loads_with_monai_transforms(converted):
    from monai.data import load_decathlon_datalist
    from monai.transforms import LoadImaged

    item = load_decathlon_datalist(write_datalist(converted), True, "validation")[0]
    data = LoadImaged(keys=["image", "label"])(item)
    assert tuple(data["image"].shape) == GEOM.shape and float(data["image"].max()) == -800


def test_bad_options_are_clear_errors(converted, tmp_path):
    with pytest.raises(DataPrepError, match="val_fold 5 is not a fold of 0..4"):
        make_datalist(converted, n_folds=5, val_fold=5)
    with pytest.raises(DataPrepError, match="must differ"):
        make_datalist(converted, val_fold=2, test_fold=2)
    with pytest.raises(DataPrepError, match="at least 2 folds"):
        make_datalist(converted, n_folds=1)
    small = tmp_path / "small"
    _fake_case(small, "P1", "1", 1)
    _fake_case(small, "P1", "2", 0)
    with pytest.raises(DataPrepError, match="training list would be empty: 1 patient"):
        make_datalist(small, n_folds=2)
    only_unlabelled = tmp_path / "unlab"
    _fake_case(only_unlabelled, "P1", "1", 0, labelled=False)
    with pytest.raises(DataPrepError, match="no case has a label"):
        make_datalist(only_unlabelled)
