"""Evidence of how multi-process (DDP) training shared the work: which cases each rank trained on.

:class:`BatchCaseRecorder` is a trainer handler that every rank runs. After each epoch it writes
``<output_dir>/rank<r>_cases.json``::

    {"rank": 0, "world_size": 2,
     "epochs": [{"epoch": 1, "batches": [["SYN-0001_...", "SYN-0004_..."], ...], "samples": [8, ...],
                 "param_checksum": 12.34}]}

``batches`` lists, per iteration, the case ids in the batch (each once, in batch order); ``samples`` the
number of samples in each batch (e.g. crops: volumes x samples per volume). With a ``DistributedSampler``
the ranks' case sets of one epoch are disjoint and together cover the training list.
``param_checksum`` (sum of the network's parameters after the epoch, float64) is the same on all ranks when
DDP keeps their weights in sync. Without ``torch.distributed`` initialised the rank is 0 and the world size 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import SimpleNamespace

import torch
from ignite.engine import Engine, Events

from data_prep.nifti_io import write_text_atomic
from lungnod_ext.data.meta import case_id_from_meta


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of this process in the default process group; (0, 1) when not distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _unique(ids: Iterable) -> list[str]:
    return list(dict.fromkeys(str(i) for i in ids))


def batch_case_ids(batch, case_key: str = "case_id", image_key: str = "image") -> list[str]:
    """Case ids in a training batch, each once in batch order.

    ``batch`` is a collated dict (``batch[case_key]`` a list of ids) or a decollated list of per-sample
    dicts. Without ``case_key`` the id is the image file name (``image_key``'s ``filename_or_obj`` metadata,
    without .nii.gz)."""
    if isinstance(batch, Mapping):
        if case_key in batch:
            ids = batch[case_key]
            return _unique([ids] if isinstance(ids, str) else ids)
        names = getattr(batch.get(image_key), "meta", {}).get("filename_or_obj", [])
        names = [names] if isinstance(names, str) else names
        return _unique(case_id_from_meta(SimpleNamespace(meta={"filename_or_obj": n})) for n in names)
    ids = []
    for item in batch:
        ids.extend(batch_case_ids(item, case_key, image_key))
    return _unique(ids)


def batch_size_of(batch, image_key: str = "image") -> int:
    """Number of samples in a collated batch dict (length of ``batch[image_key]``, else of its first value) or a
    decollated list."""
    if isinstance(batch, Mapping):
        return len(batch[image_key] if image_key in batch else next(iter(batch.values())))
    return len(batch)


def param_checksum(network: torch.nn.Module) -> float:
    """Sum of all parameters of ``network`` in float64 (equal on all DDP ranks when weights are in sync)."""
    with torch.no_grad():
        return float(sum(p.detach().double().sum().item() for p in network.parameters()))


class BatchCaseRecorder:
    """Trainer handler: per epoch, the case ids of every batch this rank trained on -> ``rank<r>_cases.json``
    in ``output_dir`` (see module doc). ``network`` (optional) adds the parameter checksum."""

    def __init__(self, output_dir, network: torch.nn.Module | None = None, case_key: str = "case_id",
                 image_key: str = "image") -> None:
        self.output_dir = Path(output_dir)
        self.network = network
        self.case_key, self.image_key = case_key, image_key
        self.epochs: list[dict] = []
        self._batches: list[list[str]] = []
        self._samples: list[int] = []

    @property
    def path(self) -> Path:
        return self.output_dir / f"rank{rank_and_world_size()[0]}_cases.json"

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_STARTED, self._record)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._batches, self._samples = [], []

    def _record(self, engine: Engine) -> None:
        self._batches.append(batch_case_ids(engine.state.batch, self.case_key, self.image_key))
        self._samples.append(batch_size_of(engine.state.batch, self.image_key))

    def _write(self, engine: Engine) -> None:
        row: dict = {"epoch": int(engine.state.epoch), "batches": self._batches, "samples": self._samples}
        if self.network is not None:
            row["param_checksum"] = param_checksum(self.network)
        self.epochs.append(row)
        rank, world = rank_and_world_size()
        write_text_atomic(self.path, json.dumps({"rank": rank, "world_size": world, "epochs": self.epochs}, indent=1))
