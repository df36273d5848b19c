"""convert on the real LIDC-IDRI-0001 series: geometry, HU, consensus nodule vs LUNA16, dcm2niix agreement."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import pydicom

from data_prep.nifti_io import read_nifti
from data_prep.coords import Geometry


def _case(out):
    return next((out / "provenance").glob("*.json")).stem


def test_image_shape_spacing_and_hu(lidc_converted):
    case = _case(lidc_converted)
    assert case.startswith("LIDC-IDRI-0001_")
    img = nib.load(str(lidc_converted / "images" / f"{case}.nii.gz"))
    assert img.shape == (512, 512, 133)
    assert img.get_data_dtype() == np.int16
    np.testing.assert_allclose(img.header.get_zooms(), (0.703125, 0.703125, 2.5))
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")  # RAS affine of an LPS-ordered array
    data = np.asarray(img.dataobj)
    assert data.min() == -1024  # no -2048 padding left
    # air outside the body is about -1000 HU: the corner voxels of every slice
    corners = data[:20, :20, :]
    assert -1030 <= np.median(corners) <= -950
    # slice z of the header runs -340 .. -10 mm (sorted by position, not file name)
    geom = Geometry.from_affine_ras(img.affine, img.shape)
    assert geom.voxel_to_world([0, 0, 0])[2] == pytest.approx(-340.0)
    assert geom.voxel_to_world([0, 0, 132])[2] == pytest.approx(-10.0)


def test_consensus_nodule_matches_luna16(lidc_converted, luna16_row):
    rows = list(csv.DictReader(open(lidc_converted / "nodules.csv")))
    assert len(rows) == 1
    r = rows[0]
    assert r["series_uid"] == luna16_row["series_uid"]
    centre = np.array([float(r[f"centre_{a}_lps_mm"]) for a in "xyz"])
    assert np.linalg.norm(centre - luna16_row["centre_lps"]) < 3.0
    d = float(r["diameter_mm"])
    assert abs(d - luna16_row["diameter_mm"]) / luna16_row["diameter_mm"] < 0.25
    assert int(r["n_readers"]) == 4
    assert r["malignancy_ratings"] == "5;5;5;4" and float(r["malignancy_median"]) == 5.0
    # the mask on disk agrees with the table
    case = r["case_id"]
    lab, geom = read_nifti(lidc_converted / "labels" / f"{case}.nii.gz")
    assert lab.dtype == np.uint8 and set(np.unique(lab)) == {0, 1}
    assert lab.sum() * geom.voxel_volume_mm3 == pytest.approx(float(r["volume_mm3"]), rel=1e-3)
    hu, _ = read_nifti(lidc_converted / "images" / f"{case}.nii.gz")
    assert hu[lab > 0].mean() > -400  # a dense nodule, not lung (~ -850)


def test_small_marks_table(lidc_converted):
    rows = list(csv.DictReader(open(lidc_converted / "small_marks.csv")))
    kinds = [r["kind"] for r in rows]
    # README: the other marks are nodules < 3 mm (points) and non-nodules
    assert kinds.count("small_nodule") == 3
    assert kinds.count("non_nodule") >= 5
    assert all(int(r["n_readers"]) >= 1 for r in rows)


def test_voxel_world_round_trip(lidc_converted, luna16_row):
    case = _case(lidc_converted)
    img = nib.load(str(lidc_converted / "images" / f"{case}.nii.gz"))
    geom = Geometry.from_affine_ras(img.affine, img.shape)
    ijk = np.array([[0, 0, 0], [511, 511, 132], [316.3, 367.0, 89.6], [17, 400, 3]])
    np.testing.assert_allclose(geom.world_to_voxel(geom.voxel_to_world(ijk)), ijk, atol=1e-9)
    # the LUNA16 centre lands inside the nodule on the converted grid
    i, j, k = np.round(geom.world_to_voxel(luna16_row["centre_lps"])).astype(int)
    lab, _ = read_nifti(lidc_converted / "labels" / f"{case}.nii.gz")
    assert lab[k, j, i] == 1
    # nibabel (RAS) and our LPS geometry agree on where voxel (i, j, k) is
    ras = nib.affines.apply_affine(img.affine, ijk)
    np.testing.assert_allclose(ras * [-1, -1, 1], geom.voxel_to_world(ijk), atol=1e-4)


def test_provenance_record(lidc_converted, lidc_series_dir):
    prov = json.loads(next((lidc_converted / "provenance").glob("*.json")).read_text())
    assert prov["status"] == "complete"
    assert len(prov["source_files"]) == 133
    assert prov["series_uid"] == lidc_series_dir.name
    assert prov["geometry"]["spacing_mm"] == [0.703125, 0.703125, 2.5]
    assert prov["hu_range"][0] == -1024
    # the scanner and reconstruction kernel the models learned (lungnod detect notes a sharp one), and the
    # slices' thickness (DICOM SliceThickness; the dot filter's slice profile starts from it)
    assert prov["reconstruction"] == {"manufacturer": "GE MEDICAL SYSTEMS", "convolution_kernel": "STANDARD",
                                      "sharp_kernel": False, "slice_thickness_mm": 2.5}
    # the image number a PACS viewer shows for each converted slice k: the InstanceNumber of the file at k's
    # position (the series' files, read here by pydicom on their own)
    by_z = {}
    for path in lidc_series_dir.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_z[round(float(ds.ImagePositionPatient[2]), 2)] = int(ds.InstanceNumber)
    geom = Geometry.from_affine_ras(nib.load(str(next((lidc_converted / "images").glob("*.nii.gz")))).affine,
                                    (512, 512, 133))
    expected = [by_z[round(float(geom.voxel_to_world([0, 0, k])[2]), 2)] for k in range(133)]
    assert prov["slice_instance_numbers"] == expected
    assert sorted(expected) == list(range(1, 134)) and expected[0] != expected[-1]


def test_matches_dcm2niix_orientation(lidc_converted, lidc_series_dir, tmp_path):
    exe = shutil.which("dcm2niix") or str((__import__("pathlib").Path(sys.executable).parent / "dcm2niix"))
    subprocess.run([exe, "-z", "y", "-f", "ref", "-o", str(tmp_path), str(lidc_series_dir)], check=True,
                   capture_output=True)
    ref = nib.as_closest_canonical(nib.load(str(tmp_path / "ref.nii.gz")))
    ours = nib.as_closest_canonical(nib.load(str(next((lidc_converted / "images").glob("*.nii.gz")))))
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-3)
    a, b = np.asarray(ours.dataobj), np.asarray(ref.dataobj)
    assert a.shape == b.shape
    np.testing.assert_array_equal(a, np.maximum(b, -1024))


def test_rerun_reuses_and_force_redoes(lidc_root, tmp_path):
    from data_prep.convert import ConvertOptions, convert_dicom_root

    lidc_root = lidc_root / "LIDC-IDRI-0001"
    r1 = convert_dicom_root(lidc_root, tmp_path, ConvertOptions(progress=False))
    img = next((tmp_path / "images").glob("*.nii.gz"))
    before = img.read_bytes()
    r2 = convert_dicom_root(lidc_root, tmp_path, ConvertOptions(progress=False))
    assert r1.converted and not r2.converted and r2.reused == r1.converted
    r3 = convert_dicom_root(lidc_root, tmp_path, ConvertOptions(progress=False, force=True))
    assert r3.converted == r1.converted
    assert img.read_bytes() == before  # deterministic output
    assert not list(tmp_path.rglob("*.part"))


def test_rle_lossless_series_decodes_as_simpleitk_does(lidc_root):
    """LIDC-IDRI-0006 is RLE Lossless: read_series_hu decodes it with pydicom (pylibjpeg-rle), the same
    int16 HU voxel for voxel as SimpleITK's GDCM (the pipeline-speed section of the README has the timing)."""
    from data_prep import dicom_series

    plans, _, _ = dicom_series.discover_series(lidc_root / "LIDC-IDRI-0006")
    plan = plans[0]
    assert {h.transfer_syntax for h in plan.headers} == {dicom_series.RLE_LOSSLESS}
    hu = dicom_series.read_series_hu(plan)
    image, view = dicom_series._read_series_sitk(plan)
    reference = np.clip(view, dicom_series.HU_AIR, dicom_series.HU_MAX).astype(np.int16)
    assert hu.dtype == np.int16 and hu.shape == (133, 512, 512)
    assert np.array_equal(hu, reference)
    assert hu.min() == -1024 and hu.max() > 1000            # air and bone in HU
