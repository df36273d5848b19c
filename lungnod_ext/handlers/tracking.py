"""Experiment-tracking extras for the bundles: what MONAI's MLflow handler does not log by itself.

MONAI's ``--tracking mlflow`` attaches an ``MLFlowHandler`` to the trainer / evaluator (per-iteration loss,
per-epoch metrics, the executed config). :class:`MLflowRunExtras` adds, to that same run, the bundle's
hyper-parameters and files (best checkpoint, loss/metric histories, validation overlays, metrics
tables). Without tracking it does nothing, so the configs can always list it.

:class:`ValidationOverlayHandler` writes, after every validation, one PNG per validation case (up to
``max_cases``): the axial slice with the most reference voxels, reference contour in green, prediction
in red, so a person sees what the numbers mean.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from ignite.engine import Engine, Events

from lungnod_ext.data.meta import case_id_from_meta, channel_zyx
from lungnod_ext.inference.overlays import overlay_slice, write_png

log = logging.getLogger(__name__)


def _mlflow_handlers(engine: Engine) -> list:
    """The MONAI MLFlowHandler instances attached to ``engine`` (found through their bound methods)."""
    from monai.handlers import MLFlowHandler

    found = []
    for handlers in engine._event_handlers.values():
        for entry in handlers:
            owner = getattr(entry[0], "__self__", None)
            if isinstance(owner, MLFlowHandler) and owner not in found:
                found.append(owner)
    return found


def _flat_params(params: Mapping, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat_params(v, key + "."))
        else:
            out[key] = str(v)[:500]
    return out


class MLflowRunExtras:
    """At the engine's end, log ``params`` and the files/folders in ``artifacts`` to the run of the
    MLFlowHandler attached to the same engine (``--tracking mlflow``); a no-op without one.
    Missing paths are skipped (e.g. no checkpoint when validation never ran). A path with ``*`` is a glob
    whose newest match is logged (the executed config ``config_<time>.json`` that ``--tracking`` writes:
    MONAI only logs it itself when ``output_dir`` keeps its default expression)."""

    def __init__(self, params: Mapping | None = None, artifacts: Sequence[str] = (), artifact_path: str | None = None):
        self.params = dict(params or {})
        self.artifacts = [str(a) for a in artifacts if a]
        self.artifact_path = artifact_path

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self._log)

    def _log(self, engine: Engine) -> None:
        for handler in _mlflow_handlers(engine):
            run = handler.cur_run
            if run is None:
                continue
            run_id = run.info.run_id
            existing = set(handler.client.get_run(run_id).data.params)
            logged = {a.path for a in handler.client.list_artifacts(run_id, self.artifact_path)}
            for k, v in _flat_params(self.params).items():
                if k not in existing:
                    handler.client.log_param(run_id, k, v)
            for a in self.artifacts:
                if "*" in a:
                    matches = sorted(Path(a).parent.glob(Path(a).name), key=lambda q: q.stat().st_mtime)
                    if not matches:
                        continue
                    a = str(matches[-1])
                p = Path(a)
                if p.name in logged:
                    continue
                if p.is_file():
                    handler.client.log_artifact(run_id, str(p), self.artifact_path)
                elif p.is_dir() and any(p.iterdir()):
                    handler.client.log_artifacts(run_id, str(p), (self.artifact_path + "/" if self.artifact_path else "") + p.name)
            log.info("logged %d params and %d artifact paths to MLflow run %s", len(self.params), len(self.artifacts), run_id)


def validation_overlay(image_zyx: np.ndarray, label_zyx: np.ndarray | None, pred_zyx: np.ndarray,
                       window=(0.0, 1.0), title: str = "") -> np.ndarray:
    """RGB picture of the axial slice with the most reference (else predicted) voxels of a RAS-oriented
    (z, y, x) volume, shown radiologically (patient right on the left, anterior up): reference contour
    green, prediction contour red."""
    ref = label_zyx if label_zyx is not None and np.any(label_zyx) else pred_zyx
    areas = np.count_nonzero(ref.reshape(ref.shape[0], -1), axis=1)
    z = int(np.argmax(areas)) if areas.any() else ref.shape[0] // 2

    def show(a):  # RAS (y, x): +x = patient right... flip both axes for radiological display
        return None if a is None else np.ascontiguousarray(np.asarray(a)[z][::-1, ::-1])

    rgb = overlay_slice(show(image_zyx), show(label_zyx), window=window, contour_rgb=(0, 255, 0),
                        text_lines=[f"{title} slice {z}", "green reference, red prediction"], zoom=2.0)
    pred = (show(pred_zyx) > 0.5).astype(np.uint8)
    if pred.any():
        pred = cv2.resize(pred, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(pred, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, contours, -1, (255, 0, 0), 1, cv2.LINE_8)
    return rgb


class ValidationOverlayHandler:
    """After each validation run, ``<output_dir>/<case>.png`` for the first ``max_cases`` cases (see module doc).
    Reads ``image`` (windowed to [0, 1]), ``label`` and ``pred`` (binary) from the decollated outputs."""

    def __init__(self, output_dir, max_cases: int = 4, image_key: str = "image", label_key: str = "label",
                 pred_key: str = "pred") -> None:
        self.output_dir = Path(output_dir)
        self.max_cases = max_cases
        self.image_key, self.label_key, self.pred_key = image_key, label_key, pred_key
        self._done = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._done = 0

    def _write(self, engine: Engine) -> None:
        out = engine.state.output
        for item in out if isinstance(out, list) else [out]:
            if self._done >= self.max_cases or self.image_key not in item:
                return
            case = case_id_from_meta(item[self.image_key])
            label = channel_zyx(item[self.label_key]) if self.label_key in item else None
            rgb = validation_overlay(channel_zyx(item[self.image_key]), label, channel_zyx(item[self.pred_key]),
                                     title=case)
            write_png(self.output_dir / f"{case}.png", rgb)
            self._done += 1
