"""lungnod_ext.transforms.labels: label binarisation keeps the ignore label (LIDC small marks)."""

from __future__ import annotations

import torch

from lungnod_ext.transforms.labels import BinarizeLabeld


def test_binarize_keeps_ignore_and_instance_ids_become_nodule():
    lab = torch.tensor([[0.0, 1.0, 2.0, 7.0, 255.0, 0.4]])
    out = BinarizeLabeld("label")({"label": lab})["label"]
    assert out.tolist() == [[0.0, 1.0, 1.0, 1.0, 255.0, 0.0]] and out.dtype == torch.float32
