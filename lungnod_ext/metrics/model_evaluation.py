"""Scoring trained models on held-out scans: detection by subset and per-nodule Dice, stage 1 vs 1+2.

Inputs are what ``lungnod detect`` writes (``<case>/<case>_candidates.json`` with ``max_prob`` and, after
stage 2, ``cls_prob``; ``<case>/<case>_labels.nii.gz``, the candidate components on the CT's grid) and a
reference table in ``nodules.csv`` columns (``case_id``, ``nodule_id``, ``centre_{x,y,z}_lps_mm``,
``diameter_mm``; optional ``n_readers``, ``source``, ``type``) with an instance mask per case (voxel value =
``nodule_id``) for Dice.

Detection follows LUNA16: a candidate hits a nodule when its centre is closer than the nodule's radius.
A *subset* (e.g. nodules marked by >= 3 readers, or inserted nodules of 3-6 mm) is scored with every
other reference nodule and every LIDC point mark (a < 3 mm nodule or a non-nodule) set to ``exclude``: a hit on
one of them is neither a true nor a false positive, a miss is not counted (LUNA16's ``annotations_excluded``
rule: its irrelevant findings are nodules < 3 mm, non-nodules and nodules of fewer than 3 readers).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from lungnod_ext.metrics.detection import detection_summary, froc

SMALL_MARK_DIAMETER_MM = 10.0         # a hit within 5 mm of a LIDC point mark is ignored (LUNA16's size for one)
EXCLUDED_MARK_KINDS = ("small_nodule", "non_nodule")   # LUNA16's irrelevant findings among the LIDC point marks
SIZE_BANDS = ((3.0, 6.0), (6.0, 10.0), (10.0, 20.0), (20.0, 40.0))


def size_band(diameter_mm: float) -> str:
    for lo, hi in SIZE_BANDS:
        if lo <= diameter_mm < hi:
            return f"{lo:g}-{hi:g} mm"
    return "< 3 mm" if diameter_mm < SIZE_BANDS[0][0] else f">= {SIZE_BANDS[-1][1]:g} mm"


def read_references(table_csv, cases: Sequence[str] | None = None) -> dict[str, list[dict]]:
    """Reference nodules per case from a ``nodules.csv``-style table (module doc)."""
    out: dict[str, list[dict]] = {}
    with open(table_csv, newline="") as f:
        for row in csv.DictReader(f):
            if cases is not None and row["case_id"] not in cases:
                continue
            out.setdefault(row["case_id"], []).append({
                "nodule_id": int(float(row["nodule_id"])),
                "centre_lps": [float(row[f"centre_{a}_lps_mm"]) for a in "xyz"],
                "diameter_mm": float(row["diameter_mm"]),
                "n_readers": int(float(row["n_readers"])) if row.get("n_readers") else None,
                "source": row.get("source") or "lidc_xml", "type": row.get("type") or "real",
                "texture_median": float(row["texture_median"]) if row.get("texture_median") else None})
    return out


def read_small_marks(table_csv, cases: Sequence[str] | None = None,
                     kinds: Sequence[str] = EXCLUDED_MARK_KINDS) -> dict[str, list[dict]]:
    """LIDC point marks of ``small_marks.csv`` (< 3 mm nodules and non-nodules by default) per case as excluded
    references: 10 mm spheres at their LPS centres (mm), as the LUNA16 script sizes a mark with no diameter."""
    out: dict[str, list[dict]] = {}
    path = Path(table_csv)
    if not path.is_file():
        return out
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("kind") not in kinds or (cases is not None and row["case_id"] not in cases):
                continue
            out.setdefault(row["case_id"], []).append({
                "centre_lps": [float(row[f"centre_{a}_lps_mm"]) for a in "xyz"],
                "diameter_mm": SMALL_MARK_DIAMETER_MM, "exclude": True, "small_mark": True,
                "kind": row.get("kind")})
    return out


def subset_references(refs: Mapping[str, list[dict]], keep: Callable[[dict], bool],
                      marks: Mapping[str, list[dict]] | None = None) -> dict[str, list[dict]]:
    """References per case with ``exclude`` set on every nodule ``keep`` rejects, small marks appended."""
    cases = set(refs) | set(marks or {})
    return {c: [{**r, "exclude": not keep(r)} for r in refs.get(c, [])] + list((marks or {}).get(c, []))
            for c in cases}


def score_stage(detections: Mapping[str, list[dict]], refs: Mapping[str, list[dict]], score_key: str,
                threshold: float = 0.5) -> dict:
    """FROC (0.125-8 FP/scan), CPM and the operating point at ``threshold`` over the scans in ``detections``."""
    cases = sorted(detections)
    dets = [[{**d, "score": float(d[score_key])} for d in detections[c]] for c in cases]
    rs = [refs.get(c, []) for c in cases]
    curve = froc(dets, rs, n_scans=len(cases))
    at = detection_summary(dets, rs, n_scans=len(cases), threshold=threshold)
    return {"n_scans": len(cases), "n_nodules": curve.n_references,
            "froc": {f"{r:g}": float(s) for r, s in zip(curve.fp_rates, curve.sensitivities)}, "cpm": curve.cpm,
            "sensitivity": at["sensitivity"], "fp_per_scan": at["fp_per_scan"], "tp": at["tp"], "fn": at["fn"],
            "fp": at["fp"], "threshold": threshold}


def _paired_masks(candidate_labels_zyx: np.ndarray, reference_instances_zyx: np.ndarray, nodule_ids: Sequence[int],
                  kept_ids: Sequence[int] | None = None):
    """Yield ``(id, reference mask, predicted mask or None)`` for each reference nodule (instance id) present:
    the prediction is the union of the candidate components that overlap it (only ``kept_ids`` if given)."""
    if candidate_labels_zyx.shape != reference_instances_zyx.shape:
        raise ValueError(f"candidate labels {candidate_labels_zyx.shape} and reference {reference_instances_zyx.shape} differ")
    kept = None if kept_ids is None else np.asarray(list(kept_ids), dtype=np.int64)
    for nid in nodule_ids:
        ref = reference_instances_zyx == nid
        if not ref.any():
            continue
        touching = np.unique(candidate_labels_zyx[ref])
        touching = touching[touching > 0]
        if kept is not None:
            touching = touching[np.isin(touching, kept)]
        yield int(nid), ref, (np.isin(candidate_labels_zyx, touching) if touching.size else None)


def per_nodule_dice(candidate_labels_zyx: np.ndarray, reference_instances_zyx: np.ndarray,
                    nodule_ids: Sequence[int], kept_ids: Sequence[int] | None = None) -> dict[int, float]:
    """Dice of each reference nodule (instance id) against the candidate components that overlap it.

    candidate_labels_zyx: the candidate label map (0 background, id per component); ``kept_ids``: only these
    components count (e.g. the reported nodules), default all. 0.0 for a nodule no component touches."""
    return {nid: 0.0 if pred is None else float(2.0 * (pred & ref).sum() / (pred.sum() + ref.sum()))
            for nid, ref, pred in _paired_masks(candidate_labels_zyx, reference_instances_zyx, nodule_ids, kept_ids)}


def per_nodule_axes(candidate_labels_zyx: np.ndarray, reference_instances_zyx: np.ndarray,
                    nodule_ids: Sequence[int], spacing_zyx_mm: Sequence[float]) -> dict[int, dict]:
    """Long / short axis (mm, :func:`lungnod_ext.inference.measurements.axial_axes`) of each reference nodule
    (instance id) and of the candidate components that overlap it, as :func:`per_nodule_dice` pairs them:
    ``{id: {"reference": [long, short], "predicted": [long, short] or None when no component touches it}}``."""
    from lungnod_ext.inference.measurements import axial_axes

    out = {}
    for nid, ref, pred in _paired_masks(candidate_labels_zyx, reference_instances_zyx, nodule_ids):
        r = axial_axes(ref, spacing_zyx_mm)
        p = None if pred is None else axial_axes(pred, spacing_zyx_mm)
        out[nid] = {"reference": [r["long_axis_mm"], r["short_axis_mm"]],
                    "predicted": None if p is None else [p["long_axis_mm"], p["short_axis_mm"]]}
    return out
