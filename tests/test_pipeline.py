"""`lungnod detect` end to end on the real LIDC-IDRI-0001 DICOM folder: a valid report on the original
geometry; a scan with nothing found gives an empty list. Random-weight models (the report's validity,
not its accuracy, is under test here; accuracy is measured by the bundle tests and the benchmarks)."""

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
                  "--dicom-seg")
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
    assert not list(out.glob(".work-*")) and not list(out.glob(".*part*"))
    assert "report.html" in proc.stdout


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
