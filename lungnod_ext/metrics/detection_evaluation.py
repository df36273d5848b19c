"""Detection evaluation of pipeline output against a converted reference, stage 1 alone and stage 1+2.

Reference: data_prep's ``nodules.csv`` (centre LPS mm, equivalent diameter, voxel bounding box) and the
image headers of ``images/<case>.nii.gz`` (to put the boxes in LPS mm). Predictions: the pipeline's
``<case>/<case>_candidates.json`` (every stage-1 candidate, with ``max_prob`` and, when the classifier
ran, ``probability``). Cases in the reference without a prediction folder are not evaluated; a
prediction folder without reference nodules counts as a scan with no nodule.

The reference standard is LUNA16's: nodules marked by at least ``min_readers`` readers (3; where the table has
``n_readers``). The other nodules and the LIDC point marks of ``small_marks.csv`` (< 3 mm nodules and non-nodules,
10 mm spheres as the LUNA16 script sizes them) are irrelevant findings: a candidate on one is neither a true nor a
false positive (left out of the box and candidate-level metrics too), and a missed one is not counted.

Stage 1 scores a candidate by its segmentation ``max_prob``; stage 1+2 by the classifier's ``cls_prob``
(present only when the classifier ran).
For each: LUNA16 matching (centre within the reference radius), sensitivity / precision / F1 / FP per
scan at the operating threshold, FROC at 1/8..8 FP/scan and CPM, mAP@0.5 and mAP@0.5:0.95 on 3D boxes
(LPS mm), and candidate-level (patch) sensitivity / specificity / AUC of the score.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import nibabel as nib

from data_prep.errors import InputNotFoundError
from data_prep.coords import Geometry, bbox_lps
from lungnod_ext.metrics.classification import binary_classification_metrics
from lungnod_ext.metrics.detection import detection_summary, froc, map_50, map_50_95, match_detections
from lungnod_ext.metrics.model_evaluation import read_small_marks


LUNA16_MIN_READERS = 3   # LUNA16's reference standard: nodules >= 3 mm accepted by at least 3 of 4 readers


def load_reference(converted_dir, min_readers: int = LUNA16_MIN_READERS) -> dict[str, list[dict]]:
    """Reference nodules per case from ``<converted_dir>/nodules.csv`` (+ image headers for LPS boxes), the
    irrelevant findings (module doc) among them with ``exclude: True``, the point marks appended as such."""
    root = Path(converted_dir)
    table = root / "nodules.csv"
    if not table.is_file():
        raise InputNotFoundError(table, "reference nodule table not found (a data-prep convert output folder?)")
    refs: dict[str, list[dict]] = defaultdict(list)
    geometries: dict[str, Geometry] = {}
    with open(table, newline="") as f:
        for row in csv.DictReader(f):
            case = row["case_id"]
            if case not in geometries:
                img = nib.load(str(root / "images" / f"{case}.nii.gz"))
                geometries[case] = Geometry.from_affine_ras(img.affine, tuple(int(s) for s in img.shape[:3]))
            bbox = [int(float(row[k])) for k in ("bbox_i0", "bbox_j0", "bbox_k0", "bbox_i1", "bbox_j1", "bbox_k1")]
            refs[case].append({"centre_lps": [float(row[f"centre_{a}_lps_mm"]) for a in "xyz"],
                               "diameter_mm": float(row["diameter_mm"]), "box": bbox_lps(geometries[case], bbox),
                               "nodule_id": row["nodule_id"], "exclude": _too_few_readers(row, min_readers)})
    for case, marks in read_small_marks(root / "small_marks.csv").items():
        refs[case].extend(marks)
    return dict(refs)


def _too_few_readers(row: dict, min_readers: int) -> bool:
    """Whether a ``nodules.csv`` row is marked by fewer than ``min_readers`` readers (no count: it counts)."""
    text = (row.get("n_readers") or "").strip()
    return bool(text) and int(float(text)) < min_readers


def load_predictions(pred_dir) -> dict[str, list[dict]]:
    """Candidate lists per case from a pipeline output folder (``<case>/<case>_candidates.json``)."""
    root = Path(pred_dir)
    out = {}
    for path in sorted(root.glob("*/*_candidates.json")):
        doc = json.loads(path.read_text())
        out[doc.get("case") or path.parent.name] = doc["candidates"]
    if not out:
        raise InputNotFoundError(root, "no <case>/<case>_candidates.json found (a lungnod detect output folder?)")
    return out


def evaluate_stage(predictions: dict[str, list[dict]], references: dict[str, list[dict]], score_key: str,
                   threshold: float) -> dict:
    """All detection metrics (module doc) of one scoring, over the predicted cases."""
    cases = sorted(predictions)
    dets = [[{**c, "score": float(c[score_key])} for c in predictions[case]] for case in cases]
    refs = [references.get(case, []) for case in cases]
    summary = detection_summary(dets, refs, threshold=threshold)
    n_all = sum(len(d) for d in dets)
    curve = froc(dets, refs)
    # the box and candidate-level metrics leave the candidates on irrelevant findings out, like the FROC; one
    # match per case gives both those and the false positives (which hit nothing, so leaving the others out
    # changes no match)
    kept, y_true, y_score = [], [], []
    for ds, rs in zip(dets, refs):
        match = match_detections(ds, rs, mode="luna16")
        skip, false = set(match.on_excluded_only), set(match.fp)
        keep = [i for i in range(len(ds)) if i not in skip]
        kept.append([ds[i] for i in keep])
        y_true += [int(i not in false) for i in keep]
        y_score += [ds[i]["score"] for i in keep]
    dets = kept
    pred_boxes = [[(d["bbox_lps_mm"], d["score"]) for d in ds] for ds in dets]
    gt_boxes = [[r["box"] for r in rs if not r.get("exclude")] for rs in refs]
    patch = binary_classification_metrics(y_true, y_score, threshold) if y_true else {}
    return {"score": score_key, "threshold": threshold, "n_scans": len(cases),
            "n_reference_nodules": sum(not r.get("exclude") for rs in refs for r in rs),
            "n_irrelevant_findings": sum(bool(r.get("exclude")) for rs in refs for r in rs),
            "n_candidates_on_irrelevant_findings": n_all - sum(len(d) for d in dets),
            "n_candidates": n_all,
            **{k: summary[k] for k in ("tp", "fp", "fn", "sensitivity", "precision", "f1", "fp_per_scan")},
            "froc": dict(zip([str(r) for r in curve.fp_rates.tolist()], curve.sensitivities.tolist())),
            "cpm": curve.cpm, "map_50": map_50(pred_boxes, gt_boxes), "map_50_95": map_50_95(pred_boxes, gt_boxes),
            "candidate_sensitivity": patch.get("sensitivity"), "candidate_specificity": patch.get("specificity"),
            "candidate_auc": patch.get("roc_auc")}


def evaluate_pipeline(pred_dir, converted_dir, threshold: float = 0.5, min_readers: int = LUNA16_MIN_READERS) -> dict:
    """Stage 1 (``max_prob``) and, when present, stage 1+2 (``probability``) results."""
    preds = load_predictions(pred_dir)
    refs = load_reference(converted_dir, min_readers)
    result = {"stage1": evaluate_stage(preds, refs, "max_prob", threshold)}
    if any(preds.values()) and all("cls_prob" in c for cs in preds.values() for c in cs):
        result["stage1+2"] = evaluate_stage(preds, refs, "cls_prob", threshold)
    return result


ROWS = ("n_scans", "n_reference_nodules", "n_irrelevant_findings", "n_candidates", "n_candidates_on_irrelevant_findings",
        "tp", "fp", "fn", "sensitivity", "precision", "f1", "fp_per_scan", "cpm", "map_50", "map_50_95",
        "candidate_sensitivity", "candidate_specificity", "candidate_auc")


def format_table(result: dict) -> str:
    """A plain-text table: one row per metric, one column per stage (FROC points included)."""
    stages = list(result)
    w = max(map(len, ROWS)) + 1
    lines = [f"{'metric':<{w}}" + "".join(f"{s:>12}" for s in stages)]

    def cell(v):
        if v is None:
            return f"{'-':>12}"
        return f"{v:>12d}" if isinstance(v, int) else f"{v:>12.3f}"

    for key in ROWS:
        lines.append(f"{key:<{w}}" + "".join(cell(result[s].get(key)) for s in stages))
    for rate in result[stages[0]]["froc"]:
        lines.append(f"{'sens @ ' + rate + ' FP/scan':<{w}}" + "".join(cell(result[s]["froc"][rate]) for s in stages))
    return "\n".join(lines)
