"""LUNA16 reader: annotations.csv, .mhd/.raw volumes, sphere masks (LPS handled like SimpleITK), cases.

Synthetic scans are tiny MetaImages written by SimpleITK; the real check writes LIDC-IDRI-0001 as a
LUNA16-style ``<seriesuid>.mhd`` and puts the real LUNA16 row on it.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import SimpleITK as sitk

from data_prep.errors import AnnotationError, DicomReadError, InputNotFoundError, SeriesError
from data_prep.luna16 import (find_mhd_files, iter_luna16_cases, load_luna16_volume, luna16_case_id, nodule_masks,
                              read_annotations, unmatched_annotations)
from data_prep.masks import sphere_mask

UID_A = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100000000000000000000000000001"
UID_B = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100000000000000000000000000002"
UID_C = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100000000000000000000000000003"
SHAPE_ZYX = (24, 40, 36)
SPACING = (0.75, 0.8, 1.25)
ORIGIN = (-30.5, 12.25, -100.0)
FLIPPED = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)   # i runs to the right, k runs down
NODULE_HU = 60
LUNG_HU = -850


def _write_scan(path, direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), centre=None, radius_mm=None, fill=LUNG_HU):
    """int16 scan of SHAPE_ZYX; voxels within ``radius_mm`` of ``centre`` (LPS, as SimpleITK sees it) = NODULE_HU.

    The corner voxel is -3000 (outside the scan circle) to check clipping. Returns the SimpleITK image.
    """
    arr = np.full(SHAPE_ZYX, fill, dtype=np.int16)
    arr[0, 0, 0] = -3000
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(direction)
    if centre is not None:
        kk, jj, ii = np.meshgrid(*(np.arange(n) for n in SHAPE_ZYX), indexing="ij")
        idx = np.stack([ii, jj, kk], -1).reshape(-1, 3)
        world = np.array([img.TransformIndexToPhysicalPoint([int(v) for v in p]) for p in idx])
        inside = (np.linalg.norm(world - np.asarray(centre), axis=1) <= radius_mm).reshape(SHAPE_ZYX)
        arr[inside] = NODULE_HU
        img2 = sitk.GetImageFromArray(arr)
        img2.CopyInformation(img)
        img = img2
    sitk.WriteImage(img, str(path))
    return img


def _csv(path, rows, header="seriesuid,coordX,coordY,coordZ,diameter_mm"):
    path.write_text(header + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows))
    return path


def _centre_inside(direction):
    """A world point (LPS) near the middle of the synthetic grid, off the voxel centres."""
    img = sitk.Image([SHAPE_ZYX[2], SHAPE_ZYX[1], SHAPE_ZYX[0]], sitk.sitkInt16)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(direction)
    return tuple(img.TransformContinuousIndexToPhysicalPoint((17.3, 21.6, 11.4)))


# ------------------------------------------------------------------------------------------------
# annotations.csv
# ------------------------------------------------------------------------------------------------

def test_read_annotations_groups_rows_by_series(tmp_path):
    p = _csv(tmp_path / "annotations.csv", [(UID_A, -1.5, 20, -90.25, 6.0), (UID_B, 1, 2, 3, 4.5),
                                              (UID_A, 5, 6, 7, 10)])
    ann = read_annotations(p)
    assert sorted(ann) == [UID_A, UID_B]
    assert [r["coord_lps"] for r in ann[UID_A]] == [[-1.5, 20.0, -90.25], [5.0, 6.0, 7.0]]
    assert [r["diameter_mm"] for r in ann[UID_A]] == [6.0, 10.0]
    assert [r["line"] for r in ann[UID_A]] == [2, 4]


@pytest.mark.parametrize("header,row,message", [
    ("seriesuid,coordX,coordY,diameter_mm", (UID_A, 1, 2, 3), "line 1: missing column(s) coordZ"),
    (None, (UID_A, 1, "abc", 3, 4), "line 3: coordY 'abc' is not a number"),
    (None, (UID_A, 1, 2, 3, -1), "line 3: diameter_mm -1 must be > 0"),
    (None, (UID_A, 1, 2, "nan", 4), "line 3: coordZ 'nan' is not a finite number"),
    (None, ("", 1, 2, 3, 4), "line 3: empty seriesuid"),
])
def test_bad_annotation_rows_name_file_and_line(tmp_path, header, row, message):
    p = tmp_path / "annotations.csv"
    if header is None:
        _csv(p, [(UID_B, 1, 2, 3, 4), row])
    else:
        _csv(p, [row], header=header)
    with pytest.raises(AnnotationError) as err:
        read_annotations(p)
    assert str(err.value).startswith(str(p)) and message in str(err.value)


def test_missing_annotations_file(tmp_path):
    with pytest.raises(InputNotFoundError):
        read_annotations(tmp_path / "nope.csv")


# ------------------------------------------------------------------------------------------------
# volumes
# ------------------------------------------------------------------------------------------------

def test_find_mhd_files_any_nesting(tmp_path):
    for sub, uid in (("subset0", UID_A), ("subset1/deeper", UID_B)):
        (tmp_path / sub).mkdir(parents=True)
        _write_scan(tmp_path / sub / f"{uid}.mhd")
    (tmp_path / "subset0" / "._junk.mhd").write_text("mac resource fork")
    found = find_mhd_files(tmp_path)
    assert [p.name for p in found] == [f"{UID_A}.mhd", f"{UID_B}.mhd"]
    assert find_mhd_files(found[0]) == [found[0]]
    with pytest.raises(InputNotFoundError):
        find_mhd_files(tmp_path / "missing")


@pytest.mark.parametrize("direction", [(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), FLIPPED], ids=["identity", "flipped"])
def test_load_volume_geometry_matches_simpleitk(tmp_path, direction):
    img = _write_scan(tmp_path / f"{UID_A}.mhd", direction)
    hu, geom, uid = load_luna16_volume(tmp_path / f"{UID_A}.mhd")
    assert uid == UID_A and hu.dtype == np.int16 and hu.shape == SHAPE_ZYX
    assert hu[0, 0, 0] == -1024 and hu.min() == -1024 and hu[5, 5, 5] == LUNG_HU   # clipped corner
    assert geom.shape == (SHAPE_ZYX[2], SHAPE_ZYX[1], SHAPE_ZYX[0])
    np.testing.assert_allclose(geom.origin, ORIGIN)
    np.testing.assert_allclose(geom.spacing, SPACING)
    np.testing.assert_allclose(geom.direction, direction)
    for ijk in [(0, 0, 0), (35, 39, 23), (3, 17, 9)]:
        np.testing.assert_allclose(geom.voxel_to_world(ijk), img.TransformIndexToPhysicalPoint(ijk), atol=1e-9)


# ------------------------------------------------------------------------------------------------
# spheres
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("direction", [(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), FLIPPED], ids=["identity", "flipped"])
def test_sphere_lands_where_simpleitk_puts_the_point(tmp_path, direction):
    centre, diameter = _centre_inside(direction), 9.0
    img = _write_scan(tmp_path / f"{UID_A}.mhd", direction, centre, diameter / 2)
    hu, geom, _ = load_luna16_volume(tmp_path / f"{UID_A}.mhd")
    inst, records = nodule_masks(geom, [{"coord_lps": list(centre), "diameter_mm": diameter}], hu)
    assert inst.dtype == np.uint16 and inst.shape == SHAPE_ZYX and set(np.unique(inst)) == {0, 1}

    # the voxel SimpleITK says holds the centre is in the sphere; the centroid is there (sub-voxel)
    i, j, k = img.TransformPhysicalPointToIndex(centre)
    assert inst[k, j, i] == 1
    np.testing.assert_allclose(geom.world_to_voxel(centre), img.TransformPhysicalPointToContinuousIndex(centre),
                               atol=1e-9)
    rec = records[0]
    np.testing.assert_allclose(rec["centre_voxel"], img.TransformPhysicalPointToContinuousIndex(centre), atol=0.35)
    np.testing.assert_allclose(rec["centre_lps"], centre, atol=0.3)

    # volume within 10% of the sphere's; the mask is exactly the bright ball SimpleITK's geometry drew
    expected = 4 / 3 * math.pi * (diameter / 2) ** 3
    assert abs(rec["volume_mm3"] - expected) / expected < 0.10, rec["volume_mm3"]
    assert np.array_equal(inst > 0, hu == NODULE_HU)
    assert rec["mean_hu"] == NODULE_HU
    assert rec["diameter_mm_annotated"] == diameter and rec["source"] == "luna16"
    assert rec["n_readers"] is None and rec["min_readers"] == 3 and rec["nodule_id"] == 1
    b = rec["bbox_voxel"]
    zz, yy, xx = np.nonzero(inst)
    assert b == [xx.min(), yy.min(), zz.min(), xx.max() + 1, yy.max() + 1, zz.max() + 1]


def test_overlapping_spheres_split_by_nearer_centre():
    from data_prep.coords import Geometry

    geom = Geometry((10.0, -20.0, 5.0), (0.7, 0.7, 1.0), shape=(40, 40, 30))
    c1, c2 = geom.voxel_to_world((15.2, 20.1, 14.6)), geom.voxel_to_world((24.1, 19.7, 15.3))
    rows = [{"coord_lps": list(c1), "diameter_mm": 10.0}, {"coord_lps": list(c2), "diameter_mm": 6.0}]
    inst, records = nodule_masks(geom, rows)
    s1, s2 = sphere_mask(geom, c1, 10.0).astype(bool), sphere_mask(geom, c2, 6.0).astype(bool)
    both = s1 & s2
    assert both.sum() > 20                                         # they do overlap
    assert np.array_equal(inst > 0, s1 | s2)
    assert np.all(inst[s1 & ~s2] == 1) and np.all(inst[s2 & ~s1] == 2)
    kk, jj, ii = np.nonzero(both)
    world = geom.voxel_to_world(np.stack([ii, jj, kk], -1))
    nearer = np.where(np.linalg.norm(world - c2, axis=1) < np.linalg.norm(world - c1, axis=1), 2, 1)
    assert np.array_equal(inst[kk, jj, ii], nearer)
    assert records[0]["n_voxels"] + records[1]["n_voxels"] == int((s1 | s2).sum())
    assert records[0]["n_voxels"] == int((inst == 1).sum())


def test_sphere_outside_image_keeps_an_empty_record():
    from data_prep.coords import Geometry

    geom = Geometry((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), shape=(10, 10, 10))
    inst, records = nodule_masks(geom, [{"coord_lps": [100.0, 0, 0], "diameter_mm": 5.0}])
    assert not inst.any() and records[0]["n_voxels"] == 0 and records[0]["nodule_id"] == 1


# ------------------------------------------------------------------------------------------------
# bad files
# ------------------------------------------------------------------------------------------------

def test_missing_raw(tmp_path):
    _write_scan(tmp_path / f"{UID_A}.mhd")
    (tmp_path / f"{UID_A}.raw").unlink()
    with pytest.raises(InputNotFoundError) as err:
        load_luna16_volume(tmp_path / f"{UID_A}.mhd")
    assert f"{UID_A}.raw" in str(err.value) and "ElementDataFile" in str(err.value)


def test_truncated_raw(tmp_path):
    _write_scan(tmp_path / f"{UID_A}.mhd")
    raw = tmp_path / f"{UID_A}.raw"
    raw.write_bytes(raw.read_bytes()[:1000])
    with pytest.raises(DicomReadError, match="truncated: 1000 bytes"):
        load_luna16_volume(tmp_path / f"{UID_A}.mhd")


@pytest.mark.parametrize("header,message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "binary content"),
    (b"this is not a header\n", "is not 'Key = Value'"),
    (b"ObjectType = Image\nNDims = 3\nElementType = MET_SHORT\nElementDataFile = x.raw\n", "no DimSize field"),
    (b"NDims = 3\nDimSize = 4 x 4\nElementType = MET_SHORT\nElementDataFile = LOCAL\n", "non-integer DimSize"),
])
def test_corrupt_header(tmp_path, header, message):
    p = tmp_path / f"{UID_A}.mhd"
    p.write_bytes(header)
    with pytest.raises(DicomReadError, match=message):
        load_luna16_volume(p)


def test_unreadable_by_simpleitk_is_a_clear_error(tmp_path):
    p = tmp_path / f"{UID_A}.mhd"
    (tmp_path / "x.raw").write_bytes(b"\x00" * 64)
    p.write_text("NDims = 3\nDimSize = 2 2 2\nElementType = MET_NOSUCHTYPE\nElementDataFile = x.raw\n")
    with pytest.raises(DicomReadError, match="unreadable MetaImage"):
        load_luna16_volume(p)


def test_non_3d_images_are_rejected(tmp_path):
    four_d = sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.int16), isVector=False)
    sitk.WriteImage(four_d, str(tmp_path / "four_d.mhd"))
    with pytest.raises(SeriesError, match="4D image"):
        load_luna16_volume(tmp_path / "four_d.mhd")
    rgb = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.mhd"))
    with pytest.raises(SeriesError, match="3 components per voxel"):
        load_luna16_volume(tmp_path / "rgb.mhd")
    with pytest.raises(InputNotFoundError):
        load_luna16_volume(tmp_path / "absent.mhd")


# ------------------------------------------------------------------------------------------------
# cases
# ------------------------------------------------------------------------------------------------

def test_case_id():
    assert luna16_case_id(UID_A) == "luna16_" + hashlib.sha1(UID_A.encode()).hexdigest()[:8]
    assert len(luna16_case_id(UID_A)) == 15 and luna16_case_id(UID_A) != luna16_case_id(UID_B)


def test_iter_cases_is_lazy_and_complete(tmp_path):
    root = tmp_path / "luna"
    (root / "subset0").mkdir(parents=True)
    (root / "subset1").mkdir()
    centre = _centre_inside(FLIPPED)
    _write_scan(root / "subset0" / f"{UID_A}.mhd", FLIPPED, centre, 3.0)
    _write_scan(root / "subset1" / f"{UID_B}.mhd")                       # no nodule rows: a negative scan
    csv_path = _csv(tmp_path / "annotations.csv", [(UID_A, *centre, 6.0), (UID_C, 1, 2, 3, 5)])
    assert unmatched_annotations(read_annotations(csv_path), find_mhd_files(root)) == [UID_C]

    it = iter_luna16_cases(root, csv_path)
    first = next(it)
    assert first["case_id"] == luna16_case_id(UID_A) and first["patient_id"] == UID_A == first["series_uid"]
    assert first["n_nodules"] == 1 and first["instance_mask"].max() == 1 and first["records"][0]["mean_hu"] == NODULE_HU
    assert first["hu_zyx"].shape == first["instance_mask"].shape == first["geometry"].shape_zyx
    assert [p.rsplit("/", 1)[-1] for p in first["source_files"]] == [f"{UID_A}.mhd", f"{UID_A}.raw"]
    second = next(it)
    assert second["series_uid"] == UID_B and second["n_nodules"] == 0 and not second["instance_mask"].any()
    assert second["instance_mask"].dtype == np.uint16
    assert next(it, None) is None


def test_iter_cases_errors(tmp_path):
    root = tmp_path / "luna"
    root.mkdir()
    _write_scan(root / f"{UID_A}.mhd")
    _write_scan(root / f"{UID_B}.mhd")
    (root / f"{UID_A}.raw").unlink()
    good_csv = _csv(tmp_path / "a.csv", [(UID_B, 0, 0, 0, 5)])
    with pytest.raises(InputNotFoundError, match="ElementDataFile"):
        list(iter_luna16_cases(root, good_csv))
    failures = []
    cases = list(iter_luna16_cases(root, good_csv, on_error=lambda p, e: failures.append((p.stem, type(e)))))
    assert [c["series_uid"] for c in cases] == [UID_B] and failures == [(UID_A, InputNotFoundError)]
    bad_csv = _csv(tmp_path / "b.csv", [(UID_B, 0, 0, "x", 5)])
    with pytest.raises(AnnotationError, match="line 2"):
        next(iter_luna16_cases(root, bad_csv))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError, match="no .mhd files"):
        next(iter_luna16_cases(tmp_path / "empty", good_csv))


# ------------------------------------------------------------------------------------------------
# the real series with its real LUNA16 row
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_as_luna16(lidc_root, lidc_series_dir, tmp_path_factory):
    """LIDC-IDRI-0001 written as LUNA16 would ship it: ``<seriesuid>.mhd`` + ``.raw`` (LPS, from SimpleITK)."""
    import pydicom

    files = sorted(lidc_series_dir.glob("*.dcm"),
                   key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    image = reader.Execute()
    annotations = read_annotations(lidc_root / "luna16_annotations.csv")
    uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"     # LIDC-IDRI-0001's series
    annotations = {uid: annotations[uid]}
    out = tmp_path_factory.mktemp("luna16_real")
    sitk.WriteImage(image, str(out / f"{uid}.mhd"))
    return out / f"{uid}.mhd", image, annotations


def test_real_luna16_row_covers_the_nodule(real_as_luna16):
    mhd, image, annotations = real_as_luna16
    hu, geom, uid = load_luna16_volume(mhd)
    assert uid == mhd.stem and hu.shape == (133, 512, 512) and hu.min() == -1024
    row = annotations[uid][0]
    assert row["diameter_mm"] == pytest.approx(23.3506)
    np.testing.assert_allclose(geom.world_to_voxel(row["coord_lps"]),
                               image.TransformPhysicalPointToContinuousIndex(row["coord_lps"]), atol=1e-6)
    inst, records = nodule_masks(geom, annotations[uid], hu)
    rec = records[0]
    # measured: 5399 voxels, mean -110 HU inside; the shell out to 1.5 diameters has median about -794 HU
    assert rec["mean_hu"] > -500, rec["mean_hu"]
    expected = 4 / 3 * math.pi * (row["diameter_mm"] / 2) ** 3
    assert abs(rec["volume_mm3"] - expected) / expected < 0.10
    shell = sphere_mask(geom, row["coord_lps"], 1.5 * row["diameter_mm"]).astype(bool) & (inst == 0)
    assert np.median(hu[shell]) < -700, np.median(hu[shell])
    # the LIDC readers put this nodule at z about -125 .. -105 mm: the sphere's centre is in that range
    assert -125 < rec["centre_lps"][2] < -105


def test_convert_luna16_cli_writes_the_same_outputs(real_as_luna16, tmp_path, lidc_root):
    """data-prep convert --luna16-annotations: image, sphere label, nodules.csv with the annotated row."""
    import csv
    import subprocess
    import sys

    mhd, _, _ = real_as_luna16
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "data_prep", "-q", "convert", str(mhd.parent), "--out", str(out),
                        "--luna16-annotations", str(lidc_root / "luna16_annotations.csv")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    (row,) = list(csv.DictReader(open(out / "nodules.csv")))
    assert row["source"] == "luna16" and row["case_id"] == luna16_case_id(mhd.stem)
    assert float(row["diameter_mm_annotated"]) == pytest.approx(23.3506)
    centre = [float(row[f"centre_{a}_lps_mm"]) for a in "xyz"]
    np.testing.assert_allclose(centre, [56.2084, 86.3434, -115.8676], atol=0.5)
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels" / f"{row['case_id']}.nii.gz")))
    assert lab.max() == 1 and lab.sum() == 5399  # voxels of the 23.35 mm sphere on this grid
