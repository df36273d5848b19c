"""Class balancing for the classifier's patch datasets: per-item weights and a weighted random sampler
(items are datalist dicts whose ``label`` is ``[0]`` or ``[1]``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def balance_weights(data: Sequence[dict], pos_fraction: float = 0.5) -> list[float]:
    """Per-item sampling weights so a draw is a positive (``label`` [1]) with probability ``pos_fraction``."""
    labels = np.array([int(np.ravel(d["label"])[0]) for d in data])
    n_pos, n_neg = int(labels.sum()), int((1 - labels).sum())
    if n_pos == 0 or n_neg == 0:
        return [1.0] * len(labels)
    return np.where(labels == 1, pos_fraction / n_pos, (1.0 - pos_fraction) / n_neg).tolist()


def balanced_sampler(data: Sequence[dict], pos_fraction: float = 0.5, num_samples: int | None = None,
                     seed: int = 0) -> torch.utils.data.WeightedRandomSampler:
    """A sampler drawing positives with probability ``pos_fraction`` per draw (class balancing), with
    replacement, ``num_samples`` (default ``len(data)``) draws per epoch."""
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(torch.as_tensor(balance_weights(data, pos_fraction), dtype=torch.double),
                                                  num_samples or len(data), replacement=True, generator=g)
