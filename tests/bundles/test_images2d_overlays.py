"""Both bundles' 2D overlays end to end on a 2D image + mask set exported from real LIDC-IDRI-0001
(data-prep export2d -> images2d): the reference 2D U-Net trains and writes masks + overlays at the inputs'
size; the classifier trains on 64 x 64 patches cut from the same set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from data_prep.images2d import export_images2d, import_images2d
from lungnod_ext.apps.patch_dataset import build_patch_dataset_2d

REPO = Path(__file__).resolve().parents[2]
SEG = REPO / "bundles" / "lung_nodule_ct_segmentation"
CLS = REPO / "bundles" / "lung_nodule_ct_classification"
FAST = ["--image_size", "[96,96]", "--network_def#backbone", "resnet18"]     # the reference size is 224, ResNet-50


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def images2d(lidc_converted, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images2d")
    seed_form = export_images2d(lidc_converted, root / "seed_form", negatives_per_case=4)
    report = import_images2d(seed_form / "images", seed_form / "masks", root / "dataset")
    assert len(report.pairs) == 12 and not report.problems
    return root / "dataset"


def test_segmentation_overlays_train_and_write_masks(images2d, tmp_path):
    _run(SEG, "training", "--config_file", "['configs/train.json','configs/train_images2d.json']",
         "--dataset_dir", str(images2d), "--output_dir", str(tmp_path / "eval"), "--ckpt_dir", str(tmp_path / "models"),
         "--epochs", "2", "--val_interval", "1", "--batch_size", "8", "--num_workers", "0", *FAST)
    history = json.loads((tmp_path / "eval" / "train_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and all(h["iterations"] == 2 for h in history)   # 12 images, 8 a batch
    assert [v["run"] for v in json.loads((tmp_path / "eval" / "val_history.json").read_text())] == [1, 2]
    assert (tmp_path / "models" / "model.pt").is_file()
    out = tmp_path / "pred"
    out.mkdir()
    (out / "predictions.json").write_text('{"stale": "line of an earlier run"}\n')
    _run(SEG, "inference", "--config_file", "['configs/inference.json','configs/inference_images2d.json']",
         "--input", str(images2d / "images"), "--output_dir", str(out), "--ckpt_path", str(tmp_path / "models" / "model.pt"),
         *FAST)
    rows = [json.loads(line) for line in (out / "predictions.json").read_text().splitlines()]
    assert len(rows) == 12 and "stale" not in rows[0]
    for row in rows:
        mask = cv2.imread(str(out / row["mask"]), cv2.IMREAD_UNCHANGED)
        overlay = cv2.imread(str(out / row["overlay"]))
        assert mask.shape == (512, 512) and set(mask.ravel().tolist()) <= {0, 255}
        assert overlay.shape == (512, 512, 3)
        assert (mask > 0).sum() == row["nodule_pixels"] and 0.0 <= row["max_prob"] <= 1.0


def test_classification_overlay_trains_on_2d_patches(images2d, tmp_path):
    datalist = json.loads(build_patch_dataset_2d(images2d, tmp_path / "patches", positive_copies=3).read_text())
    labels = [e["label"][0] for e in datalist["training"]]
    assert sum(labels) == 3 * 8 and labels.count(0) == 4 * 12              # 8 nodule slices, 4 negatives each
    _run(CLS, "training", "--config_file", "['configs/train.json','configs/train_images2d.json']",
         "--dataset_dir", str(tmp_path / "patches"), "--output_dir", str(tmp_path / "eval"),
         "--ckpt_dir", str(tmp_path / "models"), "--epochs", "2", "--val_interval", "1", "--num_workers", "0")
    val = json.loads((tmp_path / "eval" / "val_history.json").read_text())
    assert [v["run"] for v in val] == [1, 2] and all(0.0 <= v["val_auc"] <= 1.0 for v in val)
    assert (tmp_path / "models" / "model.pt").is_file()
