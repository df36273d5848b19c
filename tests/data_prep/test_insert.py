"""data_prep.insert: nodules inserted into the real LIDC-IDRI-0001 series (read here with SimpleITK)
and into a small synthetic case."""

from __future__ import annotations

import hashlib

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from data_prep import insert, synth
from data_prep.synth.nodules import NODULE_TYPES
from data_prep.errors import DataPrepError, InputNotFoundError
from data_prep.nifti_io import read_nifti, write_nifti
from data_prep.coords import Geometry

TYPE_HU = {"solid": (-40, 90), "juxta_pleural": (-40, 90), "juxta_vascular": (-40, 90),
           "ground_glass": (-650, -330)}              # mean HU of a nodule's interior


@pytest.fixture(scope="module")
def real_ct(lidc_series_dir):
    """LIDC-IDRI-0001 as ((z, y, x) int16 HU, Geometry), slices sorted along the normal."""
    import SimpleITK as sitk

    files = sorted(lidc_series_dir.glob("*.dcm"))
    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    iop = np.array(heads[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    pos = [float(np.dot(np.array(h.ImagePositionPatient, dtype=float), normal)) for h in heads]
    files = [f for _, f in sorted(zip(pos, files))]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    image = reader.Execute()
    hu = np.clip(sitk.GetArrayFromImage(image), -1024, None).astype(np.int16)
    return hu, Geometry.from_sitk(image)


@pytest.fixture(scope="module")
def real_lungs(real_ct):
    return insert.find_lung_mask(real_ct[0])


@pytest.fixture(scope="module")
def small_case():
    cfg = synth.CohortConfig(seed=2, nodules_per_case=(0, 0), small_nodules_per_case=(0, 0), size_xy=112,
                             pixel_spacing_mm=2.0, slice_spacing_mm=2.5, n_slices=48)
    return synth.generate_case(cfg, 0, synth.case_rng(cfg, 0))


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()


def check_insertion(hu, new, inst, records, lung, geometry):
    assert new.dtype == np.int16 and inst.dtype == np.uint16 and new.shape == inst.shape == hu.shape
    assert np.array_equal(new[inst == 0], hu[inst == 0])                  # nothing else changed
    assert set(np.unique(inst)) == {0} | {r["id"] for r in records}
    for r in records:
        m = inst == r["id"]
        assert lung[m].all()
        assert r["n_voxels"] == m.sum() and np.isclose(r["volume_mm3"], m.sum() * geometry.voxel_volume_mm3)
        kk, jj, ii = np.nonzero(m)
        assert np.allclose(r["centre_voxel"], [ii.mean(), jj.mean(), kk.mean()])
        assert np.allclose(r["centre_lps"], geometry.voxel_to_world(r["centre_voxel"]))
        assert np.isclose(r["mean_hu"], new[m].mean())
        inner = ndimage.binary_erosion(m, structure=np.ones((1, 3, 3), bool))
        if r["type"] == "part_solid":                                       # solid core + ground-glass halo
            assert (new[m] > -150).sum() > 0 and (new[m] < -300).sum() > 0, r
        elif r["diameter_mm"] >= 8:
            lo, hi = TYPE_HU[r["type"]]
            assert lo < new[inner].mean() < hi, r
        if r["type"] != "juxta_pleural":
            assert abs(r["mask_diameter_mm"] / r["diameter_mm"] - 1) < 0.1, r


def test_find_lungs_on_real_ct(real_ct, real_lungs):
    hu, g = real_ct
    lungs = real_lungs
    litres = lungs.sum() * g.voxel_volume_mm3 / 1e6
    assert 2.5 < litres < 8.0                                             # adult lungs (3.7 L here)
    assert not lungs[:, 0, :].any() and not lungs[:, :, 0].any() and not lungs[:, -1, :].any()
    half = hu.shape[2] // 2
    right, left = lungs[:, :, :half].sum(), lungs[:, :, half:].sum()     # image left = patient right
    assert 0.5 < right / left < 2.0
    assert (hu[lungs] < -400).mean() > 0.9


def test_insert_three_nodules_into_real_ct(real_ct, real_lungs):
    hu, g = real_ct
    before = digest(hu)
    requests = [{"type": "solid", "diameter_mm": 12.0}, {"type": "ground_glass", "diameter_mm": 15.0},
                {"type": "part_solid", "diameter_mm": 18.0}]
    new, inst, records = insert.insert_nodules(hu, g, requests, np.random.default_rng(0))   # finds the lungs itself
    assert digest(hu) == before                                           # input untouched
    assert [r["type"] for r in records] == ["solid", "ground_glass", "part_solid"]
    assert [r["id"] for r in records] == [1, 2, 3]
    check_insertion(hu, new, inst, records, real_lungs, g)
    # ground glass keeps crossing vessels visible; a part-solid nodule has a solid core
    core = (inst == 3) & (new > -150)
    assert core.sum() > 0.02 * (inst == 3).sum()


def test_insert_juxta_types_into_real_ct(real_ct, real_lungs):
    hu, g = real_ct
    requests = [{"type": "juxta_pleural", "diameter_mm": 10.0}, {"type": "juxta_vascular", "diameter_mm": 8.0}]
    new, inst, records = insert.insert_nodules(hu, g, requests, np.random.default_rng(1), real_lungs)
    check_insertion(hu, new, inst, records, real_lungs, g)
    pleural, vascular = inst == 1, inst == 2
    ring = ndimage.binary_dilation(pleural, iterations=2) & ~pleural
    assert (~real_lungs[ring]).mean() > 0.05                              # touches the chest wall
    ring = ndimage.binary_dilation(vascular, iterations=2) & ~vascular
    assert (hu[ring & real_lungs] > -300).sum() > 0                       # touches a vessel


def test_juxta_pleural_nodules_on_the_diaphragm(real_ct, real_lungs, drop_to_floor):
    """``diaphragm_share=1``: every juxta-pleural nodule rises from the lung's floor (soft tissue right below its
    centroid, within about a radius, in the lower half of the lungs); on the wall at large most are not; share 0
    draws exactly what no share draws."""
    hu, g = real_ct
    requests = [{"type": "juxta_pleural", "diameter_mm": 12.0}] * 3
    down = -1 if g.direction_matrix[2, 2] >= 0 else 1
    zs = np.flatnonzero(real_lungs.any(axis=(1, 2)))
    drops = {}
    for share in (0.0, 1.0):
        drops[share] = []
        for seed in range(3):
            new, inst, records = insert.insert_nodules(hu, g, requests, np.random.default_rng(seed), real_lungs,
                                                       diaphragm_share=share)
            check_insertion(hu, new, inst, records, real_lungs, g)
            for r in records:
                mm, below_hu = drop_to_floor(r, real_lungs, hu, g)
                drops[share].append(np.inf if mm is None else mm / (r["mask_diameter_mm"] / 2))
                if share == 1.0:
                    assert below_hu is not None and below_hu > -500, r                # soft tissue below
                    k = r["centre_voxel"][2]
                    assert (k - (zs[0] + zs[-1]) / 2) * down >= -r["mask_diameter_mm"] / g.spacing[2], r
    assert max(drops[1.0]) < 3.0                                  # every one sits on the floor
    assert sum(d >= 3.0 for d in drops[0.0]) >= 3                 # most wall sites are far above it
    plain = insert.insert_nodules(hu, g, requests, np.random.default_rng(0), real_lungs, style="psf")
    zero = insert.insert_nodules(hu, g, requests, np.random.default_rng(0), real_lungs, style="psf", diaphragm_share=0)
    assert np.array_equal(plain[0], zero[0]) and np.array_equal(plain[1], zero[1])
    with pytest.raises(ValueError, match="diaphragm_share"):
        insert.insert_nodules(hu, g, requests, np.random.default_rng(0), real_lungs, diaphragm_share=1.5)


def test_insert_at_a_given_centre_and_reject_outside(small_case):
    case = small_case
    hu, g, lung = case.hu_zyx, case.geometry, case.lung_mask_zyx
    # a parenchyma point far from the lung wall
    dist = ndimage.distance_transform_edt(lung & (hu < -600), sampling=(2.5, 2.0, 2.0))
    k, j, i = np.unravel_index(np.argmax(dist), dist.shape)
    centre = g.voxel_to_world([i, j, k])
    new, inst, records = insert.insert_nodules(hu, g, [{"type": "solid", "diameter_mm": 8.0, "centre_lps": centre}],
                                               np.random.default_rng(0), lung)
    assert np.allclose(records[0]["design_centre_lps"], centre)
    assert np.linalg.norm(np.array(records[0]["centre_lps"]) - centre) < 2.0
    check_insertion(hu, new, inst, records, lung, g)
    outside = g.voxel_to_world([2, 2, k])                                  # in the air outside the body
    with pytest.raises(ValueError, match="does not fit"):
        insert.insert_nodules(hu, g, [{"type": "solid", "diameter_mm": 6.0, "centre_lps": outside}],
                              np.random.default_rng(0), lung)


def test_random_nodules_in_synthetic_case_and_found_lungs(small_case):
    case = small_case
    found = insert.find_lung_mask(case.hu_zyx)
    truth = case.lung_mask_zyx
    dice = 2 * (found & truth).sum() / (found.sum() + truth.sum())
    assert dice > 0.9                                                     # threshold lungs ~ synthetic lungs
    new, inst, records = insert.insert_nodules(case.hu_zyx, case.geometry, 4, np.random.default_rng(3),
                                               diameter_range_mm=(7.0, 12.0))
    assert len(records) == 4 and all(r["type"] in NODULE_TYPES for r in records)
    check_insertion(case.hu_zyx, new, inst, records, found, case.geometry)


def test_fainter_ground_glass_same_nodules_other_density(small_case):
    """``ground_glass_hu`` moves only the density: the same rng gives the same sites, sizes and masks, the
    ground glass drawn within the new range (each density one draw mapped onto it) and imaged fainter."""
    case = small_case
    requests = [{"type": "ground_glass", "diameter_mm": 12.0}, {"type": "part_solid", "diameter_mm": 12.0}]
    runs = {}
    for band in ((-600.0, -400.0), (-750.0, -600.0)):
        runs[band] = insert.insert_nodules(case.hu_zyx, case.geometry, requests, np.random.default_rng(5),
                                           case.lung_mask_zyx, style="psf", ground_glass_hu=band)
    (new_a, inst_a, rec_a), (new_b, inst_b, rec_b) = runs.values()
    assert np.array_equal(inst_a, inst_b) and [r["id"] for r in rec_a] == [r["id"] for r in rec_b] == [1, 2]
    gg_a, gg_b = rec_a[0], rec_b[0]
    assert -600 <= gg_a["design_hu"] <= -400 and -750 <= gg_b["design_hu"] <= -600
    assert np.isclose((gg_a["design_hu"] + 600) / 200, (gg_b["design_hu"] + 750) / 150)      # the same draw
    assert gg_b["mean_hu"] < gg_a["mean_hu"] - 60                                                 # fainter as imaged
    assert -750 <= rec_b[1]["halo_hu"] <= -450 and rec_b[1]["design_hu"] == rec_a[1]["design_hu"]
    for band in ((-400.0, -600.0), (-300.0, -200.0), (-1100.0, -600.0)):
        with pytest.raises(ValueError, match="ground_glass_hu"):
            insert.insert_nodules(case.hu_zyx, case.geometry, requests, np.random.default_rng(5),
                                  case.lung_mask_zyx, ground_glass_hu=band)


def test_insert_into_nifti(small_case, tmp_path):
    case = small_case
    src = write_nifti(tmp_path / "ct.nii.gz", case.hu_zyx, case.geometry)
    records = insert.insert_into_nifti(src, tmp_path / "out.nii.gz", tmp_path / "lab.nii.gz", n_nodules=2, seed=4)
    img, g1 = read_nifti(tmp_path / "out.nii.gz")
    lab, g2 = read_nifti(tmp_path / "lab.nii.gz")
    assert img.dtype == np.int16 and lab.dtype == np.uint16
    assert np.allclose(g1.affine_lps(), case.geometry.affine_lps())
    assert np.allclose(g2.affine_lps(), case.geometry.affine_lps())
    assert set(np.unique(lab)) == {0, 1, 2} and len(records) == 2
    assert np.array_equal(img[lab == 0], case.hu_zyx[lab == 0]) and not np.array_equal(img, case.hu_zyx)
    again = insert.insert_into_nifti(src, tmp_path / "out2.nii.gz", tmp_path / "lab2.nii.gz", n_nodules=2, seed=4)
    assert again == records                                               # seeded: reproducible


def test_bad_inputs(tmp_path):
    with pytest.raises(InputNotFoundError):
        insert.insert_into_nifti(tmp_path / "missing.nii.gz", tmp_path / "a.nii.gz", tmp_path / "b.nii.gz")
    g = Geometry((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), shape=(32, 32, 16))
    water = np.zeros((16, 32, 32), np.int16)                              # no air at all: no lungs
    path = write_nifti(tmp_path / "water.nii.gz", water, g)
    with pytest.raises(DataPrepError, match="no lung"):
        insert.insert_into_nifti(path, tmp_path / "a.nii.gz", tmp_path / "b.nii.gz")
    with pytest.raises(ValueError, match="does not match"):
        insert.insert_nodules(water[:8], g, 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown nodule type"):
        insert.insert_nodules(water, g, [{"type": "cavity"}], np.random.default_rng(0), np.ones(water.shape, bool))


def test_psf_blend_soft_edge_keeps_the_scans_noise(real_ct, real_lungs):
    hu, geo = real_ct
    rng = np.random.default_rng(5)
    new, inst, recs = insert.insert_nodules(hu, geo, [{"type": "solid", "diameter_mm": 12.0}], rng, real_lungs, style="psf")
    m = inst == 1
    inner = ndimage.binary_erosion(m, iterations=2)
    shell = ndimage.binary_dilation(m, iterations=1) & ~m
    delta = new.astype(float) - hu
    assert delta[inner].mean() > 500                                          # solid nodule over lung
    assert 0 < delta[shell].mean() < 0.6 * delta[inner].mean()                # blurred edge, not a step
    # inside, the scan's own noise is still there: the nodule's HU varies like the background plus texture
    assert 10 < new[inner].std() < 200
    assert np.array_equal(new[~ndimage.binary_dilation(m, iterations=6)], hu[~ndimage.binary_dilation(m, iterations=6)])
