"""Training throughput of both bundles: steps per second and the share of each step spent waiting for data,
with and without caching, on the same synthetic cohort.

    python tests/benchmarks/bench_training.py [--cases 16] [--epochs 4] [--out /tmp/bench_train]

Every row is ``python -m monai.bundle run training`` as a user runs it, with one overlay config that swaps
the training dataset / loader (the rest of train.json unchanged); the numbers come from the bundle's own
``eval/train_timing.json`` (lungnod_ext.handlers.timing.DataWaitTimer: per epoch, seconds between ignite's
GET_BATCH_STARTED and GET_BATCH_COMPLETED over the epoch's wall time). Epoch 1 is reported apart (a
PersistentDataset fills its disk cache then; every loader warms up); "steady" is epochs 2..N.

Variants (num_workers 0 everywhere: the 2 cores of the reference machine are the network's):
  dataset_dataloader          Dataset + DataLoader: every step loads the NIfTI / .npy and reruns every transform
  persistent_dataloader       PersistentDataset (deterministic part cached on disk) + DataLoader
  cache_dataloader            CacheDataset (deterministic part cached in memory) + DataLoader (the old default)
  cache_threaddataloader      CacheDataset + ThreadDataLoader with a 1-batch buffer (the default with CUDA:
                              the random transforms of the next batch run in a background thread while the
                              network trains; without CUDA train.json sets loader_buffer_size 0, which is
                              cache_dataloader's behaviour)

CPU budget settings, stated in the results: segmentation ResNet-18 encoder, 128 px slices at 1.5 mm
(batch 16 = 2 volumes x 8 slices); classification the default 2D NoduleCNN, 64 px patches, batch 32.
Writes tests/benchmarks/results/training.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_segmentation import demo_cohort, run  # noqa: E402  (a script beside this one)

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results" / "training.json"
BUNDLES = {"segmentation": REPO / "bundles" / "lung_nodule_ct_segmentation",
           "classification": REPO / "bundles" / "lung_nodule_ct_classification"}
TRAIN_DATA = "$monai.data.load_decathlon_datalist(@datalist, True, 'training', @dataset_dir)"
BUNDLE_ARGS = {"segmentation": ["--network_def#backbone", "resnet18", "--patch_size", "[128,128]",
                                "--spacing", "[1.5,1.5,-1]", "--infer_roi_size", "[256,256]"],
               "classification": []}


def variants(cache_dir: Path) -> dict[str, tuple[dict | None, str]]:
    """variant name -> (the ``train#dataset`` that replaces train.json's CacheDataset, or None; the loader)."""
    return {
        "dataset_dataloader": ({"_target_": "Dataset", "data": TRAIN_DATA, "transform": "@train#preprocessing"},
                               "DataLoader"),
        "persistent_dataloader": ({"_target_": "PersistentDataset", "data": TRAIN_DATA,
                                   "transform": "@train#preprocessing", "cache_dir": str(cache_dir)}, "DataLoader"),
        "cache_dataloader": (None, "DataLoader"),
        "cache_threaddataloader": (None, "ThreadDataLoader"),
    }


def overlay_file(path: Path, dataset: dict | None, loader: str, base: dict) -> Path:
    """The overlay config: ``train#dataset`` replaced (when given) and ``train#dataloader`` = train.json's
    with ``loader`` as its class (a plain DataLoader without ThreadDataLoader's ``buffer_size``)."""
    # MONAI's own loaders: without lungnod's track_meta switch, so their batches are MetaTensors as when measured
    section = {k: v for k, v in base["train"]["dataloader"].items() if k not in ("_desc_", "track_meta")}
    section["_target_"] = loader
    if loader == "DataLoader":
        section.pop("buffer_size", None)
    else:  # one batch made ahead in the thread (train.json's default without CUDA is 0: no thread)
        section["buffer_size"] = 1
    overlay = {"train#dataloader": section, **({"train#dataset": dataset} if dataset else {})}
    path.write_text(json.dumps(overlay, indent=1))
    return path


def summarise(timing: list[dict]) -> dict:
    first, rest = timing[0], timing[1:] or timing
    data, step, iters = (sum(t[k] for t in rest) for k in ("data_s", "step_s", "iterations"))
    return {"epoch1_data_share": first["data_share"], "epoch1_steps_per_s": first["steps_per_s"],
            "steady_data_share": round(data / step, 4), "steady_steps_per_s": round(iters / step, 3),
            "iterations_per_epoch": first["iterations"], "epochs": len(timing)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--out", default="/tmp/bench_train")
    ap.add_argument("--bundles", default="segmentation,classification")
    ap.add_argument("--variants", default="dataset_dataloader,persistent_dataloader,cache_dataloader,"
                                          "cache_threaddataloader")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    converted = demo_cohort(out / "data", a.cases)
    patches = out / "patches"
    if not (patches / "datalist.json").is_file():
        from lungnod_ext.apps.patch_dataset import build_patch_dataset

        build_patch_dataset(converted, patches)
    dataset_dirs = {"segmentation": converted, "classification": patches}

    results: dict = {"settings": {"cases": a.cases, "epochs": a.epochs, "num_workers": 0,
                                  "cpu_count": os.cpu_count(), "omp_threads": os.environ.get("OMP_NUM_THREADS")},
                     "rows": {}}
    for name in a.bundles.split(","):
        root = BUNDLES[name]
        base = json.loads((root / "configs" / "train.json").read_text())
        for variant in a.variants.split(","):
            work = out / f"{name}_{variant}"
            cache_dir = work / "persistent_cache"
            overlay = overlay_file(out / f"{name}_{variant}.json", *variants(cache_dir)[variant], base)
            wall, rss, _ = run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                                f"['configs/train.json','{overlay}']", "--dataset_dir", str(dataset_dirs[name]),
                                "--output_dir", str(work / "eval"), "--ckpt_dir", str(work / "models"),
                                "--epochs", str(a.epochs), "--val_interval", str(a.epochs + 1), "--num_workers", "0",
                                *BUNDLE_ARGS[name]], cwd=root)
            timing = json.loads((work / "eval" / "train_timing.json").read_text())
            row = {"wall_s": round(wall, 1), "peak_rss_mb": round(rss), **summarise(timing)}
            results["rows"][f"{name}/{variant}"] = row
            print(f"{name}/{variant}", json.dumps(row), flush=True)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{'bundle/variant':<44}{'epoch1 wait %':>14}{'epoch1 it/s':>12}{'steady wait %':>14}"
          f"{'steady it/s':>12}{'RSS MB':>8}")
    for key, r in results["rows"].items():
        print(f"{key:<44}{100 * r['epoch1_data_share']:>14.1f}{r['epoch1_steps_per_s']:>12.2f}"
              f"{100 * r['steady_data_share']:>14.1f}{r['steady_steps_per_s']:>12.2f}{r['peak_rss_mb']:>8}")
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
