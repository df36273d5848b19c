"""Evaluation of the classification bundle on labelled patches (``evaluate.json``).

:class:`PatchMetricsHandler` collects, per patch, the nodule probability (``pred`` after the sigmoid),
the label and the patch's case/kind, and at the end writes ``<output_dir>/metrics.json`` (overall and
per kind: sensitivity, specificity, precision, recall, F1, accuracy, ROC AUC at ``threshold``) and
``<output_dir>/patch_predictions.csv``, and puts the overall numbers into ``engine.state.metrics``
as ``eval_<name>`` (printed by StatsHandler, logged by MLflow).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from data_prep.nifti_io import write_text_atomic
from lungnod_ext.metrics.classification import binary_classification_metrics


def _clean(v):
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


class PatchMetricsHandler:
    def __init__(self, output_dir, threshold: float = 0.5) -> None:
        self.output_dir = Path(output_dir)
        self.threshold = float(threshold)
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._finish)

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        outs = out if isinstance(out, list) else [out]
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch] * len(outs)
        for item, src in zip(outs, batch):
            src = src if isinstance(src, dict) else {}
            self.rows.append({"image": str(src.get("image_path", src.get("case", ""))),
                              "case": src.get("case", ""), "kind": src.get("kind", ""),
                              "label": int(torch.as_tensor(item["label"]).reshape(-1)[0]),
                              "probability": float(torch.as_tensor(item["pred"]).reshape(-1)[0])})

    def results(self) -> dict:
        y = [r["label"] for r in self.rows]
        p = [r["probability"] for r in self.rows]
        res = {"n_patches": len(self.rows), "n_positive": int(sum(y)),
               "overall": binary_classification_metrics(y, p, self.threshold) if self.rows else {}, "per_kind": {}}
        for kind in sorted({r["kind"] for r in self.rows}):
            sub = [r for r in self.rows if r["kind"] == kind]
            res["per_kind"][kind] = binary_classification_metrics([r["label"] for r in sub],
                                                                  [r["probability"] for r in sub], self.threshold)
        return res

    def _finish(self, engine: Engine) -> None:
        res = self.results()
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["image", "case", "kind", "label", "probability"], lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.output_dir / "patch_predictions.csv", buf.getvalue())
        write_text_atomic(self.output_dir / "metrics.json", json.dumps(_clean(res), indent=2, default=float) + "\n")
        for k, v in res["overall"].items():
            if isinstance(v, (int, float)) and np.isfinite(v):
                engine.state.metrics[f"eval_{k}"] = float(v)
