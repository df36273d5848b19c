"""lungnod_ext.inference.outline_refine: outlines grown out to the partial-volume edge readers trace."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor

from data_prep.coords import Geometry
from data_prep.masks import equivalent_diameter_mm
from lungnod_ext.inference.outline_refine import RefineOutlinesd, refine_outlines

SPACING_XYZ = (0.7, 0.7, 1.25)          # mm
LUNG_HU, NODULE_HU = -850.0, 0.0


def _phantom(radius_mm: float = 4.0):
    """(z, y, x) HU, noise-free: lung with a solid sphere of ``radius_mm`` at (z 12.5, y 20, x 20) mm whose
    edge voxels hold the share of the sphere they contain (partial volume, from 4x4x4 sub-samples); the
    share (z, y, x); the geometry (LPS, origin 0)."""
    shape = (20, 58, 58)
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    share = np.zeros(shape)
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, SPACING_XYZ[::-1])], indexing="ij")
    for dz in sub:
        for dy in sub:
            for dx in sub:
                z = grids[0] + dz * SPACING_XYZ[2]
                y = grids[1] + dy * SPACING_XYZ[1]
                x = grids[2] + dx * SPACING_XYZ[0]
                share += ((z - 12.5) ** 2 + (y - 20.0) ** 2 + (x - 20.0) ** 2 <= radius_mm ** 2)
    share /= 64.0
    hu = (LUNG_HU + share * (NODULE_HU - LUNG_HU)).astype(np.float32)
    return hu, share, Geometry(origin=(0.0, 0.0, 0.0), spacing=SPACING_XYZ, shape=shape[::-1])


def _candidate(labels_zyx: np.ndarray, label: int) -> dict:
    zyx = np.argwhere(labels_zyx == label)
    lo, hi = zyx.min(axis=0), zyx.max(axis=0) + 1
    return {"id": label, "centre_voxel": [float(v) for v in zyx.mean(axis=0)[::-1]], "probability": 0.9,
            "bbox_voxel": [int(lo[2]), int(lo[1]), int(lo[0]), int(hi[2]), int(hi[1]), int(hi[0])],
            "n_voxels": len(zyx)}


def test_half_way_outline_grows_to_the_partial_volume_edge():
    """A half-way threshold outline (share >= 0.5, what region growing gives) gains exactly the voxels
    within 1.5 mm that are more than 30 % filled (HU above lung + 0.3 contrast), none emptier; its
    equivalent diameter moves from under the sphere's 8 mm to over it; centre and score are kept."""
    hu, share, g = _phantom()
    labels = (share >= 0.5).astype(np.int32)
    before = _candidate(labels, 1)
    [after] = refine_outlines([before], labels, hu, g, ring_mm=1.5, edge_fraction=0.3)
    grown = labels == 1
    added = grown & (share < 0.5)
    assert added.sum() == after["outline_added_voxels"] > 0
    assert share[added].min() > 0.3
    assert not (grown & (share > 0) & (share <= 0.3)).any()
    assert np.array_equal(grown, share > 0.3)            # every > 30 % voxel is within 1.5 mm here
    old_d = equivalent_diameter_mm(before["n_voxels"] * g.voxel_volume_mm3)
    assert old_d < 8.0 < after["diameter_mm"] < 9.0
    assert after["n_voxels"] == int(grown.sum())
    assert after["centre_voxel"] == before["centre_voxel"] and after["probability"] == 0.9
    i0, j0, k0, i1, j1, k1 = after["bbox_voxel"]
    zyx = np.argwhere(grown)
    assert [k0, j0, i0] == zyx.min(axis=0).tolist() and [k1, j1, i1] == (zyx.max(axis=0) + 1).tolist()
    assert abs(after["mean_hu"] - float(hu[grown].mean())) < 1e-3


def test_growth_stays_in_the_ring_and_off_other_candidates():
    """Next to a dense wall (0 HU, free voxels) a candidate grows at most ring_mm into it; the voxels of
    another candidate are never taken."""
    hu, share, g = _phantom()
    hu[:, :, 26:] = NODULE_HU                         # a wall from x = 18.2 mm: touches the sphere
    labels = (share >= 0.5).astype(np.int32)
    labels[:, :, 26:] = 0
    labels[:, 40:, 26:] = 2                           # part of the wall is another candidate
    other = labels == 2
    cands = [_candidate(labels, 1), _candidate(labels, 2)]
    start = labels == 1
    refine_outlines(cands, labels, hu, g, ring_mm=1.5)
    grown = labels == 1
    spacing = np.array(SPACING_XYZ[::-1])
    dist = np.full(hu.shape, np.inf)
    for zyx in np.argwhere(grown & ~start):
        dist[tuple(zyx)] = np.min(np.linalg.norm((np.argwhere(start) - zyx) * spacing, axis=1))
    assert np.isfinite(dist).any() and dist[np.isfinite(dist)].max() <= 1.5 + 1e-9
    assert (labels[other] == 2).all()                 # candidate 2 may grow too, never lose voxels


def test_a_candidate_no_denser_than_its_lung_is_left_alone():
    """A candidate in plain lung (contrast < 100 HU) gains nothing; an empty id list is fine."""
    hu, _, g = _phantom()
    labels = np.zeros(hu.shape, np.int32)
    labels[2:5, 45:50, 45:50] = 1
    before = labels.copy()
    [after] = refine_outlines([_candidate(labels, 1)], labels, hu, g)
    assert after["outline_added_voxels"] == 0 and np.array_equal(labels, before)
    assert refine_outlines([], labels, hu, g) == []


def test_refine_outlinesd_updates_the_label_tensor_and_keeps_candidate_order():
    """The transform writes the grown ids into the (1, X, Y, Z) label tensor in place and returns the
    candidates in their input order (here 2 before 1); enabled False changes nothing."""
    hu, share, g = _phantom()
    labels_zyx = np.zeros(hu.shape, np.int32)
    labels_zyx[share >= 0.5] = 2
    labels_zyx[2:5, 45:50, 45:50] = 1
    cands = [_candidate(labels_zyx, 2), _candidate(labels_zyx, 1)]
    affine = np.diag([-SPACING_XYZ[0], -SPACING_XYZ[1], SPACING_XYZ[2], 1.0])       # LPS origin 0, as RAS
    image = MetaTensor(torch.as_tensor(hu.transpose(2, 1, 0)[None].copy()), affine=torch.as_tensor(affine))
    labels = MetaTensor(torch.as_tensor(labels_zyx.transpose(2, 1, 0)[None].copy()), affine=torch.as_tensor(affine))
    off = RefineOutlinesd(enabled=False)({"candidate_labels": labels, "ct_hu": image, "candidates": cands})
    assert torch.equal(off["candidate_labels"], labels) and off["candidates"] is cands
    out = RefineOutlinesd()({"candidate_labels": labels, "ct_hu": image, "candidates": cands})
    assert [c["id"] for c in out["candidates"]] == [2, 1]
    grown = labels[0].numpy().transpose(2, 1, 0) == 2
    assert out["candidates"][0]["outline_added_voxels"] == int(grown.sum() - (share >= 0.5).sum()) > 0
    assert out["candidates"][1]["outline_added_voxels"] == 0
