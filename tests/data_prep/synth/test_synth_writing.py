"""data_prep.synth.writing: a small synthetic cohort written once, checked against the in-memory cases it
was generated from (DICOM pixels, geometry, LIDC XML contours, truth/consensus masks), resumed, written in
parallel, and a failed write."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID
from scipy import ndimage

from data_prep.nifti_io import read_nifti
from data_prep.synth import CohortConfig, case_rng, generate_case, write_cohort
from data_prep.synth import writing

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_helpers import CONFIG, NS, SMALL, full, parse_reads, read_series, rebuild_mark  # noqa: E402


@pytest.fixture(scope="module")
def cavitary_case():
    cfg = CohortConfig(seed=5, nodules_per_case=(3, 3), nodule_types=("solid",), diameter_mm=(12.0, 18.0),
                       cavitary_fraction=1.0, readers_per_nodule=(2, 4), **SMALL)
    return generate_case(cfg, 0, case_rng(cfg, 0))


def test_layout(cohort):
    out, gts, cases = cohort
    assert len(gts) == 3
    assert not (out / ".synth_tmp").exists()
    for i, (gt, case) in enumerate(zip(gts, cases)):
        assert gt["patient_id"] == f"SYN-{i + 1:04d}" == case.patient_id
        series = out / "dicom" / gt["patient_id"] / gt["study_uid"] / gt["series_uid"]
        assert series == out / gt["dicom_dir"]
        assert len(list(series.glob("*.dcm"))) == CONFIG.n_slices
        xmls = list(series.glob("*.xml"))
        assert len(xmls) == 1 and xmls[0] == out / gt["xml_path"]
        assert len(xmls[0].stem) == 3 and xmls[0].stem.isdigit()
        for name in ("truth_mask", "consensus_mask"):
            assert (out / gt[name]).is_file()
        assert json.loads((out / "ground_truth" / f"{gt['series_uid']}.json").read_text()) == gt
    assert len({gt["series_uid"] for gt in gts}) == 3


def test_dicom_headers(cohort):
    out, gts, cases = cohort
    files = sorted((out / gts[0]["dicom_dir"]).glob("*.dcm"))
    dss = [pydicom.dcmread(f) for f in files]
    d = dss[0]
    assert d.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert d.file_meta.MediaStorageSOPClassUID == d.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert d.Modality == "CT" and d.Manufacturer == "lungnod-synth"
    assert list(d.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert [float(v) for v in d.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert (d.Rows, d.Columns) == (112, 112) and [float(v) for v in d.PixelSpacing] == [2.0, 2.0]
    assert float(d.SliceThickness) == float(d.SpacingBetweenSlices) == 2.5
    assert (d.BitsAllocated, d.BitsStored, d.HighBit, d.PixelRepresentation) == (16, 12, 11, 0)
    assert d.PhotometricInterpretation == "MONOCHROME2"
    assert int(d.RescaleIntercept) == -1024 and int(d.RescaleSlope) == 1
    assert d.PatientID == "SYN-0001"
    assert (d.StudyInstanceUID, d.SeriesInstanceUID) == (gts[0]["study_uid"], gts[0]["series_uid"])
    assert float(d.KVP) == 120 and "synth" in d.SeriesDescription
    uids = [x.SOPInstanceUID for x in dss]
    assert len(set(uids)) == len(uids)
    assert all(UID(u).is_valid for u in uids + [d.StudyInstanceUID, d.FrameOfReferenceUID])
    assert len({x.FrameOfReferenceUID for x in dss}) == 1
    z = np.array([float(x.ImagePositionPatient[2]) for x in dss])
    inst = np.array([int(x.InstanceNumber) for x in dss])
    assert sorted(inst) == list(range(1, 49))
    by_inst = z[np.argsort(inst)]
    assert np.all(np.diff(by_inst) < 0)                      # InstanceNumber 1 = top slice, counting down
    assert not np.all(np.diff(z) > 0) and not np.all(np.diff(z) < 0)   # file names do not follow slice order
    assert np.allclose(np.diff(np.sort(z)), 2.5)


def test_dicom_pixels_and_geometry_match_the_case(cohort):
    out, gts, cases = cohort
    for gt, case in zip(gts, cases):
        hu, geom, _, _ = read_series(out / gt["dicom_dir"])
        assert np.array_equal(hu, case.hu_zyx)               # also: generation is deterministic
        g = gt["geometry"]
        assert np.allclose(geom.origin, g["origin_lps"], atol=1e-4) and np.allclose(geom.spacing, g["spacing"])
        assert list(geom.shape) == g["shape"]
        for name in ("truth_mask", "consensus_mask"):
            arr, ng = read_nifti(out / gt[name])
            assert arr.dtype == np.uint16 and arr.shape == hu.shape
            assert np.allclose(ng.affine_lps(), geom.affine_lps(), atol=1e-4)


def test_sitk_reads_the_series(cohort):
    import SimpleITK as sitk

    out, gts, cases = cohort
    series = out / gts[1]["dicom_dir"]
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(series))
    reader.SetFileNames(names)
    img = reader.Execute()
    arr = sitk.GetArrayFromImage(img)
    assert np.array_equal(arr, cases[1].hu_zyx)
    assert np.allclose(img.GetOrigin(), gts[1]["geometry"]["origin_lps"], atol=1e-4)


def test_xml_format_and_reader_masks_round_trip(cohort):
    out, gts, cases = cohort
    n_checked = 0
    for gt, case in zip(gts, cases):
        _, geom, sop_to_k, dss = read_series(out / gt["dicom_dir"])
        z_of = {k: float(d.ImagePositionPatient[2]) for k, d in enumerate(dss)}
        root, reads = parse_reads(out / gt["xml_path"], sop_to_k)
        header = root.find("l:ResponseHeader", NS)
        assert root.tag == "{http://www.nih.gov}LidcReadMessage"
        assert header.find("l:SeriesInstanceUid", NS).text == gt["series_uid"]
        assert header.find("l:StudyInstanceUID", NS).text == gt["study_uid"]
        assert list(reads) == gt["readers"] and len(gt["readers"]) == 4
        shape = case.hu_zyx.shape
        for reader, r in reads.items():
            by_id = {m["id"]: m for m in r["marks"]}
            assert len(by_id) == len(r["marks"])
            for mark in r["marks"]:
                for k, z, _, pts in mark["rois"]:
                    assert abs(z - z_of[k]) < 1e-4
                    assert all(0 <= x < shape[2] and 0 <= y < shape[1] for x, y in pts)
            for nod, n_gt in zip(case.nodules, gt["nodules"]):
                if reader not in nod.reader_masks:
                    assert reader not in n_gt["reader_nodule_ids"]
                    continue
                mark = by_id[n_gt["reader_nodule_ids"][reader]]
                assert set(mark["chars"]) == {"subtlety", "internalStructure", "calcification", "sphericity", "margin",
                                              "lobulation", "spiculation", "texture", "malignancy"}
                assert mark["chars"]["malignancy"] == n_gt["malignancy"][reader]
                expected = full(nod.reader_masks[reader], shape)
                rebuilt = rebuild_mark(mark, shape)
                for k in range(shape[0]):
                    assert np.array_equal(rebuilt[k], expected[k]), (reader, n_gt["id"], k)
                assert any(len(pts) > 1 for _, _, inc, pts in mark["rois"] if inc)
                n_checked += 1
            for s in gt["small_nodules"]:
                if reader in s["reader_ids"]:
                    mark = by_id[s["reader_mark_ids"][reader]]
                    assert mark["chars"] is None and len(mark["rois"]) == 1 and len(mark["rois"][0][3]) == 1
                    p = s["reader_points"][reader]
                    assert mark["rois"][0][0] == p["slice"] and mark["rois"][0][3][0] == (p["column"], p["row"])
            nn = {m["id"]: m for m in r["non"]}
            for s in gt["non_nodules"]:
                if reader in s["reader_ids"]:
                    m = nn[s["reader_mark_ids"][reader]]
                    p = s["reader_points"][reader]
                    assert (m["k"], m["xy"]) == (p["slice"], (p["column"], p["row"]))
                    assert abs(m["z"] - z_of[m["k"]]) < 1e-4
        for n_gt in gt["nodules"]:
            ids = list(n_gt["reader_nodule_ids"].values())
            assert len(set(ids)) == len(ids) == n_gt["n_readers"]           # readers use their own IDs
    assert n_checked >= 3


def test_cavities_give_exclusion_contours_that_round_trip(cavitary_case, tmp_path):
    case = cavitary_case
    xml = tmp_path / "001.xml"
    xml.write_text(writing.lidc_xml_text(case))
    _, reads = parse_reads(xml, {u: k for k, u in enumerate(case.sop_uids)})
    shape = case.hu_zyx.shape
    n_false = 0
    for nod in case.nodules:
        assert nod.spec.cavity_fraction > 0
        t = full(nod.truth, shape)
        filled = np.stack([ndimage.binary_fill_holes(t[k]) for k in range(shape[0])])
        cavity = filled & ~t
        assert cavity.sum() > 0 and (case.hu_zyx[cavity] < -700).mean() > 0.8     # air, not nodule
        for reader, rm in nod.reader_masks.items():
            mark = next(m for m in reads[reader]["marks"] if m["id"] == nod.reader_nodule_ids[reader])
            assert mark["chars"]["internalStructure"] == 4
            n_false += sum(not inc for _, _, inc, _ in mark["rois"])
            assert np.array_equal(rebuild_mark(mark, shape), full(rm, shape))
    assert n_false >= 3


def test_consensus_and_truth_masks(cohort):
    """The consensus NIfTI equals the >= 50 % vote of the masks read back from the XML."""
    out, gts, cases = cohort
    for gt, case in zip(gts, cases):
        _, _, sop_to_k, _ = read_series(out / gt["dicom_dir"])
        _, reads = parse_reads(out / gt["xml_path"], sop_to_k)
        shape = case.hu_zyx.shape
        truth, _ = read_nifti(out / gt["truth_mask"])
        cons, _ = read_nifti(out / gt["consensus_mask"])
        assert np.array_equal(truth, case.truth_instance_mask())
        assert set(np.unique(truth)) == set(range(gt["n_nodules"] + 1))
        expected = np.zeros(shape, np.uint16)
        for n in gt["nodules"]:
            votes = np.zeros(shape, np.int32)
            for reader, mid in n["reader_nodule_ids"].items():
                mark = next(m for m in reads[reader]["marks"] if m["id"] == mid)
                votes += rebuild_mark(mark, shape)
            expected[votes >= 0.5 * n["n_readers"]] = n["id"]
            t, c = truth == n["id"], cons == n["id"]
            d = 2 * (t & c).sum() / (t.sum() + c.sum())
            assert np.isclose(d, n["dice_consensus_truth"], atol=1e-6)
            if n["diameter_mm"] >= 6:
                assert d > 0.95, n
        assert np.array_equal(cons, expected)


def test_rerun_reuses_complete_cases(cohort):
    out, gts, _ = cohort
    stamp = {p: p.stat().st_mtime_ns for p in (out / "ground_truth").iterdir()}
    again = write_cohort(out, CONFIG)
    assert again == gts
    assert {p: p.stat().st_mtime_ns for p in (out / "ground_truth").iterdir()} == stamp


def test_failed_write_leaves_no_partial_case(tmp_path, monkeypatch):
    cfg = CohortConfig(**{**CONFIG.__dict__, "n_cases": 1, "n_slices": 24})
    stale = tmp_path / ".synth_tmp" / "SYN-0001.old.part"
    stale.mkdir(parents=True)                             # left by a killed run
    real = pydicom.dcmwrite
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(writing.pydicom, "dcmwrite", failing)
    with pytest.raises(OSError):
        write_cohort(tmp_path, cfg)
    assert not stale.exists()
    assert list((tmp_path / "dicom").iterdir()) == [] and list((tmp_path / "ground_truth").iterdir()) == []
    assert not any((tmp_path / ".synth_tmp").iterdir())
    monkeypatch.setattr(writing.pydicom, "dcmwrite", real)
    gts = write_cohort(tmp_path, cfg)
    assert len(list((tmp_path / gts[0]["dicom_dir"]).glob("*.dcm"))) == 24
    assert not (tmp_path / ".synth_tmp").exists()


def test_parallel_write_equals_serial(cohort, tmp_path):
    out, gts, _ = cohort
    cfg = CohortConfig(**{**CONFIG.__dict__, "n_cases": 2})
    parallel = write_cohort(tmp_path, cfg, workers=2)

    def same(gt):                                        # the recorded config differs only in n_cases
        return {**gt, "generator": {**gt["generator"], "config": {**gt["generator"]["config"], "n_cases": None}}}

    assert [same(g) for g in parallel] == [same(g) for g in gts[:2]]
    for gt in parallel:
        a = sorted((tmp_path / gt["dicom_dir"]).iterdir())
        b = sorted((out / gt["dicom_dir"]).iterdir())
        assert [p.name for p in a] == [p.name for p in b]
        assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
