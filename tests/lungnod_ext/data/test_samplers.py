"""lungnod_ext.data.samplers: class-balancing weights, and a sampler that draws as many positives as asked."""

from __future__ import annotations

import numpy as np
import pytest

from lungnod_ext.data.samplers import balance_weights, balanced_sampler


def test_balanced_sampler_draws_half_positives():
    data = [{"label": [1]}] * 10 + [{"label": [0]}] * 90
    w = balance_weights(data, 0.5)
    assert sum(w[:10]) == pytest.approx(0.5) and sum(w[10:]) == pytest.approx(0.5)
    draws = [data[i]["label"][0] for i in balanced_sampler(data, 0.5, num_samples=4000, seed=1)]
    assert 0.45 < np.mean(draws) < 0.55
