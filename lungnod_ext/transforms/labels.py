"""Training labels with an *ignore* value: any non-zero value is a nodule, except ``IGNORE_LABEL`` (255),
which marks voxels left out of training (LIDC small marks: real findings without an outline).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from data_prep.training_cohort import IGNORE_LABEL


class BinarizeLabeld(MapTransform):
    """Labels -> float32 0 / 1 with ``ignore_value`` kept: ``label > 0.5`` is a nodule (binary masks,
    instance ids and interpolated labels alike), ``label == ignore_value`` stays ``ignore_value``."""

    def __init__(self, keys: KeysCollection, ignore_value: int = IGNORE_LABEL, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ignore_value = ignore_value

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            ignore = x == self.ignore_value
            out = (x > 0.5).to(torch.float32) if isinstance(x, torch.Tensor) else (x > 0.5).astype("float32")
            out[ignore] = float(self.ignore_value)
            d[key] = out
        return d
