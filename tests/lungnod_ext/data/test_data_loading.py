"""lungnod_ext.data.data_loading.ThreadDataLoader: MONAI's batches, and a failing batch fails the loop."""

from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.data import ThreadDataLoader as MonaiThreadDataLoader

from lungnod_ext.data.data_loading import ThreadDataLoader


class Boom(RuntimeError):
    pass


def _dataset(fail_at: int | None = None) -> Dataset:
    def transform(x):
        if x == fail_at:
            raise Boom(f"case {x} is broken")
        return {"x": torch.tensor([float(x)])}

    return Dataset(list(range(10)), transform=transform)


def _values(loader) -> list[list[float]]:
    return [batch["x"].reshape(-1).tolist() for batch in loader]


def test_same_batches_as_monai_and_dataloader():
    ours = _values(ThreadDataLoader(_dataset(), batch_size=3, buffer_size=1))
    assert ours == _values(MonaiThreadDataLoader(_dataset(), batch_size=3)) == _values(DataLoader(_dataset(), batch_size=3))
    assert ours == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert _values(ThreadDataLoader(_dataset(), batch_size=5, repeats=2)) == [[0, 1, 2, 3, 4]] * 2 + [[5, 6, 7, 8, 9]] * 2
    assert _values(ThreadDataLoader(_dataset(), batch_size=3, buffer_size=0)) == ours  # no thread: same batches


def test_without_a_thread_errors_raise_directly():
    with pytest.raises(RuntimeError, match="applying transform"):
        _values(ThreadDataLoader(_dataset(fail_at=1), batch_size=3, buffer_size=0))


def test_a_failing_batch_raises_in_the_loop_after_the_good_ones():
    seen = []
    with pytest.raises(RuntimeError, match="applying transform") as info:  # MONAI's wrapper of the transform error
        for batch in ThreadDataLoader(_dataset(fail_at=7), batch_size=3, buffer_size=2):
            seen.append(batch["x"].reshape(-1).tolist())
    assert isinstance(info.value.__cause__, Boom) and "case 7 is broken" in str(info.value.__cause__)
    assert seen == [[0, 1, 2], [3, 4, 5]]  # everything before the broken batch, nothing after


def test_monai_own_loader_would_end_the_epoch_silently():
    """Why the class exists: MONAI 1.6's ThreadDataLoader stops early without an error (if this starts
    failing, MONAI fixed it and lungnod_ext.data.data_loading can go)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import threading

        hook, threading.excepthook = threading.excepthook, lambda args: None  # keep the thread's traceback quiet
        try:
            assert _values(MonaiThreadDataLoader(_dataset(fail_at=7), batch_size=3)) == [[0, 1, 2], [3, 4, 5]]
        finally:
            threading.excepthook = hook


def test_the_bundles_train_with_it():
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[3] / "bundles"
    for bundle in ("lung_nodule_ct_segmentation", "lung_nodule_ct_classification"):
        loader = json.loads((root / bundle / "configs" / "train.json").read_text())["train"]["dataloader"]
        assert loader["_target_"] == "lungnod_ext.data.data_loading.ThreadDataLoader", bundle
