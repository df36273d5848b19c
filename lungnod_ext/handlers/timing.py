"""How a training step's time splits between waiting for data and computing (for the <10% data-wait goal).

:class:`DataWaitTimer` (an ignite handler for the trainer) adds up, per epoch, the seconds between
``GET_BATCH_STARTED`` and ``GET_BATCH_COMPLETED`` (the loader producing the batch) and the whole
iteration time, and writes ``[{"epoch", "iterations", "data_s", "step_s", "data_share", "steps_per_s"}]``
to ``path`` (JSON, atomically) after every epoch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ignite.engine import Engine, Events

from data_prep.nifti_io import write_text_atomic


class DataWaitTimer:
    def __init__(self, path) -> None:
        self.path = Path(path)
        self.rows: list[dict] = []
        self._data = self._total = 0.0
        self._n = 0
        self._t_get = self._t_epoch = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._get_started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._get_completed)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _epoch_started(self, engine: Engine) -> None:
        self._data = self._total = 0.0
        self._n = 0
        self._t_epoch = time.perf_counter()

    def _get_started(self, engine: Engine) -> None:
        self._t_get = time.perf_counter()

    def _get_completed(self, engine: Engine) -> None:
        self._data += time.perf_counter() - self._t_get

    def _iteration_completed(self, engine: Engine) -> None:
        self._n += 1

    def _epoch_completed(self, engine: Engine) -> None:
        # the epoch's wall time minus other epoch-end handlers (validation runs after this handler's turn)
        total = time.perf_counter() - self._t_epoch
        self.rows.append({"epoch": engine.state.epoch, "iterations": self._n, "data_s": round(self._data, 4),
                          "step_s": round(total, 4), "data_share": round(self._data / total, 4) if total else 0.0,
                          "steps_per_s": round(self._n / total, 3) if total else 0.0})
        write_text_atomic(self.path, json.dumps(self.rows, indent=1) + "\n")
