"""`lungnod detect` end to end on the real LIDC-IDRI-0001 DICOM folder: a valid report on the original
geometry; a scan with nothing found gives an empty list. Random-weight models (the report's validity,
not its accuracy, is under test here; accuracy is measured by the bundle tests and the benchmarks); an
overlapping reconstruction's slice thickness reaching the dot filter, with the shipped models."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

SEG = ["--seg", "network_def#backbone=resnet18", "--seg", "spacing=[2,2,-1]"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict:
    from lungnod_ext.networks.network_setup import bundle_network
    from lungnod_ext.apps.pipeline import CLS_BUNDLE, SEG_BUNDLE

    d = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    torch.save({"model": bundle_network(SEG_BUNDLE).state_dict()}, d / "seg.pt")
    torch.save({"model": bundle_network(CLS_BUNDLE).state_dict()}, d / "cls.pt")
    return {"seg": d / "seg.pt", "cls": d / "cls.pt"}


def detect(inp, out, ckpts, *extra):
    proc = subprocess.run([sys.executable, "-m", "lungnod_ext", "detect", str(inp), "--out", str(out),
                           "--seg-ckpt", str(ckpts["seg"]), "--cls-ckpt", str(ckpts["cls"]), *SEG, *extra],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_detect_on_real_lidc_dicom_writes_a_valid_report(lidc_series_dir, ckpts, tmp_path):
    # threshold 0.45 on a random net gives candidates to classify; they are what the report shows
    proc = detect(lidc_series_dir, tmp_path / "out", ckpts, "--seg", "threshold=0.45", "--threshold", "0.0",
                  "--dicom-sr")   # implies --dicom-seg
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["cases"]) == 1 and summary["coordinate_system"] == "LPS"
    case = summary["cases"][0]
    assert case["case"].startswith("LIDC-IDRI-0001_")
    folder = out / case["case"]
    mask = nib.load(str(folder / f"{case['case']}_mask.nii.gz"))
    src = nib.load(str(out / "converted" / "images" / f"{case['case']}.nii.gz"))
    assert mask.shape == (512, 512, 133) and np.allclose(mask.affine, src.affine, atol=1e-4)
    nodules = json.loads((folder / f"{case['case']}_nodules.json").read_text())["candidates"]
    cands = json.loads((folder / f"{case['case']}_candidates.json").read_text())["candidates"]
    assert case["n_candidates"] == len(cands) >= 1 and len(nodules) == case["n_nodules"] == len(cands)
    assert all(0.0 <= c["probability"] <= 1.0 and c["probability"] == c["cls_prob"] for c in cands)
    assert [n["probability"] for n in nodules] == sorted((n["probability"] for n in nodules), reverse=True)
    html = (out / "report.html").read_text()
    assert "<html" in html and case["case"] in html and "LPS" in html
    # each nodule's attenuation (lungnod_ext.inference.attenuation) in its report row and terminal line
    from lungnod_ext.apps.pipeline import attenuation_text

    assert all(n["attenuation"] in ("solid", "part-solid", "ground-glass") for n in nodules)
    assert html.count("<td>solid</td>") + html.count("<td>ground-glass</td>") + html.count("<td>part-solid (") \
        == len(nodules)
    first = nodules[0]
    assert f"p {first['probability']:.2f}  {attenuation_text(first)}, long x short axis" in proc.stdout
    # the image number a PACS viewer shows: the InstanceNumber of the source file on the nodule's axes slice
    prov = json.loads((out / "converted" / "provenance" / f"{case['case']}.json").read_text())
    assert all(n["image_number"] == prov["slice_instance_numbers"][n["axes_slice_k"]] for n in nodules)
    assert f"image {first['image_number']}\n" in proc.stdout and f"<td>{first['image_number']}</td>" in html
    for png in case["overlays"]:
        assert (out / png).is_file()
    evidence = [p for p in case["overlays"] if p.endswith("_evidence.png")]
    assert len(evidence) == min(len(nodules), 10)  # the classifier's evidence map per reported nodule
    assert set(summary["seconds"]) >= {"inputs", "segment", "classify", "report", "total"}
    # DICOM SEG: one segment per reported nodule, voxel for voxel the nodules' label map
    from data_prep.nifti_io import read_nifti
    from lungnod_ext.inference.dicom_seg import read_dicom_seg

    labels, geometry = read_nifti(folder / f"{case['case']}_labels.nii.gz")
    expected = np.zeros(labels.shape, np.uint16)
    for n, nod in enumerate(nodules, start=1):
        expected[labels == nod["id"]] = n
    np.testing.assert_array_equal(read_dicom_seg(folder / f"{case['case']}_seg.dcm", geometry), expected)
    check_measurement_report(folder / f"{case['case']}_sr.dcm", folder / f"{case['case']}_seg.dcm", nodules,
                             tmp_path)
    assert not list(out.glob(".work-*")) and not list(out.glob(".*part*"))
    assert "report.html" in proc.stdout


def check_measurement_report(sr_path, seg_path, nodules, tmp_path):
    """The SR: same patient / study as the SEG, one TID 1411 group per nodule referencing SEG segment n with
    the SEG's tracking id, and the nodule's long / short axis, mean axial diameter, volume, probability,
    attenuation and (where part of it is solid) its solid component's mean axial diameter."""
    import highdicom as hd
    import pydicom

    from lungnod_ext.inference.dicom_sr import write_measurement_report

    seg, ds = pydicom.dcmread(seg_path), pydicom.dcmread(sr_path)
    assert ds.Modality == "SR" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"   # Comprehensive 3D SR
    assert (ds.PatientID, ds.StudyInstanceUID) == (seg.PatientID, seg.StudyInstanceUID)
    assert ds.CompletionFlag == "COMPLETE" and ds.VerificationFlag == "UNVERIFIED"
    groups = hd.sr.srread(sr_path).content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(nodules) == len(seg.SegmentSequence)
    for n, (group, nodule) in enumerate(zip(groups, nodules), start=1):
        assert group.tracking_identifier == seg.SegmentSequence[n - 1].TrackingID == f"nodule {nodule['id']}"
        refs = [item for item in group[0].ContentSequence if item.name.value == "121191"]   # Referenced Segment
        assert [(r.ReferencedSOPSequence[0].ReferencedSOPInstanceUID, r.ReferencedSOPSequence[0].ReferencedSegmentNumber)
                for r in refs] == [(seg.SOPInstanceUID, n)]
        got = {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}
        want = {"Long axis": (nodule["long_axis_mm"], "mm"), "Short axis": (nodule["short_axis_mm"], "mm"),
                "Diameter": (nodule["mean_axial_diameter_mm"], "mm"),
                "Volume": (round(nodule["volume_mm3"], 1), "mm3"),
                "Nodule probability (lungnod detector score)": (round(nodule["probability"], 4), "1")}
        if nodule["solid_mean_axial_diameter_mm"] is not None:
            want["Solid component mean axial diameter"] = (nodule["solid_mean_axial_diameter_mm"], "mm")
        assert got.keys() == want.keys()
        kinds = [(q.name.meaning, q.value.value) for q in group.get_qualitative_evaluations()]
        assert kinds == [("Nodule attenuation (lungnod, from HU)", nodule["attenuation"])]
        for name, (value, unit) in want.items():
            assert got[name][1] == unit and abs(float(got[name][0]) - value) < 1e-6, (name, got[name], value)
    with pytest.raises(ValueError, match="segment"):   # nodules that are not the SEG's segments: no file
        write_measurement_report(seg_path, nodules + nodules[:1], tmp_path / "x_sr.dcm")
    assert not (tmp_path / "x_sr.dcm").exists()


def test_nothing_found_gives_an_empty_list(ckpts, tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.normal(-800, 50, (96, 96, 24)).astype(np.int16)
    vol[:, :10] = 40  # some body so the input checks accept it
    vol[:, 10:12] = 700  # and some bone: CT values the HU check expects
    nib.save(nib.Nifti1Image(vol, np.diag([1.5, 1.5, 2.5, 1.0])), str(tmp_path / "empty.nii.gz"))
    detect(tmp_path / "empty.nii.gz", tmp_path / "out", ckpts, "--seg", "threshold=1.01")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["cases"][0]["n_candidates"] == 0 and summary["cases"][0]["nodules"] == []
    doc = json.loads((tmp_path / "out" / "empty" / "empty_nodules.json").read_text())
    assert doc["candidates"] == []
    assert "No nodule found" in (tmp_path / "out" / "report.html").read_text()


def test_dicom_outputs_need_a_dicom_input(tmp_path):
    """--dicom-sr (or --dicom-seg) on a NIfTI file: one error line before any work, exit 2, no output folder."""
    nib.save(nib.Nifti1Image(np.full((32, 32, 8), -800, np.int16), np.eye(4)), str(tmp_path / "scan.nii.gz"))
    proc = subprocess.run([sys.executable, "-m", "lungnod_ext", "detect", str(tmp_path / "scan.nii.gz"), "--out",
                           str(tmp_path / "out"), "--dicom-sr"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "scan.nii.gz" in lines[0] and "need a DICOM folder" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_an_overlapping_reconstruction_reaches_the_dot_filter(lidc_root, tmp_path):
    """40 slices of the real LIDC-IDRI-0002 (1.25 mm apart) labelled SliceThickness 2.5 (an overlapping
    reconstruction) already have the dot filter's 2.5 mm slice profile: their dot-filter candidates are those of
    the same slices labelled 1.25 mm with the profile off, and differ from the 1.25 mm slices' blurred ones. The
    thickness goes DICOM -> provenance -> datalist item -> AddBlobCandidatesd through MONAI's loader."""
    import pydicom

    series = next(p for p in lidc_root.glob("LIDC-IDRI-0002/*/*/") if len(list(p.glob("*.dcm"))) > 100)
    files = sorted(series.glob("*.dcm"))
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    for label in ("1.25", "2.5"):
        (tmp_path / label).mkdir()
        for k, i in enumerate(np.argsort(z)[100:140]):
            ds = pydicom.dcmread(files[i])
            ds.SliceThickness = label
            ds.save_as(tmp_path / label / f"s{k:03d}.dcm")

    def blobs(label, *extra):   # the shipped models (a random U-Net's segments cover the lung, leaving no blob)
        out = tmp_path / f"out_{label}_{len(extra)}"
        proc = subprocess.run([sys.executable, "-m", "lungnod_ext", "detect", str(tmp_path / label), "--out", str(out),
                               *extra], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        (case,) = json.loads((out / "summary.json").read_text())["cases"]
        assert case["scan"]["reconstruction"]["slice_thickness_mm"] == float(label)
        cands = json.loads((out / case["case"] / f"{case['case']}_candidates.json").read_text())["candidates"]
        return [(c["blob_rank"], round(c["blob_response"], 3)) for c in cands if c["detector"] in ("blob", "faint")]

    overlapping, thin = blobs("2.5"), blobs("1.25")
    assert len(overlapping) >= 20
    assert overlapping == blobs("1.25", "--seg", "blob_slice_profile_mm=null")
    assert thin != overlapping
