"""Training data loaders for the bundles.

:class:`ThreadDataLoader` is MONAI's ``monai.data.ThreadDataLoader`` (the batches are made in a background
thread while the network trains on the previous one: with a CacheDataset only the random transforms run
there) with one change: an exception raised while making a batch (a transform failing on a case, a
collation error) is re-raised in the training loop. MONAI 1.6's ``ThreadBuffer`` lets the thread die, prints
its traceback and ends the epoch early and silently, so a broken case would cut every epoch short
without failing the run. Same arguments, same batches, same order as MONAI's class; ``buffer_size=0``
makes the batches in the training thread itself (a plain DataLoader: no thread competing with the
network for the cores of a CPU-only machine).
"""

from __future__ import annotations

from monai.data import DataLoader
from monai.data import ThreadDataLoader as _MonaiThreadDataLoader
from monai.data.thread_buffer import ThreadBuffer


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


class ThreadDataLoader(_MonaiThreadDataLoader):
    """``monai.data.ThreadDataLoader`` whose batch-making errors fail the training (module doc)."""

    def __iter__(self):
        if self.buffer_size <= 0:
            batches = DataLoader.__iter__(self)
        else:
            batches = FailLoudThreadBuffer(DataLoader.__iter__(self), self.buffer_size, self.buffer_timeout)
        for batch in batches:
            for _ in range(self.repeats):
                yield batch
