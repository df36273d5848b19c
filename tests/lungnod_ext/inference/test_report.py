"""lungnod_ext.inference.report: one case's files from the maps the segmentation bundle holds."""

from __future__ import annotations

import json

import numpy as np

from data_prep.coords import Geometry
from data_prep.nifti_io import read_nifti
from lungnod_ext.inference.report import write_segmentation_report


def test_report_writes_mask_and_labels_from_transposed_views(tmp_path):
    """The bundle hands the writer (z, y, x) views of channel-first (X, Y, Z) tensors (not C-ordered): the
    mask is prob >= threshold as uint8, the label map uint16, both voxel for voxel on the geometry's grid,
    and nothing but the case folder is left behind."""
    rng = np.random.default_rng(3)
    shape_xyz = (23, 19, 11)
    prob_xyz = rng.random(shape_xyz, dtype=np.float32)
    labels_xyz = rng.integers(0, 300, shape_xyz).astype(np.int32)
    prob_zyx, labels_zyx = prob_xyz.transpose(2, 1, 0), labels_xyz.transpose(2, 1, 0)
    assert not prob_zyx.flags.c_contiguous
    geometry = Geometry(origin=(-10.0, 5.0, 30.0), spacing=(0.7, 0.8, 2.5), shape=shape_xyz)
    out = write_segmentation_report("case1", prob_zyx, None, labels_zyx, [], geometry, tmp_path, threshold=0.6,
                                    overlays=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case1"]
    mask, g = read_nifti(out / "case1_mask.nii.gz")
    labels, _ = read_nifti(out / "case1_labels.nii.gz")
    assert mask.dtype == np.uint8 and labels.dtype == np.uint16
    assert g.shape == shape_xyz and np.allclose(g.spacing, (0.7, 0.8, 2.5))
    assert np.array_equal(mask, (prob_zyx >= 0.6).astype(np.uint8))
    assert 0.3 < mask.mean() < 0.5                 # about 40 % of uniform values are >= 0.6
    assert np.array_equal(labels, labels_zyx)
    info = json.loads((out / "case1_candidates.json").read_text())
    assert info["threshold"] == 0.6 and info["candidates"] == []
