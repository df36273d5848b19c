"""Evaluation of the segmentation bundle: per case and overall voxel metrics and per-nodule detection.

Voxel level (on the evaluation grid, i.e. after the bundle's resampling): Dice, IoU, precision, recall
of the binary mask against the reference label. Nodule level: the reference nodules are the 3D
connected components (26-connectivity) of the label; a reference nodule is detected (TP) when any
candidate overlaps it by at least one voxel; a candidate overlapping no reference nodule is a false
positive. Sensitivity = TP / reference nodules, FP/scan = false positives / scans. The LUNA16 FROC/CPM
(centre-in-radius matching, candidates scored by their maximum probability) is given beside it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from ignite.engine import Engine, Events
from scipy import ndimage as ndi

from data_prep.nifti_io import write_text_atomic
from lungnod_ext.data.meta import case_id_from_meta, channel_zyx, geometry_from_meta_tensor
from lungnod_ext.inference.candidates import extract_candidates_and_labels
from lungnod_ext.metrics.detection import froc
from lungnod_ext.metrics.overlap import confusion_counts, voxel_metrics

_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)
PER_CASE_COLUMNS = ("case", "dice", "iou", "precision", "recall", "n_reference", "tp", "fn", "fp", "n_candidates")


def overlap_detection(candidate_labels_zyx: np.ndarray, reference_mask_zyx: np.ndarray) -> dict[str, int]:
    """Overlap matching of candidate ids (0 = background) against the reference mask's components.

    Returns ``n_reference``, ``tp`` (references overlapped by >= 1 candidate voxel), ``fn``, ``fp``
    (candidates overlapping no reference) and ``n_candidates``.
    """
    cand = np.asarray(candidate_labels_zyx)
    ref_labels, n_ref = ndi.label(np.asarray(reference_mask_zyx) > 0, structure=_STRUCTURE_26)
    both = (cand > 0) & (ref_labels > 0)
    hit_refs = np.unique(ref_labels[both])
    hit_cands = np.unique(cand[both])
    cand_ids = np.unique(cand[cand > 0])
    tp = int(hit_refs.size)
    return {"n_reference": int(n_ref), "tp": tp, "fn": int(n_ref) - tp,
            "fp": int(np.setdiff1d(cand_ids, hit_cands).size), "n_candidates": int(cand_ids.size)}


def reference_nodules(label_zyx: np.ndarray, geometry) -> list[dict]:
    """Reference nodules of a label mask as candidate-like dicts (``centre_lps``, ``diameter_mm``, ...)."""
    return extract_candidates_and_labels(np.asarray(label_zyx, dtype=np.float32), geometry, threshold=0.5,
                                         min_volume_mm3=0.0)[0]


def summarise(rows: Sequence[Mapping], detections: Sequence[Sequence[Mapping]],
              references: Sequence[Sequence[Mapping]], pooled: Mapping[str, int]) -> dict:
    """Overall metrics from per-case rows: case means of the voxel metrics, pooled (all voxels) Dice,
    nodule sensitivity and FP/scan, LUNA16 CPM."""
    n = len(rows)
    out: dict = {"n_cases": n}
    for k in ("dice", "iou", "precision", "recall"):
        vals = [float(r[k]) for r in rows if not np.isnan(float(r[k]))]
        out[f"mean_{k}"] = float(np.mean(vals)) if vals else float("nan")
    tp_fp_fn = pooled["tp"], pooled["fp"], pooled["fn"]
    out["pooled_dice"] = 2 * tp_fp_fn[0] / max(2 * tp_fp_fn[0] + tp_fp_fn[1] + tp_fp_fn[2], 1)
    n_ref = sum(int(r["n_reference"]) for r in rows)
    tp = sum(int(r["tp"]) for r in rows)
    out.update({"n_reference_nodules": n_ref, "detected_nodules": tp,
                "sensitivity": tp / n_ref if n_ref else float("nan"),
                "false_positives": sum(int(r["fp"]) for r in rows),
                "fp_per_scan": sum(int(r["fp"]) for r in rows) / n if n else float("nan")})
    if n_ref:
        result = froc(list(detections), list(references), n_scans=n, score_key="max_prob")
        out["cpm"] = result.cpm
        out["froc_sensitivities"] = dict(zip([str(r) for r in result.fp_rates.tolist()],
                                             result.sensitivities.tolist()))
    else:
        out["cpm"] = float("nan")
    return out


def _clean(v):
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


class SegmentationEvaluationHandler:
    """Ignite handler for the bundle's evaluator (``evaluate.json``).

    Per iteration it reads the decollated outputs (``pred``: binary (1, X, Y, Z) mask; ``label``;
    ``candidate_labels`` and ``candidates`` from ExtractCandidatesd), and at the end of the run writes
    ``<output_dir>/metrics_per_case.csv`` and ``<output_dir>/metrics.json`` (overall + per case, written
    atomically) and puts the overall numbers into ``engine.state.metrics`` as ``eval_<name>`` so the
    StatsHandler prints them and the MLflow handler (attached after this one) logs them.
    """

    def __init__(self, output_dir, pred_key: str = "pred", label_key: str = "label",
                 candidates_key: str = "candidates", candidate_labels_key: str = "candidate_labels") -> None:
        self.output_dir = Path(output_dir)
        self.pred_key, self.label_key = pred_key, label_key
        self.candidates_key, self.candidate_labels_key = candidates_key, candidate_labels_key
        self._reset(None)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._finish)

    def _reset(self, engine) -> None:
        self.rows: list[dict] = []
        self.detections: list[list[dict]] = []
        self.references: list[list[dict]] = []
        self.pooled = {"tp": 0, "fp": 0, "fn": 0}

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        for item in out if isinstance(out, list) else [out]:
            self.add_case(item)

    def add_case(self, item: Mapping) -> dict:
        """Score one decollated case; returns its row."""
        pred_t, label_t = item[self.pred_key], item[self.label_key]
        pred = channel_zyx(pred_t) > 0.5
        label = channel_zyx(label_t) > 0.5
        geometry = geometry_from_meta_tensor(label_t)
        cand_labels = item.get(self.candidate_labels_key)
        cand_zyx = channel_zyx(cand_labels) if cand_labels is not None else ndi.label(pred, _STRUCTURE_26)[0]
        counts = confusion_counts(pred, label)
        for k in self.pooled:
            self.pooled[k] += int(counts[k])
        row = {"case": case_id_from_meta(label_t), **voxel_metrics(pred, label), **overlap_detection(cand_zyx, label)}
        self.rows.append({k: row[k] for k in PER_CASE_COLUMNS})
        self.detections.append(list(item.get(self.candidates_key) or []))
        self.references.append(reference_nodules(label, geometry))
        return row

    def results(self) -> dict:
        return {"overall": summarise(self.rows, self.detections, self.references, self.pooled),
                "per_case": self.rows,
                "definitions": __doc__.strip().splitlines()[0]}

    def _finish(self, engine: Engine) -> None:
        res = self.results()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=PER_CASE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomic(self.output_dir / "metrics_per_case.csv", buf.getvalue())
        write_text_atomic(self.output_dir / "metrics.json", json.dumps(_clean(res), indent=2, allow_nan=False) + "\n")
        for k, v in res["overall"].items():
            if isinstance(v, (int, float)) and np.isfinite(v):
                engine.state.metrics[f"eval_{k}"] = float(v)
