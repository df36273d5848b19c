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


class ResumableTraining:
    """Trainer handler: after every epoch save ``{"model", "optimizer", "epoch", "iteration"}`` to
    ``save_dir/resume.pt`` (atomically, replacing the previous one); with ``resume_from`` set, load such a
    file when the run starts and continue after its epoch. A run killed mid-epoch therefore resumes at
    the start of the epoch it was in. (The trainer engine is taken at ``attach``, so the config needs no
    reference from a handler back to the trainer.) List it LAST among the trainer's handlers: its save then
    follows the epoch's histories and validation, so a kill between them never loses an epoch's record."""

    def __init__(self, save_dir, network: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 resume_from=None, filename: str = "resume.pt") -> None:
        self.path = Path(save_dir) / filename
        self.network, self.optimizer = network, optimizer
        self.resume_from = Path(resume_from) if resume_from else None

    def attach(self, engine: Engine) -> None:
        if self.resume_from is not None:
            engine.add_event_handler(Events.STARTED, self._load)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._save)

    def _load(self, engine: Engine) -> None:
        from data_prep.errors import InputNotFoundError

        if not self.resume_from.is_file():
            raise InputNotFoundError(self.resume_from, "resume checkpoint not found")
        state = torch.load(self.resume_from, map_location="cpu", weights_only=True)
        unwrap(self.network).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        engine.state.epoch, engine.state.iteration = int(state["epoch"]), int(state["iteration"])
        log.info("resumed from %s after epoch %d", self.resume_from, engine.state.epoch)

    def _save(self, engine: Engine) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() > 0:
            return  # rank 0 alone writes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.part-{os.getpid()}")
        try:
            torch.save({"model": unwrap(self.network).state_dict(), "optimizer": self.optimizer.state_dict(),
                        "epoch": engine.state.epoch, "iteration": engine.state.iteration}, tmp)
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
