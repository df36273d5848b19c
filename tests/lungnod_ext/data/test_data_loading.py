"""lungnod_ext.data.data_loading.ThreadDataLoader: MONAI's batches, a failing batch fails the loop, and track_meta=False
gives the same values as plain tensors."""

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
        assert loader["track_meta"] == "@loader_track_meta", bundle


def _augmented(track_meta: bool, num_workers: int, buffer_size: int = 0):
    """Two epochs of a cached, randomly flipped / rotated / noised set of (2, 16, 16) patches (as the
    classifier's training makes them), seeded alike: (the batches' images, the one type they all have)."""
    from monai.data import CacheDataset
    from monai.transforms import Compose, EnsureTyped, RandFlipd, RandGaussianNoised, RandRotated
    from monai.utils import set_determinism

    set_determinism(7)
    items = [{"image": torch.arange(512, dtype=torch.float32).reshape(2, 16, 16) * (k + 1) / 512} for k in range(12)]
    transform = Compose([EnsureTyped(keys="image", track_meta=False), RandFlipd(keys="image", prob=0.5, spatial_axis=0),
                         RandRotated(keys="image", range_x=0.26, prob=0.5, padding_mode="border"),
                         RandGaussianNoised(keys="image", std=0.02, prob=0.5)])
    loader = ThreadDataLoader(CacheDataset(items, transform, progress=False), batch_size=4, shuffle=True,
                              num_workers=num_workers, buffer_size=buffer_size, track_meta=track_meta)
    batches, kinds = [], set()
    for _ in range(2):
        for batch in loader:
            kinds.add(type(batch["image"]).__name__)
            batches.append(batch["image"].as_tensor() if hasattr(batch["image"], "as_tensor") else batch["image"])
    set_determinism(None)
    assert len(kinds) == 1, kinds
    return batches, kinds.pop()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_without_meta_tracking_are_the_same_values_as_plain_tensors(num_workers):
    from monai.data import get_track_meta

    with_meta, kind = _augmented(True, num_workers)
    plain, plain_kind = _augmented(False, num_workers)
    assert (kind, plain_kind) == ("MetaTensor", "Tensor")
    assert len(plain) == 6 and all(torch.equal(a, b) for a, b in zip(with_meta, plain))
    epoch_sums = [float(sum(b.double().sum() for b in epoch)) for epoch in (plain[:3], plain[3:])]
    assert abs(epoch_sums[0] - epoch_sums[1]) > 0.01   # the noise was drawn anew (a shuffle keeps the sum)
    assert get_track_meta()  # the training thread's setting is back


def test_meta_tracking_is_restored_when_a_batch_fails_and_kept_with_a_buffer_thread():
    from monai.data import get_track_meta

    with pytest.raises(RuntimeError, match="applying transform"):
        _values(ThreadDataLoader(_dataset(fail_at=4), batch_size=3, buffer_size=0, track_meta=False))
    assert get_track_meta()
    assert _augmented(False, 0, buffer_size=1)[1] == "MetaTensor"  # a buffer thread without workers: left on
    with pytest.raises(ValueError, match="^ThreadDataLoader: track_meta: bundle setting loader_track_meta must be True "
                                         "or False, got 'false'; write --loader_track_meta False on"):
        ThreadDataLoader(_dataset(), track_meta="false")
    import numpy as np

    assert ThreadDataLoader(_dataset(), track_meta=np.bool_(False)).track_meta is False   # as the configs' check
