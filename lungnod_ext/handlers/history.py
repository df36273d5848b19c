"""Ignite handlers that keep a per-epoch history as JSON (loss, metrics), for people and tests."""

from __future__ import annotations

import json
from pathlib import Path

from ignite.engine import Engine, Events


def _write(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(rows, indent=1))
    tmp.replace(path)


class LossHistoryHandler:
    """Mean training loss of every epoch -> ``path`` as ``[{"epoch": 1, "loss": 0.61}, ...]``.

    A run resumed from a checkpoint keeps the file's rows of the epochs before the first one it trains.
    """

    def __init__(self, path, output_key: str = "loss"):
        self.path = Path(path)
        self.output_key = output_key
        self.rows: list[dict] = []
        self._sum, self._n = 0.0, 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_done)

    def _resume(self, epoch: int) -> None:
        if not self.rows and epoch > 1 and self.path.is_file():
            self.rows = [r for r in json.loads(self.path.read_text()) if int(r["epoch"]) < epoch]

    def _reset(self, engine: Engine) -> None:
        self._sum, self._n = 0.0, 0

    def _accumulate(self, engine: Engine) -> None:
        out = engine.state.output
        items = out if isinstance(out, list) else [out]
        for item in items:
            loss = item.get(self.output_key) if isinstance(item, dict) else item
            if loss is not None:
                self._sum += float(loss)
                self._n += 1
                break

    def _epoch_done(self, engine: Engine) -> None:
        self._resume(engine.state.epoch)
        self.rows.append({"epoch": engine.state.epoch, "loss": self._sum / max(self._n, 1), "iterations": self._n})
        _write(self.path, self.rows)


class MetricHistoryHandler:
    """Every metric of an evaluator run -> ``path`` as ``[{"run": 1, "val_mean_dice": 0.7, ...}, ...]``."""

    def __init__(self, path):
        self.path = Path(path)
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._done)

    def _done(self, engine: Engine) -> None:
        row = {"run": len(self.rows) + 1}
        for k, v in engine.state.metrics.items():
            try:                        # python, numpy or one-element torch numbers (ROCAUC may give either)
                row[k] = float(v)
            except (TypeError, ValueError):
                continue
        self.rows.append(row)
        _write(self.path, self.rows)
