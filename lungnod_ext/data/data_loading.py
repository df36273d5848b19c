"""Training data loaders for the bundles.

:class:`ThreadDataLoader` is MONAI's ``monai.data.ThreadDataLoader`` (the batches are made in a background
thread while the network trains on the previous one: with a CacheDataset only the random transforms run
there) with one change: an exception raised while making a batch (a transform failing on a case, a
collation error) is re-raised in the training loop. MONAI 1.6's ``ThreadBuffer`` lets the thread die, prints
its traceback and ends the epoch early and silently, so a broken case would cut every epoch short
without failing the run. Same arguments, same batches, same order as MONAI's class; ``buffer_size=0``
makes the batches in the training thread itself (a plain DataLoader: no thread competing with the
network for the cores of a CPU-only machine).

``track_meta=False`` makes the batches with MONAI's metadata tracking off (``monai.data.set_track_meta``),
so the random transforms after the cache return plain ``torch.Tensor`` instead of ``MetaTensor``: the same
values from the same random draws, in about half the time on CPU (the classifier's flips, rotation,
intensity and noise on a (5, 64, 64) patch: 3.9 -> 1.9 ms with collation), for trainings that need no
affine or file name after the cache. It is switched off in the worker processes (``num_workers > 0``) or,
with ``buffer_size=0`` and no workers, in the training thread only while a batch is being made (restored
before the batch is handed over). With thread workers, or a buffer thread and no workers, the tracking stays
on: the global switch would also change what the training thread's own transforms return.
"""

from __future__ import annotations

import functools

from monai.data import DataLoader, get_track_meta, set_track_meta
from monai.data import ThreadDataLoader as _MonaiThreadDataLoader
from monai.data.thread_buffer import ThreadBuffer
from monai.data.utils import worker_init_fn as monai_worker_init_fn

from lungnod_ext.data.bundle_settings import check_switches


class FailLoudThreadBuffer(ThreadBuffer):
    """``monai.data.thread_buffer.ThreadBuffer`` that re-raises, in the consuming thread, the exception that
    stopped its producer thread (after yielding the items it had buffered before the failure)."""

    def __init__(self, src, buffer_size: int = 1, timeout: float = 0.01):
        super().__init__(src, buffer_size, timeout)
        self.error: BaseException | None = None

    def enqueue_values(self):
        try:
            super().enqueue_values()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self.error = exc

    def __iter__(self):
        self.error = None
        yield from super().__iter__()
        if self.error is not None:
            raise self.error


def _init_worker_without_meta(worker_id: int, init=monai_worker_init_fn) -> None:
    """A DataLoader worker's start: ``init`` (MONAI's per-worker random seeds by default), then metadata
    tracking off in this worker process."""
    init(worker_id)
    set_track_meta(False)


def _without_meta_tracking(batches):
    """Yield ``batches``' items, each made with MONAI's metadata tracking off and the setting restored
    before it is yielded (also when making it fails)."""
    items = iter(batches)
    while True:
        before = get_track_meta()
        set_track_meta(False)
        try:
            batch = next(items)
        except StopIteration:
            return
        finally:
            set_track_meta(before)
        yield batch


class ThreadDataLoader(_MonaiThreadDataLoader):
    """``monai.data.ThreadDataLoader`` whose batch-making errors fail the training; ``track_meta=False``:
    batches of plain tensors made with MONAI's metadata tracking off (module doc)."""

    def __init__(self, dataset, buffer_size: int = 1, buffer_timeout: float = 0.01, repeats: int = 1,
                 use_thread_workers: bool = False, track_meta: bool = True, **kwargs):
        try:                       # the bundle configs' own check, for a caller outside them
            check_switches(loader_track_meta=track_meta)
        except ValueError as err:
            raise ValueError(f"ThreadDataLoader: track_meta: {err}") from None
        self.track_meta = bool(track_meta)
        if not track_meta and kwargs.get("num_workers", 0) > 0 and not use_thread_workers:
            init = kwargs.get("worker_init_fn") or monai_worker_init_fn
            kwargs["worker_init_fn"] = functools.partial(_init_worker_without_meta, init=init)
        super().__init__(dataset, buffer_size=buffer_size, buffer_timeout=buffer_timeout, repeats=repeats,
                         use_thread_workers=use_thread_workers, **kwargs)

    def __iter__(self):
        if self.buffer_size <= 0:
            batches = DataLoader.__iter__(self)
            if not self.track_meta and self.num_workers == 0:   # worker processes: off since their start
                batches = _without_meta_tracking(batches)
        else:
            batches = FailLoudThreadBuffer(DataLoader.__iter__(self), self.buffer_size, self.buffer_timeout)
        for batch in batches:
            for _ in range(self.repeats):
                yield batch
