"""data_prep.training_cohort on the real LIDC-IDRI-0001 conversion: copies with nodules imaged into its
lungs, labels with ignored small marks, tables, scanner augmentation."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import ndimage

from data_prep.nifti_io import read_nifti
from data_prep.training_cohort import IGNORE_LABEL, CohortOptions, augment_scanner, build_training_cohort


@pytest.fixture(scope="module")
def cohort(lidc_converted, tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    case = next(p.name[:-7] for p in (lidc_converted / "images").glob("*.nii.gz"))
    path = build_training_cohort(lidc_converted, out, [case], CohortOptions(copies=2, val_copies=1, workers=1, seed=3))
    return out, case, json.loads(path.read_text())


def test_datalist_and_tables(cohort):
    out, case, dl = cohort
    assert [e["case"] for e in dl["training"]] == [f"{case}_c00", f"{case}_c01"]
    assert [e["case"] for e in dl["validation"]] == [f"{case}_c02"]
    rows = list(csv.DictReader(open(out / "nodules.csv")))
    real = [r for r in rows if r["source"] == "lidc_xml"]
    inserted = [r for r in rows if r["source"] == "inserted"]
    assert len(real) == 3 and {r["case_id"] for r in real} == {e["case"] for e in dl["training"] + dl["validation"]}
    assert 5 * 2 <= len(inserted) <= 9 * 2 + 9       # 5-9 per copy, copies 1 and 2 (a site may be skipped)
    assert all(float(r["diameter_mm"]) > 2.0 for r in inserted)
    marks = list(csv.DictReader(open(out / "small_marks.csv")))
    assert len(marks) == 3 * 3                        # LIDC-IDRI-0001's three small-nodule marks, per copy


def test_copy_zero_is_the_real_scan_cropped_with_its_nodule_and_ignored_marks(cohort, lidc_converted):
    out, case, _ = cohort
    hu, geo = read_nifti(out / "images" / f"{case}_c00.nii.gz")
    lab, _ = read_nifti(out / "labels" / f"{case}_c00.nii.gz")
    full, fgeo = read_nifti(lidc_converted / "images" / f"{case}.nii.gz")
    assert hu.shape[0] < full.shape[0] and hu.shape[1] < 512                 # cropped to the lungs
    k0, j0, i0 = np.rint(fgeo.world_to_voxel(geo.origin)[::-1]).astype(int)
    assert np.array_equal(hu, full[k0:k0 + hu.shape[0], j0:j0 + hu.shape[1], i0:i0 + hu.shape[2]])
    assert set(np.unique(lab)) == {0, 1, IGNORE_LABEL}
    n_nodule = int((lab == 1).sum())
    assert abs(n_nodule * np.prod(geo.spacing) - 7764.3) < 1.0                # the consensus nodule, 7764 mm^3
    blobs, n = ndimage.label(lab == IGNORE_LABEL)
    assert n == 3                                                             # the three small-nodule marks
    ball = 4 / 3 * np.pi * 4.0 ** 3                                           # 4 mm radius spheres
    assert 0.8 * 3 * ball < (lab == IGNORE_LABEL).sum() * np.prod(geo.spacing) < 1.2 * 3 * ball


def test_inserted_copy(cohort):
    out, case, _ = cohort
    rec = json.loads((out / "nodules" / f"{case}_c01.json").read_text())
    base, _ = read_nifti(out / "images" / f"{case}_c00.nii.gz")
    hu, geo = read_nifti(out / "images" / f"{case}_c01.nii.gz")
    lab, _ = read_nifti(out / "labels" / f"{case}_c01.nii.gz")
    inst, _ = read_nifti(out / "instances" / f"{case}_c01.nii.gz")
    ids = sorted(int(v) for v in np.unique(inst) if v >= 100)
    assert ids == [100 + n["id"] for n in rec["inserted"]] and len(ids) >= 5
    assert np.array_equal(lab == 1, inst > 0)
    for n in rec["inserted"]:
        m = inst == 100 + n["id"]
        vol = m.sum() * np.prod(geo.spacing)
        assert 0.5 < vol / (np.pi / 6 * n["diameter_mm"] ** 3) < 1.6, n
        assert hu[m].mean() > base[m].mean() + 50                               # brighter than the lung it replaced
    if not rec["augmentation"]:
        far = ndimage.binary_dilation(inst > 0, iterations=4)
        assert np.array_equal(hu[~far], base[~far])                           # nothing else moved


def test_augment_scanner_records_what_it_did():
    rng = np.random.default_rng(0)
    vol = np.random.default_rng(1).normal(-800, 30, (20, 40, 40)).astype(np.float32)
    from data_prep.coords import Geometry

    geo = Geometry(origin=(0, 0, 0), spacing=(0.7, 0.7, 1.25), shape=(40, 40, 20))
    seen = set()
    for _ in range(12):
        out, done = augment_scanner(vol, geo, rng)
        seen |= set(done)
        if "soft_kernel_sigma_mm" in done and "added_noise_hu" not in done:
            assert out.std() < vol.std()
    assert {"soft_kernel_sigma_mm", "sharp_kernel_amount", "added_noise_hu", "slice_thickness_mm"} <= seen
