"""The bad-input catalogue end to end through `lungnod detect` and `monai.bundle run inference`.

Each bad input: exit code 2, exactly one stderr line `error: <input>: <problem>` naming the input (other
stderr lines only `warning: ...` notes, e.g. a skipped series),
no traceback, and no output folder left behind. A random-weight ResNet-18 checkpoint stands in for a
trained model: every error here is raised before the model's output matters.
"""

from __future__ import annotations

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
FIRST, LAST = 80, 100


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from monai.networks.nets import FlexibleUNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save({"model": FlexibleUNet(1, 1, "resnet18", pretrained=False, spatial_dims=2).state_dict()}, path)
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
    line = assert_one_line_error(detect(src, tmp_path / "out", ckpt), tmp_path / "out", kind)
    expected = "no dicom files found" if kind == "corrupt_all" else "no usable ct series"
    assert expected in line.lower()


@pytest.mark.parametrize("kind,words", [
    ("nan", ["nan"]), ("constant", ["constant"]), ("all_air", ["air"]), ("tiny", ["too small"]),
    ("four_d", ["4d"]), ("rgb", ["rgb"]), ("garbage", ["cannot read"])])
def test_bad_volumes(kind, words, tmp_path, ckpt):
    rng = np.random.default_rng(0)
    body = rng.normal(-300, 300, (64, 64, 16)).astype(np.int16)
    path = tmp_path / f"{kind}.nii.gz"
    if kind == "nan":
        arr = body.astype(np.float32)
        arr[3, 3, 3] = np.nan
        _nifti(path, arr)
    elif kind == "constant":
        _nifti(path, np.full((64, 64, 16), 40, np.int16))
    elif kind == "all_air":
        _nifti(path, rng.normal(-1000, 10, (64, 64, 16)).astype(np.int16))
    elif kind == "tiny":
        _nifti(path, body[:10, :10, :2])
    elif kind == "four_d":
        _nifti(path, np.stack([body, body], axis=-1))
    elif kind == "rgb":
        rgb = np.zeros((64, 64, 16), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(path))
    elif kind == "garbage":
        path.write_bytes(b"\x1f\x8b not really a gzip file")
    assert_one_line_error(detect(path, tmp_path / "out", ckpt), tmp_path / "out", path.name, *words)


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
    img = _nifti(tmp_path / "ok.nii.gz", np.random.default_rng(0).normal(-300, 300, (64, 64, 16)).astype(np.int16))
    proc = detect(img, out, ckpt)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "not writable" in proc.stderr and str(out) in proc.stderr


def test_missing_checkpoint(tmp_path):
    img = _nifti(tmp_path / "ok.nii.gz", np.random.default_rng(0).normal(-300, 300, (64, 64, 16)).astype(np.int16))
    proc = detect(img, tmp_path / "out", tmp_path / "no_model.pt")
    assert_one_line_error(proc, tmp_path / "out", "no_model.pt", "checkpoint not found")


@pytest.mark.parametrize("kind", ["missing_input", "four_d", "missing_checkpoint"])
def test_bundle_inference_config_reports_the_problem(kind, tmp_path, ckpt):
    """`monai.bundle run inference` fails (non-zero) with our one-line reason in its output, writing nothing."""
    inp = tmp_path / "nope.nii.gz"
    use_ckpt = ckpt
    if kind == "four_d":
        inp = _nifti(tmp_path / "four_d.nii.gz", np.zeros((64, 64, 16, 2), np.int16))
    elif kind == "missing_checkpoint":
        inp = _nifti(tmp_path / "ok.nii.gz", np.random.default_rng(0).normal(-300, 300, (64, 64, 16)).astype(np.int16))
        use_ckpt = tmp_path / "no_model.pt"
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
                           "configs/inference.json", "--input", str(inp), "--output_dir", str(out), "--ckpt_path",
                           str(use_ckpt), "--network_def#backbone", "resnet18"], cwd=SEG_BUNDLE, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0
    expected = {"missing_input": "nope.nii.gz: no such file or folder", "four_d": "a 4D image",
                "missing_checkpoint": "no_model.pt: checkpoint not found"}[kind]
    assert expected in proc.stdout + proc.stderr
    assert not [p for p in out.rglob("*") if p.is_file()] if out.exists() else True
