"""The bad-input catalogue end to end through `lungnod detect` and both bundles' `monai.bundle run inference`.

Each bad input: exit code 2, exactly one stderr line `error: <input>: <problem>` naming the input (other
stderr lines only `warning: ...` notes, e.g. a skipped series),
no traceback, and no output folder left behind. Odd but usable DICOM (a truncated file, a duplicated
slice, two series in one folder, gantry tilt, compressed transfer syntax) is detected, with a `warning:`
line where data was dropped or resampled. The input files are byte-identical afterwards in every case.
A random-weight ResNet-18 checkpoint stands in for a trained model: every error here is raised before the
model's output matters.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SEG_BUNDLE = REPO / "bundles" / "lung_nodule_ct_segmentation"
CLS_BUNDLE = REPO / "bundles" / "lung_nodule_ct_classification"
FIRST, LAST = 80, 100


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from lungnod_ext.networks.network_setup import bundle_network

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save({"model": bundle_network(SEG_BUNDLE).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def slices(lidc_series_dir) -> list[Path]:
    files = sorted(lidc_series_dir.glob("*.dcm"))
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    return [files[i] for i in np.argsort(z)][FIRST:LAST]


def _copy(slices, dest: Path) -> list[Path]:
    dest.mkdir(parents=True)
    return [Path(shutil.copy(f, dest / f"s{k:03d}.dcm")) for k, f in enumerate(slices)]


def _edit_all(files, **changes):
    for f in files:
        ds = pydicom.dcmread(f)
        for k, v in changes.items():
            setattr(ds, k, v)
        ds.save_as(f)


def _nifti(path: Path, array, zooms=(0.7, 0.7, 2.5)) -> Path:
    img = nib.Nifti1Image(np.asarray(array), np.diag([*zooms, 1.0]))
    nib.save(img, str(path))
    return path


def detect(inp, out: Path, ckpt: Path, *extra) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "lungnod_ext", "detect", str(inp), "--out", str(out), "--no-classifier",
           "--seg-ckpt", str(ckpt), "--seg", "network_def#backbone=resnet18", "--seg", "spacing=[2,2,-1]", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONWARNINGS="ignore"))


def checksums(root: Path) -> dict[str, str]:
    """sha1 of every file under ``root`` (or of ``root`` itself), by relative path."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root.parent)): hashlib.sha1(p.read_bytes()).hexdigest() for p in files}


def assert_one_line_error(proc, out: Path, *words):
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    err = [line for line in lines if line.startswith("error: ")]
    assert len(err) == 1 and all(line.startswith(("error: ", "warning: ")) for line in lines), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for w in words:
        assert w.lower() in err[0].lower(), (w, err[0])
    assert not out.exists(), f"partial output left in {out}: {list(out.rglob('*'))[:5]}"
    return err[0]


def test_nonexistent_path(tmp_path, ckpt):
    assert_one_line_error(detect(tmp_path / "nope", tmp_path / "out", ckpt), tmp_path / "out", "nope", "no such")


def test_empty_folder(tmp_path, ckpt):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(detect(tmp_path / "empty", tmp_path / "out", ckpt), tmp_path / "out", "empty")


@pytest.mark.parametrize("kind", ["non_ct", "scout_only", "missing_slice", "two_slices_one_position",
                                  "corrupt_all"])
def test_unusable_dicom_series(kind, slices, tmp_path, ckpt):
    src = tmp_path / kind
    files = _copy(slices, src)
    if kind == "non_ct":
        _edit_all(files, Modality="MR")
    elif kind == "scout_only":
        _edit_all(files, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    elif kind == "missing_slice":
        files[10].unlink()
    elif kind == "two_slices_one_position":
        ds = pydicom.dcmread(files[5])
        ds.ImagePositionPatient = pydicom.dcmread(files[6]).ImagePositionPatient
        ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
        ds.save_as(files[5])
    elif kind == "corrupt_all":
        for f in files:
            f.write_bytes(f.read_bytes()[:300])
    before = checksums(src)
    line = assert_one_line_error(detect(src, tmp_path / "out", ckpt), tmp_path / "out", kind)
    assert checksums(src) == before
    expected = "no dicom files found" if kind == "corrupt_all" else "no usable ct series"
    assert expected in line.lower()


def _test_volume(kind: str, path: Path) -> Path:
    """Write a NIfTI test volume of ``kind`` to ``path``: "ok" (random HU body, 64 x 64 x 16) or one that
    inference must refuse (nan, constant, all_air, tiny, four_d, rgb, garbage, normalised, no_air)."""
    rng = np.random.default_rng(0)
    body = rng.normal(-300, 300, (64, 64, 16)).astype(np.int16)
    if kind == "nan":
        arr = body.astype(np.float32)
        arr[3, 3, 3] = np.nan
        return _nifti(path, arr)
    if kind == "constant":
        return _nifti(path, np.full((64, 64, 16), 40, np.int16))
    if kind == "normalised":        # what an intensity-normalised export looks like: floats in [0, 1]
        return _nifti(path, np.clip((body.astype(np.float32) + 1024) / 2048, 0, 1))
    if kind == "no_air":            # soft-tissue values only: a body crop, or an MR-like image
        return _nifti(path, rng.normal(40, 30, (64, 64, 16)).astype(np.int16))
    if kind == "all_air":
        return _nifti(path, rng.normal(-1000, 10, (64, 64, 16)).astype(np.int16))
    if kind == "tiny":
        return _nifti(path, body[:10, :10, :2])
    if kind == "four_d":
        return _nifti(path, np.stack([body, body], axis=-1))
    if kind == "rgb":
        rgb = np.zeros((64, 64, 16), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(path))
        return path
    if kind == "garbage":
        path.write_bytes(b"\x1f\x8b not really a gzip file")
        return path
    return _nifti(path, body)


@pytest.mark.parametrize("kind,words", [
    ("nan", ["nan"]), ("constant", ["constant"]), ("all_air", ["air"]), ("tiny", ["too small"]),
    ("four_d", ["4d"]), ("rgb", ["rgb"]), ("garbage", ["cannot read"]),
    ("normalised", ["not look like CT Hounsfield units", "float values in [0, 1]", "--assume-hu"]),
    ("no_air", ["not look like CT Hounsfield units", "no air", "--assume-hu"])])
def test_bad_volumes(kind, words, tmp_path, ckpt):
    path = _test_volume(kind, tmp_path / f"{kind}.nii.gz")
    before = checksums(path)
    assert_one_line_error(detect(path, tmp_path / "out", ckpt), tmp_path / "out", path.name, *words)
    assert checksums(path) == before


@pytest.mark.parametrize("kind", ["truncated_file", "duplicated_slice", "two_series", "gantry_tilt",
                                  "rle_compressed", "sharp_kernel"])
def test_odd_but_usable_dicom_is_detected(kind, slices, tmp_path, ckpt, tilt_series):
    """Convert's catalogue of odd-but-usable series, through the whole `lungnod detect`: a report per case. Each
    case names its reconstruction kernel (LIDC-IDRI-0001: GE STANDARD); a sharp one (here relabelled LUNG) gets a
    note in summary.json, report.html and the terminal, a soft one none."""
    src = tmp_path / kind
    files = _copy(slices, src)
    n_cases, expect_warning = 1, None
    if kind == "truncated_file":
        files[-1].write_bytes(files[-1].read_bytes()[:4000])
        expect_warning = "truncated"
    elif kind == "duplicated_slice":
        shutil.copy(files[5], src / "copy_of_s005.dcm")
        expect_warning = "duplicate slice"
    elif kind == "two_series":
        other = pydicom.uid.generate_uid()
        for f in files[10:]:
            ds = pydicom.dcmread(f)
            ds.SeriesInstanceUID, ds.SOPInstanceUID = other, pydicom.uid.generate_uid()
            ds.save_as(f)
        n_cases = 2
    elif kind == "gantry_tilt":
        tilt_series(files)
        expect_warning = "gantry tilt"
    elif kind == "rle_compressed":
        for f in files:
            ds = pydicom.dcmread(f)
            ds.compress(pydicom.uid.RLELossless)
            ds.save_as(f)
    elif kind == "sharp_kernel":
        _edit_all(files, ConvolutionKernel="LUNG")
    before = checksums(src)
    out = tmp_path / "out"
    proc = detect(src, out, ckpt)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert all(line.startswith("warning: ") for line in lines), proc.stderr
    if expect_warning:
        assert any(expect_warning in line.lower() for line in lines), proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["cases"]) == n_cases
    depth = sorted(json.loads(p.read_text())["geometry"]["shape_ijk"][2] for p in (out / "converted" / "provenance").glob("*.json"))
    assert depth == {"truncated_file": [19], "two_series": [10, 10]}.get(kind, [20])
    kernel = "LUNG" if kind == "sharp_kernel" else "STANDARD"
    for case in summary["cases"]:
        case_id = case["case"]
        assert case["scan"]["reconstruction"] == {"manufacturer": "GE MEDICAL SYSTEMS", "convolution_kernel": kernel,
                                                  "sharp_kernel": kind == "sharp_kernel", "slice_thickness_mm": 2.5}
        kernel_notes = [n for n in case["notes"] if n.startswith("reconstructed with a sharp kernel")]
        assert len(kernel_notes) == (kind == "sharp_kernel")
        assert f"voxels of 0.70 x 0.70 x 2.50 mm, kernel {kernel} (GE MEDICAL SYSTEMS))" in proc.stdout
        assert (out / case_id / f"{case_id}_nodules.json").is_file()
        assert nib.load(str(out / case_id / f"{case_id}_mask.nii.gz")).shape[2] == depth[0]
    assert (out / "report.html").is_file()
    if kind == "sharp_kernel":
        assert "Note: reconstructed with a sharp kernel (GE MEDICAL SYSTEMS LUNG)" in (out / "report.html").read_text()
        assert "  note: reconstructed with a sharp kernel (GE MEDICAL SYSTEMS LUNG): the models learned" in proc.stdout
    assert checksums(src) == before


def test_unwritable_output_folder(tmp_path, ckpt, slices):
    if os.geteuid() == 0:
        # root ignores permission bits: use a path under a regular file instead
        blocker = tmp_path / "file"
        blocker.write_text("x")
        out = blocker / "out"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        out = locked / "out"
    img = _test_volume("ok", tmp_path / "ok.nii.gz")
    proc = detect(img, out, ckpt)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "not writable" in proc.stderr and str(out) in proc.stderr


def test_assume_hu_lets_an_image_through(tmp_path, ckpt):
    path = _test_volume("no_air", tmp_path / "no_air.nii.gz")
    proc = detect(path, tmp_path / "out", ckpt, "--assume-hu", "--no-overlays", "--no-explain")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / "summary.json").is_file()


def test_a_switch_given_as_text_is_one_line(tmp_path, ckpt):
    """`--seg write_overlays=yes` reaches the segmentation config as the text 'yes' (true / false / True / False are
    read as bools): refused before inference with the setting's name, exit 2, nothing written."""
    img = _test_volume("ok", tmp_path / "ok.nii.gz")
    proc = detect(img, tmp_path / "out", ckpt, "--seg", "write_overlays=yes")
    assert_one_line_error(proc, tmp_path / "out", "bundle setting write_overlays must be True or False, got 'yes'",
                          "write_overlays=true")


def test_missing_checkpoint(tmp_path):
    img = _test_volume("ok", tmp_path / "ok.nii.gz")
    proc = detect(img, tmp_path / "out", tmp_path / "no_model.pt")
    assert_one_line_error(proc, tmp_path / "out", "no_model.pt", "checkpoint not found")


BUNDLE_CASES = {
    # kind: text expected in the one-line reason
    "missing_input": "nope.nii.gz: no such file or folder",
    "four_d": "a 4D image",
    "nan": "NaN or infinite",
    "all_air": "all air",
    "tiny": "volume too small",
    "normalised": "values do not look like CT Hounsfield units",
    "missing_checkpoint": "no_model.pt: checkpoint not found",
}


@pytest.fixture(scope="module")
def cls_ckpt(tmp_path_factory) -> Path:
    from lungnod_ext.networks.network_setup import bundle_network

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cls_ckpt") / "model.pt"
    torch.save({"model": bundle_network(CLS_BUNDLE).state_dict()}, path)
    return path


@pytest.mark.parametrize("bundle,kind", [(b, k) for b in ("segmentation", "classification") for k in BUNDLE_CASES]
                         + [("segmentation", "non_ct_dicom"), ("classification", "bad_candidates_json")])
def test_bundle_inference_config_reports_the_problem(bundle, kind, tmp_path, ckpt, cls_ckpt, slices):
    """`monai.bundle run inference` of either bundle fails (non-zero) with our one-line reason in its output,
    writing nothing (MONAI's own CLI prints its traceback around it: that CLI is not ours)."""
    inp = tmp_path / "nope.nii.gz"
    use_ckpt = ckpt if bundle == "segmentation" else cls_ckpt
    candidates = tmp_path / "candidates.json"
    candidates.write_text(json.dumps({"candidates": [{"id": 1, "centre_lps": [0.0, 0.0, 0.0]}]}))
    if kind in ("four_d", "nan", "all_air", "tiny", "normalised", "missing_checkpoint", "bad_candidates_json"):
        inp = _test_volume(kind, tmp_path / f"{kind}.nii.gz")
    if kind == "missing_checkpoint":
        use_ckpt = tmp_path / "no_model.pt"
    if kind == "bad_candidates_json":
        candidates.write_text('{"candidates": [{"id": 1, "centre_lps": [0.0, 0.0')
    if kind == "non_ct_dicom":
        inp = tmp_path / "mr"
        _edit_all(_copy(slices[:5], inp), Modality="MR")
    before = checksums(inp) if inp.exists() else {}
    out = tmp_path / "out"
    root, extra = ((SEG_BUNDLE, ["--network_def#backbone", "resnet18"]) if bundle == "segmentation"
                   else (CLS_BUNDLE, ["--candidates", str(candidates)]))
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
                           "configs/inference.json", "--input", str(inp), "--output_dir", str(out), "--ckpt_path",
                           str(use_ckpt), *extra], cwd=root, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode != 0
    expected = {**BUNDLE_CASES, "non_ct_dicom": "mr: no usable CT series",
                "bad_candidates_json": "candidates.json: candidates file is not valid JSON"}[kind]
    assert expected in proc.stdout + proc.stderr, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert not [p for p in out.rglob("*") if p.is_file()] if out.exists() else True
    if inp.exists():
        assert checksums(inp) == before
