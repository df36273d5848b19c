"""data_prep.dependent_density: posterior subpleural density drawn into a phantom and into the real
LIDC-IDRI-0001 copies of the training cohort."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from data_prep.coords import Geometry
from data_prep.dependent_density import BAND_MM, TARGET_HU, add_dependent_density, posterior_axis
from data_prep.nifti_io import read_nifti
from data_prep.training_cohort import CohortOptions, make_copies

LUNG_HU, TISSUE_HU, VESSEL_HU = -870, 40, -100


def _phantom(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    """(z, y, x) = (12, 80, 80) at 1 mm: body 40 HU, a lung box y 10-69, x 5-74 at -870 HU with a -100 HU vessel
    line along x at y 67 (in the posterior band), a 4 mm ball to avoid at y 66, x 20, z 6."""
    hu = np.full((12, 80, 80), TISSUE_HU, dtype=np.int16)
    lung = np.zeros(hu.shape, dtype=bool)
    lung[:, 10:70, 5:75] = True
    hu[lung] = LUNG_HU
    hu[:, 67, 30:50] = VESSEL_HU
    zz, yy, xx = np.indices(hu.shape)
    avoid = (zz - 6) ** 2 + (yy - 66) ** 2 + (xx - 20) ** 2 <= 4
    geometry = Geometry(origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0), direction=direction, shape=(80, 80, 12))
    return hu, lung, avoid, geometry


def test_density_lies_on_the_posterior_pleura_and_only_brightens_lung():
    hu, lung, avoid, geometry = _phantom()
    before = hu.copy()
    changed_any, on_pleura, inside = 0, 0.0, 0.0
    for seed in range(6):
        out, info = add_dependent_density(hu, lung, geometry, np.random.default_rng(seed), avoid_zyx=avoid)
        assert np.array_equal(hu, before)                                   # input untouched
        assert TARGET_HU[0] <= info["dependent_density_hu"] <= TARGET_HU[1]
        diff = out - hu
        changed = np.abs(diff) > 0.5
        changed_any += int(changed.sum())
        assert (diff >= -1e-3).all()                                        # never darker
        assert not changed[~lung].any()                                     # body untouched
        assert out[changed].max() <= info["dependent_density_hu"] + 1e-3    # up to the drawn density, no further
        ys = np.nonzero(changed)[1]
        assert ys.size == 0 or ys.min() >= 10 + 0.5 * 59                    # the posterior half of the lung only
        depth = ndimage.distance_transform_edt(lung)
        assert (depth[changed] <= info["dependent_band_mm"] + 1e-6).all()   # within the band of the pleura
        assert (out[:, 67, 30:50] == VESSEL_HU).all()                       # the vessel is brighter: kept
        near_avoid = ndimage.distance_transform_edt(~avoid) <= 1.0
        assert not changed[near_avoid].any()
        # densest on the pleura, fading inwards (the patches vary along it; summed over the draws)
        on_pleura += float(diff[lung & (depth == 1)].sum()) / max(1, int((lung & (depth == 1)).sum()))
        band = info["dependent_band_mm"]
        inner = lung & (depth >= 0.6 * band) & (depth <= band)
        inside += float(diff[inner].sum()) / max(1, int(inner.sum()))
    assert changed_any > 1000
    assert on_pleura > 3 * inside > 0


def test_the_posterior_direction_comes_from_the_geometry():
    """With the j axis pointing anterior (LPS -y), the density goes to small j, the same patient side."""
    hu, lung, _, geometry = _phantom()
    flipped = Geometry(origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0), direction=(1, 0, 0, 0, -1, 0, 0, 0, 1),
                       shape=(80, 80, 12))
    assert posterior_axis(geometry) == (1, 1) and posterior_axis(flipped) == (1, -1)
    out, info = add_dependent_density(hu, lung, flipped, np.random.default_rng(2))
    ys = np.nonzero(np.abs(out - hu) > 0.5)[1]
    assert info["dependent_voxels"] > 0 and ys.max() <= 10 + 0.5 * 59


def test_a_series_that_is_not_axial_or_has_no_lung_comes_back_unchanged():
    hu, lung, _, _ = _phantom()
    sagittal = Geometry(origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0), direction=(1, 0, 0, 0, 0, 1, 0, 1, 0),
                        shape=(80, 80, 12))   # the k (slice) axis runs front to back
    out, info = add_dependent_density(hu, lung, sagittal, np.random.default_rng(0))
    assert info == {"skipped": "not an axial series"} and np.array_equal(out, hu)
    _, _, _, geometry = _phantom()
    out, info = add_dependent_density(hu, np.zeros_like(lung), geometry, np.random.default_rng(0))
    assert info == {"skipped": "no lung"} and np.array_equal(out, hu)
    with pytest.raises(ValueError, match="does not match"):
        add_dependent_density(hu, lung[:-1], geometry, np.random.default_rng(0))


def test_cohort_copies_with_dependent_density(lidc_converted, tmp_path):
    """On LIDC-IDRI-0001: a copy drawn with dependent_density_share 1 has the same nodules, labels and instances as
    the share-0 copy of the same seed; its image differs only in the lungs' posterior half, brighter, where the
    parenchyma next to the pleura gains HU and the deep lung none; share 0 draws nothing."""
    from data_prep.insert import find_lung_mask

    case = next(p.name[:-7] for p in (lidc_converted / "images").glob("*.nii.gz"))
    recs, vols = {}, {}
    for share in (0.0, 1.0):
        options = CohortOptions(workers=1, seed=4, augment=False, nodules=(4, 4), dependent_density_share=share)
        out = tmp_path / f"share{share:g}"
        recs[share] = make_copies(lidc_converted, case, out, [1], options)[0]
        vols[share] = [read_nifti(out / sub / f"{case}_c01.nii.gz")[0] for sub in ("images", "labels", "instances")]
    assert recs[0.0]["inserted"] == recs[1.0]["inserted"]
    assert not any(k.startswith("dependent") for k in recs[0.0]["augmentation"])
    drawn = recs[1.0]["augmentation"]
    assert BAND_MM[0] <= drawn["dependent_band_mm"] <= BAND_MM[1] and drawn["dependent_voxels"] > 1000
    assert np.array_equal(vols[0.0][1], vols[1.0][1]) and np.array_equal(vols[0.0][2], vols[1.0][2])
    plain, dense = vols[0.0][0].astype(np.int32), vols[1.0][0].astype(np.int32)
    changed = dense != plain
    assert (dense >= plain).all() and changed.sum() > 1000
    lung = find_lung_mask(plain)
    assert not changed[~lung].any()
    assert not changed[vols[0.0][2] > 0].any()                               # no nodule voxel touched
    # LPS +y is the array's y axis here: every change lies behind the middle of its slice's lung
    _, geometry = read_nifti(tmp_path / "share1" / "images" / f"{case}_c01.nii.gz")
    assert posterior_axis(geometry) == (1, 1)
    ys_lung = np.nonzero(lung.any(axis=2))
    first = np.full(lung.shape[0], lung.shape[1]); last = np.full(lung.shape[0], -1)
    np.minimum.at(first, ys_lung[0], ys_lung[1]); np.maximum.at(last, ys_lung[0], ys_lung[1])
    kk, jj, _ = np.nonzero(changed)
    assert (jj >= (first[kk] + last[kk]) / 2).all()
    depth = ndimage.distance_transform_edt(lung, sampling=geometry.spacing[::-1])
    parenchyma = lung & (plain < -500)
    near, deep = parenchyma & (depth <= 3) & changed, parenchyma & (depth > drawn["dependent_band_mm"] + 1)
    assert np.median(dense[near] - plain[near]) > 30
    assert not changed[deep].any()

