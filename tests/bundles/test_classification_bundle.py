"""The classification bundle through `python -m monai.bundle run`: tiny training on synthetic patches
(loss falls, AUC above an untrained model's), evaluation, inference on a CT + candidate list, on an
empty list and on a single patch (as MONAI Label calls it), and the 3D overlay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "lung_nodule_ct_classification"


def run_bundle(args: list[str], cwd: Path = BUNDLE) -> subprocess.CompletedProcess:
    # one thread, as `make test` runs it: the tiny training's AUC depends on the thread count (0.70 with 2)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    from lungnod_ext.apps.patch_dataset import build_patch_dataset

    out = tmp_path_factory.mktemp("cls_demo")
    subprocess.run([sys.executable, "-m", "data_prep", "-q", "demo", "--out", str(out)], check=True, timeout=300)
    converted = out / "converted"
    datalist = build_patch_dataset(converted, out / "patches", positive_copies=6, random_negatives_per_case=12)
    return {"converted": converted, "patches": out / "patches", "datalist": json.loads(datalist.read_text())}


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("cls_train")
    run_bundle(["training", "--config_file", "configs/train.json", "--dataset_dir", str(data["patches"]),
                "--output_dir", str(work / "eval"), "--ckpt_dir", str(work / "models"), "--epochs", "12",
                "--val_interval", "3", "--num_workers", "0", "--batch_size", "16"])
    return {"work": work, "ckpt": work / "models" / "model.pt"}


def test_patch_dataset_is_balanced_enough_and_split_by_patient(data):
    d = data["datalist"]
    train_cases = {e["case"] for e in d["training"]}
    assert train_cases and not train_cases & {e["case"] for e in d["validation"]}
    labels = [e["label"][0] for e in d["training"]]
    assert 0 < sum(labels) < len(labels)


def test_training_loss_falls_and_checkpoint_layout(trained):
    hist = json.loads((trained["work"] / "eval" / "train_history.json").read_text())
    losses = [r["loss"] for r in hist]
    assert len(losses) == 12 and np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    assert set(ckpt) == {"model"} and any(k.startswith("features") for k in ckpt["model"])


def test_evaluate_trained_auc_beats_untrained(trained, data, tmp_path):
    from lungnod_ext.networks.network_setup import bundle_network

    torch.manual_seed(0)
    untrained = tmp_path / "untrained.pt"
    torch.save({"model": bundle_network(BUNDLE).state_dict()}, untrained)
    res = {}
    for name, ckpt in (("trained", trained["ckpt"]), ("untrained", untrained)):
        run_bundle(["--config_file", "['configs/train.json','configs/evaluate.json']", "--dataset_dir",
                    str(data["patches"]), "--output_dir", str(tmp_path / name), "--ckpt_path", str(ckpt),
                    "--num_workers", "0"])
        res[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    good, bad = res["trained"]["overall"], res["untrained"]["overall"]
    assert res["trained"]["n_patches"] == len(data["datalist"]["validation"]) > 0
    # 12 epochs on a few hundred synthetic patches: AUC 0.748 with the wheels pip resolved on 2026-12-03 (above
    # 0.75 with earlier ones), the untrained network 0.545: a clear gain, not a fixed score, is what is asserted
    assert good["roc_auc"] > bad["roc_auc"] + 0.15 and good["roc_auc"] > 0.70, (good, bad)
    assert {"sensitivity", "specificity", "precision", "f1"} <= set(good)
    assert (tmp_path / "trained" / "patch_predictions.csv").read_text().startswith("image,case,kind,label,probability")


def _candidates_json(path: Path, centres) -> Path:
    path.write_text(json.dumps({"case": "x", "coordinate_system": "LPS",
                                "candidates": [{"id": i + 1, "centre_lps": list(c), "max_prob": 0.9}
                                               for i, c in enumerate(centres)]}))
    return path


def test_inference_on_ct_and_candidates(trained, data, tmp_path):
    import csv

    with open(data["converted"] / "nodules.csv") as f:
        row = next(csv.DictReader(f))
    image = data["converted"] / "images" / f"{row['case_id']}.nii.gz"
    nodule = [float(row[f"centre_{a}_lps_mm"]) for a in "xyz"]
    cands = _candidates_json(tmp_path / "c.json", [nodule, [nodule[0] + 60, nodule[1], nodule[2]]])
    doc_in = json.loads(cands.read_text())
    doc_in["candidates"][1]["detector"] = "blob"      # a dot-filter candidate: the config's prior applies
    cands.write_text(json.dumps(doc_in))
    run_bundle(["inference", "--config_file", "configs/inference.json", "--input", str(image), "--candidates",
                str(cands), "--output_dir", str(tmp_path / "out"), "--ckpt_path", str(trained["ckpt"])])
    doc = json.loads((tmp_path / "out" / f"{row['case_id']}_classified.json").read_text())
    probs = [c["probability"] for c in doc["candidates"]]
    assert [c["id"] for c in doc["candidates"]] == [1, 2] and all(0.0 <= p <= 1.0 for p in probs)
    from lungnod_ext.inference.classify import posterior_probability

    prior = json.loads((BUNDLE / "configs" / "inference.json").read_text())["detector_priors"]["blob"]
    assert "classifier_probability" not in doc["candidates"][0]
    blob = doc["candidates"][1]
    assert blob["probability"] == pytest.approx(posterior_probability(blob["classifier_probability"], prior))
    assert (tmp_path / "out" / f"{row['case_id']}_classified.csv").read_text().count("\n") == 3

    empty = _candidates_json(tmp_path / "e.json", [])
    run_bundle(["inference", "--config_file", "configs/inference.json", "--input", str(image), "--candidates",
                str(empty), "--output_dir", str(tmp_path / "out_empty"), "--ckpt_path", str(trained["ckpt"])])
    assert json.loads((tmp_path / "out_empty" / f"{row['case_id']}_classified.json").read_text())["candidates"] == []


def test_inference_on_a_single_patch(trained, data, tmp_path):
    entry = next(e for e in data["datalist"]["validation"] if e["label"] == [1])
    patch = data["patches"] / entry["image"]
    run_bundle(["inference", "--config_file", "configs/inference.json", "--input", str(patch),
                "--output_dir", str(tmp_path), "--ckpt_path", str(trained["ckpt"])])
    doc = json.loads((tmp_path / f"{patch.stem}_classified.json").read_text())
    assert len(doc["candidates"]) == 1 and 0.0 <= doc["candidates"][0]["probability"] <= 1.0


def test_3d_overlay_trains_and_infers(data, tmp_path):
    from lungnod_ext.apps.patch_dataset import build_patch_dataset

    build_patch_dataset(data["converted"], tmp_path / "p3d", spatial_dims=3, positive_copies=2,
                        random_negatives_per_case=4)
    run_bundle(["training", "--config_file", "['configs/train.json','configs/train_3d.json']", "--dataset_dir",
                str(tmp_path / "p3d"), "--output_dir", str(tmp_path / "eval"), "--ckpt_dir", str(tmp_path / "models"),
                "--epochs", "2", "--val_interval", "1", "--num_workers", "0"])
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)["model"]
    assert any(v.ndim == 5 for v in state.values())
    patch = next((tmp_path / "p3d" / "patches").glob("*.npy"))
    run_bundle(["inference", "--config_file", "['configs/inference.json','configs/inference_3d.json']", "--input",
                str(patch), "--output_dir", str(tmp_path / "inf"), "--ckpt_path", str(tmp_path / "models" / "model.pt")])
    doc = json.loads((tmp_path / "inf" / f"{patch.stem}_classified.json").read_text())
    assert len(doc["candidates"]) == 1


def test_finer_second_sampling_trains_and_infers(data, tmp_path):
    """fine_spacing_mm 0.5 (measured, not the default): patches and network get the 5 planes twice (10
    channels) in training and in inference on a CT + candidates; training on them without it is one clear error."""
    import csv

    from lungnod_ext.apps.patch_dataset import build_patch_dataset

    build_patch_dataset(data["converted"], tmp_path / "pf", positive_copies=2, random_negatives_per_case=4,
                        fine_spacing_mm=0.5)
    run_bundle(["training", "--config_file", "configs/train.json", "--dataset_dir", str(tmp_path / "pf"),
                "--output_dir", str(tmp_path / "eval"), "--ckpt_dir", str(tmp_path / "models"), "--epochs", "1",
                "--val_interval", "1", "--num_workers", "0", "--fine_spacing_mm", "0.5"])
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)["model"]
    first_conv = next(v for v in state.values() if v.ndim == 4)
    assert first_conv.shape[1] == 10
    # the same patches with the default config (5 channels): one line naming the datalist, nothing written
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    wrong = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                            "configs/train.json", "--dataset_dir", str(tmp_path / "pf"), "--output_dir",
                            str(tmp_path / "eval5"), "--ckpt_dir", str(tmp_path / "models5"), "--epochs", "1"],
                           cwd=BUNDLE, env=env, capture_output=True, text=True, timeout=300)
    assert wrong.returncode != 0
    assert f"{tmp_path / 'pf' / 'datalist.json'}: patches cut with fine_spacing_mm 0.5 (the config has None)" in \
        wrong.stdout + wrong.stderr
    assert not (tmp_path / "models5").exists() and not (tmp_path / "eval5").exists()
    with open(data["converted"] / "nodules.csv") as f:
        row = next(csv.DictReader(f))
    image = data["converted"] / "images" / f"{row['case_id']}.nii.gz"
    nodule = [float(row[f"centre_{a}_lps_mm"]) for a in "xyz"]
    cands = _candidates_json(tmp_path / "c.json", [nodule])
    run_bundle(["inference", "--config_file", "configs/inference.json", "--input", str(image), "--candidates",
                str(cands), "--output_dir", str(tmp_path / "out"), "--ckpt_path", str(tmp_path / "models" / "model.pt"),
                "--fine_spacing_mm", "0.5"])
    doc = json.loads((tmp_path / "out" / f"{row['case_id']}_classified.json").read_text())
    assert len(doc["candidates"]) == 1 and 0.0 <= doc["candidates"][0]["probability"] <= 1.0


@pytest.mark.parametrize("batch_augmentation", [True, False])
def test_train_config_augments_batches_or_samples(batch_augmentation):
    """``batch_augmentation`` true puts the augmentation in the trainer's prepare_batch and none in the loader; false
    (the default since 0.13.0, how the shipped weights were trained) gives the loader MONAI's six per-sample
    transforms and the trainer none."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    assert parser["batch_augmentation"] is False
    parser["batch_augmentation"] = batch_augmentation
    names = [type(t).__name__ for t in parser.get_parsed_content("train#random_transforms")]
    augmentation = parser.get_parsed_content("train#augmentation")
    assert augmentation.enabled is batch_augmentation
    assert parser["train#trainer#prepare_batch"].replace("::", "#") == "@train#augmentation"
    assert names == ([] if batch_augmentation else ["RandFlipd", "RandFlipd", "RandRotated", "RandScaleIntensityd",
                                                    "RandAdjustContrastd", "RandGaussianNoised"])
    assert (augmentation.flip_prob, augmentation.rotate_prob, augmentation.rotate_range, augmentation.noise_prob) == (
        parser["flip_prob"], parser["rotate_prob"], parser["rotate_range"], parser["noise_prob"])
    # both ways read the same scale, contrast and noise ranges from the config's top level
    assert (augmentation.scale_factor, augmentation.gamma, augmentation.noise_std) == (0.1, (0.8, 1.25), 0.02)
    parser["batch_augmentation"] = False
    scale, contrast, noise = parser.get_parsed_content("train#random_transforms")[3:]
    assert tuple(scale.scaler.factors) == (-0.1, 0.1) and tuple(contrast.adjuster.gamma) == (0.8, 1.25)
    assert noise.rand_gaussian_noise.std == 0.02
