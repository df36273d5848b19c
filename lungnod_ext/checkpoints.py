"""Checkpoint writing in the layout the bundles promise: ``models/model.pt`` = ``{"model": state_dict}``.

MONAI's ``CheckpointSaver`` with one object saves the bare state dict (ignite's rule); users, MONAI
Label and ``ckpt_export --key_in_ckpt model`` expect the ``{"model": ...}`` wrapper, so the bundles use
:class:`BestModelSaver` for the best model. Files are written to a temporary name and renamed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from ignite.engine import Engine, Events

log = logging.getLogger(__name__)


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers (state dict keys without ``module.``)."""
    while hasattr(network, "module") and isinstance(network, (torch.nn.parallel.DistributedDataParallel,
                                                              torch.nn.DataParallel)):
        network = network.module
    return network


def save_model(network: torch.nn.Module, path) -> Path:
    """``torch.save({"model": state_dict}, path)``, atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part-{os.getpid()}")
    try:
        torch.save({"model": unwrap(network).state_dict()}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class BestModelSaver:
    """Evaluator handler: after each validation whose key metric is the best so far (MONAI's
    ``engine.state.best_metric_epoch`` equals the current epoch), save the network to ``save_dir/filename``."""

    def __init__(self, save_dir, network: torch.nn.Module, filename: str = "model.pt") -> None:
        self.path = Path(save_dir) / filename
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._maybe_save)

    def _maybe_save(self, engine: Engine) -> None:
        if getattr(engine.state, "best_metric_epoch", -1) == engine.state.epoch:
            save_model(self.network, self.path)
            log.info("saved best model (%s=%.4f, epoch %d) to %s", getattr(engine.state, "key_metric_name", "metric"),
                     float(engine.state.best_metric), engine.state.epoch, self.path)
