"""lungnod_ext.inference.pleural_caps: juxta-pleural candidates from the bites nodules take out of the lung's air."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor

from data_prep.coords import Geometry
from lungnod_ext.inference.pleural_caps import AddPleuralCapCandidatesd, find_cap_candidates, pleural_caps

SPACING_XYZ = (0.7, 0.7, 2.5)           # mm: a 2.5 mm LIDC series
SHAPE_ZYX = (12, 120, 120)


def _chest():
    """(z, y, x) HU: soft tissue (40) around a square lung (-850, rows and columns 20-99); on its left wall
    (column 20) a 7 mm hemispherical nodule (0 HU) at slice 6, row 60; inside the lung a 3 mm vessel along z
    (40 HU, row 60, column 75); the lung mask grown 4 pixels; the nodule's own voxels; the geometry."""
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(SHAPE_ZYX, SPACING_XYZ[::-1])], indexing="ij")
    hu = np.full(SHAPE_ZYX, 40, np.int16)
    hu[:, 20:100, 20:100] = -850
    nodule = (z - 15.0) ** 2 + (y - 42.0) ** 2 + (x - 14.0) ** 2 <= 3.5 ** 2
    hu[nodule] = 0
    hu[(y - 42.0) ** 2 + (x - 52.5) ** 2 <= 1.5 ** 2] = 40
    lung = np.zeros(SHAPE_ZYX, np.uint8)
    lung[:, 16:104, 16:104] = 1
    geometry = Geometry(origin=(0.0, 0.0, 0.0), spacing=SPACING_XYZ, shape=SHAPE_ZYX[::-1])
    return hu, lung, nodule, geometry


def test_the_nodule_on_the_wall_is_the_one_cap_and_the_vessel_none():
    """The air's only bite is the nodule's: one cap, inside the nodule (the part of it the closing disc cannot
    reach round), about a millimetre or two deep; the vessel is a hole in the air, not a bite; a straight wall
    gives no cap."""
    hu, lung, nodule, _ = _chest()
    labels, depth, boxes = pleural_caps(hu, SPACING_XYZ[::-1], lung_zyx=lung)
    assert len(depth) == 2 and len(boxes) == 1
    cap = labels == 1
    assert nodule[cap].all() and cap.sum() >= 15
    assert 0.7 <= depth[1] <= 2.5
    assert not cap[:, :, 60:].any()                     # nothing at the vessel


def test_cap_candidates_have_the_segmenters_keys_and_skip_taken_voxels():
    """The cap becomes a "pleural" candidate centred in the nodule (LPS mm); a cap overlapping or touching
    another candidate's voxels is part of that candidate; none are asked for: none."""
    hu, lung, nodule, g = _chest()
    found = find_cap_candidates(hu, g, max_candidates=5, lung_zyx=lung)
    assert len(found) == 1
    cand, box, region = found[0]
    assert cand["detector"] == "pleural" and cand["cap_rank"] == 0 and cand["cap_depth_mm"] >= 0.7
    assert abs(cand["centre_lps"][2] - 15.0) <= 1.3 and abs(cand["centre_lps"][1] - 42.0) <= 1.0
    assert 14.0 <= cand["centre_lps"][0] <= 17.5                  # on the lung side of the wall (x = 14 mm)
    assert cand["n_voxels"] == int(region.sum()) and -500 < cand["mean_hu"] <= 0
    taken = np.zeros(hu.shape, np.int32)
    taken[nodule] = 7
    assert find_cap_candidates(hu, g, taken_zyx=taken, lung_zyx=lung) == []
    cap_zyx = np.argwhere(region) + [b.start for b in box]
    beside = np.zeros(hu.shape, np.int32)
    beside[tuple(cap_zyx[np.argmax(cap_zyx[:, 2])] + [0, 0, 1])] = 3      # one voxel just beyond the cap's tip
    assert find_cap_candidates(hu, g, taken_zyx=beside, lung_zyx=lung) == []
    assert find_cap_candidates(hu, g, max_candidates=0, lung_zyx=lung) == []


def test_transform_appends_caps_after_earlier_candidates_and_can_be_switched_off():
    """AddPleuralCapCandidatesd on (1, X, Y, Z) MetaTensors: the cap gets the next id, its voxels in the label
    tensor; earlier candidates keep theirs (detector "segmentation" where unset); enabled False: unchanged."""
    hu, lung, _, _ = _chest()
    affine = torch.as_tensor(np.diag([-SPACING_XYZ[0], -SPACING_XYZ[1], SPACING_XYZ[2], 1.0]))   # RAS of LPS origin 0

    def tensor(zyx, dtype):
        return MetaTensor(torch.as_tensor(np.ascontiguousarray(zyx.transpose(2, 1, 0))[None], dtype=dtype), affine=affine)

    labels = np.zeros(hu.shape, np.int32)
    labels[2, 50:53, 50:53] = 1
    data = {"pred": tensor(np.zeros(hu.shape), torch.float32), "ct_hu": tensor(hu, torch.float32),
            "lung": tensor(lung, torch.uint8), "candidate_labels": tensor(labels, torch.int32),
            "candidates": [{"id": 1, "centre_lps": [35.0, 35.0, 5.0]}]}
    out = AddPleuralCapCandidatesd(lung_mask_key="lung")(data)
    assert [(c["id"], c["detector"]) for c in out["candidates"]] == [(1, "segmentation"), (2, "pleural")]
    written = out["candidate_labels"][0].numpy().transpose(2, 1, 0)
    assert (written == 2).sum() == out["candidates"][1]["n_voxels"] and (written == 1).sum() == 9
    assert out["candidates"][1]["max_prob"] == 0.0
    off = AddPleuralCapCandidatesd(lung_mask_key="lung", enabled=False)({**data, "candidates": []})
    assert off["candidates"] == []
