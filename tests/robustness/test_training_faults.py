"""Training faults and determinism, through `monai.bundle run` on the (fast) classification bundle:
a run killed with SIGKILL mid-epoch resumes from its last checkpoint and finishes; the same seed gives
the same losses and metrics twice in a row on CPU."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "lung_nodule_ct_classification"


@pytest.fixture(scope="module")
def patches(tmp_path_factory) -> Path:
    from lungnod_ext.apps.patch_dataset import build_patch_dataset

    out = tmp_path_factory.mktemp("faults")
    subprocess.run([sys.executable, "-m", "data_prep", "-q", "demo", "--out", str(out), "--cases", "6"],
                   check=True, timeout=300)
    build_patch_dataset(out / "converted", out / "patches", positive_copies=4, random_negatives_per_case=8)
    return out / "patches"


def _cmd(patches: Path, work: Path, epochs: int, *extra) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.json",
            "--dataset_dir", str(patches), "--output_dir", str(work / "eval"), "--ckpt_dir", str(work / "models"),
            "--epochs", str(epochs), "--val_interval", "1", "--num_workers", "0", "--batch_size", "8", *extra]


def test_killed_training_resumes_from_its_last_checkpoint(patches, tmp_path):
    resume = tmp_path / "models" / "resume.pt"
    proc = subprocess.Popen(_cmd(patches, tmp_path, 6), cwd=BUNDLE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    epoch = 0
    while time.time() < deadline and proc.poll() is None:
        if resume.is_file():
            try:
                epoch = torch.load(resume, map_location="cpu", weights_only=True)["epoch"]
            except Exception:
                epoch = 0
            if epoch >= 2:
                time.sleep(0.5)  # into the next epoch
                break
        time.sleep(0.1)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(resume, map_location="cpu", weights_only=True)
    assert 2 <= saved["epoch"] < 6 and set(saved) == {"model", "optimizer", "epoch", "iteration"}
    done = subprocess.run(_cmd(patches, tmp_path, 6, "--resume_from", str(resume)), cwd=BUNDLE,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    epochs = [r["epoch"] for r in json.loads((tmp_path / "eval" / "train_history.json").read_text())]
    assert epochs == list(range(1, 7)), epochs
    assert torch.load(resume, map_location="cpu", weights_only=True)["epoch"] == 6
    assert (tmp_path / "models" / "model.pt").is_file()
    assert not list((tmp_path / "models").glob(".*part*"))


def test_missing_resume_checkpoint_is_one_clear_error(patches, tmp_path):
    proc = subprocess.run(_cmd(patches, tmp_path, 2, "--resume_from", str(tmp_path / "nope.pt")), cwd=BUNDLE,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "nope.pt: resume checkpoint not found" in proc.stdout + proc.stderr


def test_same_seed_same_numbers_twice(patches, tmp_path):
    runs = []
    for n in (1, 2):
        work = tmp_path / f"run{n}"
        proc = subprocess.run(_cmd(patches, work, 3), cwd=BUNDLE, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append((json.loads((work / "eval" / "train_history.json").read_text()),
                     json.loads((work / "eval" / "val_history.json").read_text())))
    assert runs[0] == runs[1]
    assert len(runs[0][0]) == 3 and all("val_auc" in r for r in runs[0][1])
