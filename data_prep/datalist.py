"""Converted folder -> MONAI datalist with patient-level cross-validation folds.

Input is the output folder of ``data_prep convert``::

    <root>/images/<case>.nii.gz        int16 HU
    <root>/labels/<case>.nii.gz        nodule mask (absent for unannotated cases)
    <root>/provenance/<case>.json      {"case_id", "patient_id", "status": "complete", "image", "label", "n_nodules", ...}

Output is a MONAI (Decathlon-style) datalist, readable by
``monai.data.load_decathlon_datalist(path, True, "training")``::

    {"training": [{"image": rel, "label": rel, "fold": k, "case_id": ..., "patient_id": ...}, ...],
     "validation": [...], "testing": [...], "n_folds": 5, "seed": 0, "val_fold": 0, "test_fold": null, ...}

Paths are posix, relative to the datalist file's folder. All series of one patient land in one fold;
the split depends only on the set of cases and the seed (not on their order, nor on Python's hash
randomisation), and folds are balanced in cases and in patients with / without nodules.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from data_prep.errors import DataPrepError, InputNotFoundError
from data_prep.nifti_io import write_text_atomic

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
DATALIST_NAME = "datalist.json"


def _case_id_of(path: Path) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def _patient_from_case_id(case_id: str) -> str:
    """``LIDC-IDRI-0001_1a2b3c4d`` -> ``LIDC-IDRI-0001`` (only used when there is no provenance record)."""
    return case_id.rsplit("_", 1)[0] if "_" in case_id else case_id


def _count_label_components(label_path: Path) -> int:
    """Number of connected (26-neighbour) foreground components of a label image."""
    from scipy import ndimage

    from data_prep.nifti_io import read_nifti

    try:
        arr, _ = read_nifti(label_path)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many kinds on damaged files
        raise DataPrepError(label_path, f"unreadable label image ({type(exc).__name__}: {exc})") from None
    return int(ndimage.label(arr > 0, structure=np.ones((3, 3, 3)))[1])


def collect_cases(root) -> list[dict]:
    """Cases of a converted folder, sorted by case id.

    Returns dicts ``{"case_id", "patient_id", "image", "label", "n_nodules"}``: ``image`` / ``label``
    posix paths relative to ``root`` (``label`` None when the case has no label image). The patient id
    and nodule count come from ``provenance/<case>.json``; without one, the patient id is the case id
    before its last ``_`` and the nodules are counted as connected components of the label.
    A provenance record whose status is not ``complete`` (a conversion cut short) drops its case.

    Raises InputNotFoundError when ``root`` does not exist or holds no images, and when a complete
    provenance record names a label file that is missing.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputNotFoundError(root, "no such folder (expected the output folder of 'data_prep convert')")
    images_dir = root / "images"
    images = sorted(p for p in images_dir.glob("*") if p.is_file() and not p.name.startswith(".")
                    and _case_id_of(p)) if images_dir.is_dir() else []
    if not images:
        raise InputNotFoundError(root, "no images/<case>.nii.gz found: is this the output folder of 'data_prep convert'?")
    cases = []
    for image in images:
        case_id = _case_id_of(image)
        prov_path = root / "provenance" / f"{case_id}.json"
        prov = None
        if prov_path.is_file():
            try:
                prov = json.loads(prov_path.read_text())
            except (OSError, ValueError) as exc:
                raise DataPrepError(prov_path, f"unreadable provenance record ({exc})") from None
        if prov is not None:
            if prov.get("status") != "complete":
                log.warning("%s: conversion not complete (status %r): case left out", prov_path, prov.get("status"))
                continue
            label_rel = prov.get("label")
            if label_rel and not (root / label_rel).is_file():
                raise InputNotFoundError(root / label_rel, f"label named by {prov_path.name} is missing")
            cases.append({
                "case_id": case_id,
                "patient_id": str(prov.get("patient_id") or _patient_from_case_id(case_id)),
                "image": image.relative_to(root).as_posix(),
                "label": Path(label_rel).as_posix() if label_rel else None,
                "n_nodules": int(prov.get("n_nodules") or 0),
            })
        else:
            label = next((root / "labels" / f"{case_id}{s}" for s in NIFTI_SUFFIXES
                          if (root / "labels" / f"{case_id}{s}").is_file()), None)
            cases.append({
                "case_id": case_id,
                "patient_id": _patient_from_case_id(case_id),
                "image": image.relative_to(root).as_posix(),
                "label": label.relative_to(root).as_posix() if label is not None else None,
                "n_nodules": _count_label_components(label) if label is not None else 0,
            })
    if not cases:
        raise InputNotFoundError(root, "no completely converted case (every provenance record is incomplete)")
    return sorted(cases, key=lambda c: c["case_id"])


def patient_kfold(cases: list[dict], n_folds: int = 5, seed: int = 0,
                  stratify_by_nodules: bool = True) -> dict[str, int]:
    """Patient-level k-fold split -> ``{case_id: fold}`` with folds 0..n_folds-1.

    ``cases``: dicts with ``case_id``, ``patient_id`` and (for stratification) ``n_nodules``.
    All cases of a patient share a fold. Patients are shuffled by ``seed`` (after sorting by id, so
    the input order does not matter), then placed largest first (most cases) on the fold with the
    fewest cases (greedy balancing). With ``stratify_by_nodules`` patients with at least one nodule
    are placed first, each on the fold with the fewest such patients, then the others by cases, so
    every fold gets its share of both. Folds may be empty only when there are fewer patients than folds.
    """
    if n_folds < 1:
        raise ValueError(f"n_folds must be >= 1, got {n_folds}")
    by_patient: dict[str, list[dict]] = defaultdict(list)
    for c in cases:
        by_patient[str(c["patient_id"])].append(c)
    patients = sorted(by_patient)
    order = np.random.default_rng(seed).permutation(len(patients))
    shuffled = [patients[i] for i in order]
    positive = {p: any((c.get("n_nodules") or 0) > 0 for c in by_patient[p]) for p in patients}
    strata = ([[p for p in shuffled if positive[p]], [p for p in shuffled if not positive[p]]]
              if stratify_by_nodules else [shuffled])

    n_cases = [0] * n_folds
    n_patients = [0] * n_folds
    fold_of_patient: dict[str, int] = {}
    for stratum_index, stratum in enumerate(strata):
        n_in_stratum = [0] * n_folds
        balance_stratum_first = stratify_by_nodules and stratum_index == 0

        def load(f: int, counts=n_in_stratum, first=balance_stratum_first) -> tuple:
            """Sort key of fold f: the fold with the smallest key takes the next patient."""
            return (counts[f], n_cases[f], n_patients[f], f) if first else (n_cases[f], counts[f], n_patients[f], f)

        # stable sort: largest patients first, seed-shuffled order among equals
        for p in sorted(stratum, key=lambda p: -len(by_patient[p])):
            fold = min(range(n_folds), key=load)
            fold_of_patient[p] = fold
            n_cases[fold] += len(by_patient[p])
            n_patients[fold] += 1
            n_in_stratum[fold] += 1
    return {c["case_id"]: fold_of_patient[str(c["patient_id"])] for c in cases}


def _entry(case: dict, fold, root: Path, base_dir: Path, with_label: bool) -> dict:
    def rel(p: str) -> str:
        full = root / p
        try:
            return Path(os.path.relpath(full, base_dir)).as_posix()
        except ValueError:  # different drives (Windows): fall back to an absolute path
            return full.resolve().as_posix()

    out = {"image": rel(case["image"])}
    if with_label and case["label"]:
        out["label"] = rel(case["label"])
    out.update({"fold": fold, "case_id": case["case_id"], "patient_id": case["patient_id"]})
    return out


def make_datalist(root, n_folds: int = 5, val_fold: int = 0, test_fold: int | None = None, seed: int = 0,
                  require_labels: bool = True, stratify_by_nodules: bool = True, base_dir=None) -> dict:
    """MONAI datalist of a converted folder (see module doc).

    Cases that take part in the split (with ``require_labels``: the labelled ones; else all) get a
    patient-level fold; ``val_fold`` is the validation list, ``test_fold`` (optional) the test list,
    the other folds the training list. With ``require_labels`` the unlabelled cases are added to the
    test list as image-only entries with ``"fold": null``; without it they are split like the others
    and their entries simply have no ``"label"``. Paths are relative to ``base_dir`` (the folder the
    datalist file will be written to; default ``root``).

    Raises DataPrepError for fold numbers out of range, and when the training, validation or test
    list would be empty (too few patients for ``n_folds``, or no labelled case).
    """
    root = Path(root).resolve()
    base_dir = Path(base_dir).resolve() if base_dir is not None else root
    if n_folds < 2:
        raise DataPrepError(root, f"need at least 2 folds, got {n_folds}")
    for name, fold in (("val_fold", val_fold), ("test_fold", test_fold)):
        if fold is not None and not 0 <= fold < n_folds:
            raise DataPrepError(root, f"{name} {fold} is not a fold of 0..{n_folds - 1}")
    if test_fold is not None and test_fold == val_fold:
        raise DataPrepError(root, f"test_fold and val_fold are both {val_fold}: they must differ")
    if test_fold is not None and n_folds < 3:
        raise DataPrepError(root, f"a test fold needs at least 3 folds (training, validation, test), got {n_folds}")

    cases = collect_cases(root)
    split = [c for c in cases if c["label"] or not require_labels]
    unlabelled = [c for c in cases if not c["label"]] if require_labels else []
    if not split:
        raise DataPrepError(root, "no case has a label image (convert with annotations, or use require_labels=False)")
    folds = patient_kfold(split, n_folds=n_folds, seed=seed, stratify_by_nodules=stratify_by_nodules)

    training, validation, testing = [], [], []
    for c in split:
        f = folds[c["case_id"]]
        target = validation if f == val_fold else testing if f == test_fold else training
        target.append(_entry(c, f, root, base_dir, with_label=True))
    testing += [_entry(c, None, root, base_dir, with_label=False) for c in unlabelled]
    n_patients = len({c["patient_id"] for c in split})
    for name, items in (("training", training), ("validation", validation)) + (
            (("testing", [e for e in testing if e["fold"] is not None]),) if test_fold is not None else ()):
        if not items:
            raise DataPrepError(root, f"the {name} list would be empty: {n_patients} patient(s) with "
                                      f"{'labelled ' if require_labels else ''}cases for {n_folds} folds")
    return {
        "description": "lungnod datalist: patient-level folds (no patient in two folds)",
        "training": training, "validation": validation, "testing": testing,
        "n_folds": n_folds, "seed": seed, "val_fold": val_fold, "test_fold": test_fold,
        "stratify_by_nodules": stratify_by_nodules, "require_labels": require_labels,
        "numTraining": len(training), "numValidation": len(validation), "numTest": len(testing),
    }


def write_datalist(root, out_path=None, **kw) -> Path:
    """Write :func:`make_datalist` of ``root`` as JSON (atomically) -> its path (default ``<root>/datalist.json``).

    Keyword arguments go to :func:`make_datalist`; paths inside are relative to ``out_path``'s folder.
    """
    root = Path(root)
    out_path = Path(out_path) if out_path is not None else root / DATALIST_NAME
    data = make_datalist(root, base_dir=out_path.parent.resolve(), **kw)
    write_text_atomic(out_path, json.dumps(data, indent=1) + "\n")
    return out_path
