"""data_prep.training_cohort on the real LIDC-IDRI-0001 conversion: copies with nodules imaged into its
lungs, labels with ignored small marks, tables, scanner augmentation."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from scipy import ndimage

from data_prep.nifti_io import read_nifti
from data_prep.training_cohort import (IGNORE_LABEL, CohortOptions, _random_count_specs, add_mass_copies,
                                       augment_scanner, build_training_cohort)


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
    # LIDC-IDRI-0001's point marks on every copy, for scoring (LUNA16 ignores hits on them): three < 3 mm nodules
    # and eight non-nodules, among them the three beside the left lung's base at x 112-121, z -195..-185 mm LPS
    assert len(marks) == 3 * 11
    assert sorted(m["kind"] for m in marks if m["case_id"] == f"{case}_c01") == ["non_nodule"] * 8 + ["small_nodule"] * 3
    assert sum(m["kind"] == "non_nodule" and 112 < float(m["centre_x_lps_mm"]) < 121
               and -196 < float(m["centre_z_lps_mm"]) < -184 for m in marks) == 3 * 3


def test_write_copy_marks_matches_the_tables_of_made_copies(cohort, lidc_converted, tmp_path):
    """The benchmarks rewrite a copies folder's point marks from the series (old folders lack the non-nodules):
    the same rows, copy by copy, as the copies' own table."""
    from data_prep.training_cohort import write_copy_marks

    out, case, _ = cohort
    names = [f"{case}_c01", f"{case}_c02"]
    made = [r for r in csv.DictReader(open(out / "small_marks.csv")) if r["case_id"] in names]
    path = write_copy_marks(lidc_converted, case, tmp_path, names)
    assert list(csv.DictReader(open(path))) == made and len(made) == 2 * 11


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


def test_size_bands_and_type_weights_choose_the_inserted_nodules():
    rng = np.random.default_rng(5)
    specs = _random_count_specs(rng, 200, ((30.0, 50.0, 1.0),), (("solid", 1.0), ("juxta_pleural", 3.0)))
    assert all(30.0 <= s["diameter_mm"] <= 50.0 for s in specs)
    kinds = [s["type"] for s in specs]
    assert set(kinds) == {"solid", "juxta_pleural"} and 0.65 < kinds.count("juxta_pleural") / 200 < 0.85
    # the defaults draw as before the options existed (the shipped recipe's cohort)
    a = _random_count_specs(np.random.default_rng(9), 20)
    b = _random_count_specs(np.random.default_rng(9), 20, CohortOptions().size_bands, CohortOptions().type_weights)
    assert a == b and all(3.0 <= s["diameter_mm"] <= 30.0 for s in a)


def test_mass_copies_join_the_training_list_once(cohort, lidc_converted, tmp_path):
    import shutil

    src, case, dl = cohort
    out = tmp_path / "cohort"
    shutil.copytree(src, out)
    options = CohortOptions(copies=2, val_copies=1, workers=1, seed=3)
    drawn = []
    # a second call rewrites the same copies, listed once; diaphragm_share redraws them in place (the recipe's
    # classifier copies) and the default draws the segmenter's again
    for share in (None, 1.0, None):
        path = add_mass_copies(out, [case], lidc_converted, 2, options, diaphragm_share=share)
        drawn.append([json.loads((out / "nodules" / f"{case}_c0{i}.json").read_text())["inserted"] for i in (3, 4)])
    assert drawn[0] == drawn[2] and drawn[0] != drawn[1]
    from data_prep.insert import find_lung_mask
    on_floor = 0
    for i, records in zip((3, 4), drawn[1]):           # share 1: the juxta-pleural masses in the lungs' lower half
        hu, geometry = read_nifti(out / "images" / f"{case}_c0{i}.nii.gz")
        zs = np.flatnonzero(find_lung_mask(hu).any(axis=(1, 2)))
        for n in (n for n in records if n["type"] == "juxta_pleural"):
            assert n["centre_voxel"][2] <= (zs[0] + zs[-1]) / 2 + n["mask_diameter_mm"] / geometry.spacing[2], n
            on_floor += 1
    assert on_floor >= 2
    new = json.loads(path.read_text())
    assert [e["case"] for e in new["training"]] == [e["case"] for e in dl["training"]] + [f"{case}_c03", f"{case}_c04"]
    assert new["validation"] == dl["validation"]
    rows = list(csv.DictReader(open(out / "nodules.csv")))
    masses = [r for r in rows if r["case_id"] in (f"{case}_c03", f"{case}_c04") and r["source"] == "inserted"]
    assert 8 <= len(masses) <= 14 and len({(r["case_id"], r["nodule_id"]) for r in rows}) == len(rows)
    assert max(float(r["diameter_mm"]) for r in masses) > 30.0                  # a mass among them
    assert {r["case_id"] for r in rows} >= {e["case"] for e in new["training"] + new["validation"]}


def test_diaphragm_share_reaches_the_copies(lidc_converted, tmp_path, drop_to_floor):
    """CohortOptions.diaphragm_share is passed to the insertion: with it at 1 every juxta-pleural nodule of a copy
    lies in the lower half of the lungs with soft tissue directly below its centroid; at 0 the same seed places
    them elsewhere."""
    from data_prep.insert import find_lung_mask
    from data_prep.training_cohort import make_copies

    case = next(p.name[:-7] for p in (lidc_converted / "images").glob("*.nii.gz"))
    sites = {}
    for share in (0.0, 1.0):
        options = CohortOptions(workers=1, seed=5, augment=False, nodules=(3, 3), size_bands=((10.0, 14.0, 1.0),),
                                type_weights=(("juxta_pleural", 1.0),), diaphragm_share=share)
        out = tmp_path / f"share{share:g}"
        rec = make_copies(lidc_converted, case, out, [1], options)[0]
        assert [r["type"] for r in rec["inserted"]] == ["juxta_pleural"] * 3
        sites[share] = [tuple(np.round(r["centre_voxel"], 1)) for r in rec["inserted"]]
        if share == 1.0:
            hu, geometry = read_nifti(out / "images" / f"{case}_c01.nii.gz")
            lung = find_lung_mask(hu)
            zs = np.flatnonzero(lung.any(axis=(1, 2)))
            assert geometry.direction_matrix[2, 2] > 0                 # slice 0 is the feet's end here
            for r in rec["inserted"]:
                k = int(round(r["centre_voxel"][2]))
                assert k <= (zs[0] + zs[-1]) / 2 + r["mask_diameter_mm"] / geometry.spacing[2]
                mm, below_hu = drop_to_floor(r, lung, hu, geometry)      # from the centroid towards the feet
                assert mm is not None and mm < 1.5 * r["mask_diameter_mm"], r
                assert below_hu > -500                                   # soft tissue below: the diaphragm
    assert sites[0.0] != sites[1.0]


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


def test_small_copies_follow_the_mass_copies_with_many_small_nodules(cohort, lidc_converted, tmp_path):
    """add_small_copies appends copies numbered after the cohort's and the mass copies (small_copy_names), each
    with 10-16 inserted nodules of 3-6 mm (a site may be skipped), ground-glass / part-solid / juxta-pleural most
    often; the earlier lists are kept."""
    import shutil

    from data_prep.training_cohort import add_small_copies, small_copy_names

    src, case, dl = cohort
    out = tmp_path / "cohort"
    shutil.copytree(src, out)
    options = CohortOptions(copies=2, val_copies=1, workers=1, seed=3)
    names = small_copy_names([case], options, mass_copies=1, copies=2)
    assert names == [f"{case}_c04", f"{case}_c05"]
    new = json.loads(add_small_copies(out, [case], lidc_converted, 2, 1, options).read_text())
    assert [e["case"] for e in new["training"]] == [e["case"] for e in dl["training"]] + names
    inserted = [n for name in names for n in json.loads((out / "nodules" / f"{name}.json").read_text())["inserted"]]
    assert 16 <= len(inserted) <= 32
    assert all(2.0 <= n["mask_diameter_mm"] <= 7.5 for n in inserted), [n["mask_diameter_mm"] for n in inserted]
    faint = sum(n["type"] in ("ground_glass", "part_solid", "juxta_pleural") for n in inserted)
    assert faint >= 0.6 * len(inserted)
    rows = list(csv.DictReader(open(out / "nodules.csv")))
    assert sum(r["case_id"] in names and r["source"] == "inserted" for r in rows) == len(inserted)
    # another type mix (the recipe's small_types): one more copy after those, every nodule juxta-vascular
    add_small_copies(out, [case], lidc_converted, 1, 3, options, type_weights=(("juxta_vascular", 1.0),))
    extra = json.loads((out / "nodules" / f"{case}_c06.json").read_text())["inserted"]
    assert len(extra) >= 8 and {n["type"] for n in extra} == {"juxta_vascular"}


def test_type_shares_parse_or_name_the_bad_part():
    """``parse_type_shares`` (``lungnod train-models --small-types``): TYPE=SHARE pairs in order; an unknown or
    repeated type, a missing or negative share, or shares that are all 0 raise ValueError naming the part."""
    from data_prep.training_cohort import parse_type_shares

    assert parse_type_shares("juxta_vascular=0.7, solid=0.1,part_solid=0.2") == (
        ("juxta_vascular", 0.7), ("solid", 0.1), ("part_solid", 0.2))
    for bad, part in (("vessel=1", "'vessel=1'"), ("solid", "'solid'"), ("solid=-0.5", "'solid=-0.5'"),
                      ("solid=1,solid=2", "'solid=2'"), ("solid=nan", "'solid=nan'"), ("solid=0,ground_glass=0", "not all be 0")):
        with pytest.raises(ValueError, match=re.escape(part)):
            parse_type_shares(bad)
