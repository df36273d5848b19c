"""The training loaders with MONAI's metadata tracking on and off (``loader_track_meta``): same weights? how fast?

    python tests/benchmarks/bench_loader_meta.py --work W --out D [--member]

``W`` is a ``lungnod train-models`` work folder that has reached its classifiers (``W/cohort``, ``W/patches``,
``W/recipe.json``; its first member ``W/models/classification`` for ``--member``). Every run is ``python -m monai.bundle
run training`` as the recipe starts it (its epochs shortened; ``num_workers`` the recipe's, 0 on a CPU machine),
kept under ``D`` and made only when its folder holds no finished run, so a second call summarises again:

  classification_meta / _plain   2 epochs on W/patches (seed 1), loader_track_meta True / False
  classification_batched         the same 2 epochs with batch_augmentation True (the batched augmentation)
  segmentation_meta / _plain     3 epochs on W/cohort, loader_track_meta True / False
  member (--member)              the recipe's first classifier again (seed 123, the recipe's epochs) with today's
                                 default, compared with W's own (trained before classification 0.13.1, MetaTensors)

Each pair is compared exactly (every epoch's loss, every validation figure, every weight) and timed by the bundle's
own ``train_timing.json`` (lungnod_ext.handlers.timing.DataWaitTimer: seconds per epoch, and waiting for data).
Prints the figures and writes them to tests/benchmarks/results/loader_plain_tensors.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results" / "loader_plain_tensors.json"
BUNDLES = {"classification": REPO / "bundles" / "lung_nodule_ct_classification",
           "segmentation": REPO / "bundles" / "lung_nodule_ct_segmentation"}


def run_settings(work: Path, recipe: dict, member: bool) -> dict[str, tuple[str, dict]]:
    """run name -> (bundle, the ``monai.bundle run`` settings beyond output_dir / ckpt_dir); ``recipe`` is
    ``W/recipe.json``'s settings."""
    workers = recipe.get("loader_workers") or 0
    cls = {"dataset_dir": str(work / "patches"), "val_interval": 2, "epochs": 2, "seed": 1,
           "learning_rate": recipe["cls_learning_rate"], "num_workers": workers, "batch_augmentation": False}
    seg = {"dataset_dir": str(work / "cohort"), "epochs": 3, "val_interval": 3, "num_workers": workers,
           "patch_size": list(recipe["seg_patch_size"]), "learning_rate": recipe["seg_learning_rate"]}
    out = {"classification_meta": ("classification", {**cls, "loader_track_meta": True}),
           "classification_plain": ("classification", {**cls, "loader_track_meta": False}),
           "classification_batched": ("classification", {**cls, "batch_augmentation": True}),
           "segmentation_meta": ("segmentation", {**seg, "loader_track_meta": True}),
           "segmentation_plain": ("segmentation", {**seg, "loader_track_meta": False})}
    if member:
        out["member"] = ("classification", {**cls, "epochs": recipe["cls_epochs"],
                                            "val_interval": recipe["cls_val_interval"],
                                            "seed": recipe["cls_seeds"][0]})
    return out


def make(name: str, bundle: str, settings: dict, out: Path) -> dict:
    """Run it unless ``out/name`` holds a finished one (its ``wall_s.txt``, written last); returns the command
    and its wall seconds."""
    run_dir = out / name
    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.json",
            "--output_dir", str(run_dir), "--ckpt_dir", str(run_dir / "models")]
    for key, value in settings.items():
        args += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    command = " ".join(args[1:])
    wall = run_dir / "wall_s.txt"
    if not (wall.is_file() and (run_dir / "models" / "model.pt").is_file()):
        run_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(run_dir / "log.txt", "w") as log:
            subprocess.run(args, cwd=BUNDLES[bundle], stdout=log, stderr=subprocess.STDOUT, check=True)
        wall.write_text(f"{time.perf_counter() - start:.1f}\n")
    return {"command": command, "wall_s": float(wall.read_text())}


def summary(run_dir: Path, models_dir: Path | None = None) -> dict:
    """Epoch seconds and data-wait seconds (min-max, total), losses, validation history, weights of one run."""
    timing = json.loads((run_dir / "train_timing.json").read_text())
    steps, data = [t["step_s"] for t in timing], [t["data_s"] for t in timing]
    weights = torch.load((models_dir or run_dir / "models") / "model.pt", map_location="cpu", weights_only=True)
    return {"epochs": len(timing), "epoch_s": [round(min(steps), 1), round(max(steps), 1)],
            "epochs_total_s": round(sum(steps)), "data_s": [round(min(data), 1), round(max(data), 1)],
            "data_total_s": round(sum(data)),
            "loss": [h["loss"] for h in json.loads((run_dir / "train_history.json").read_text())],
            "validation": json.loads((run_dir / "val_history.json").read_text()),
            "_weights": weights.get("model", weights)}


def figures(run: dict) -> dict:
    """A summary without its weights (what the results file keeps)."""
    return {k: v for k, v in run.items() if not k.startswith("_")}


def identical(a: dict, b: dict) -> bool:
    """Every loss, every validation figure and every weight equal, exactly."""
    wa, wb = a["_weights"], b["_weights"]
    return (a["loss"] == b["loss"] and a["validation"] == b["validation"] and wa.keys() == wb.keys()
            and all(torch.equal(wa[k], wb[k]) for k in wa))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a lungnod train-models folder past its patches")
    parser.add_argument("--out", type=Path, required=True, help="where the runs are kept (reused when finished)")
    parser.add_argument("--member", action="store_true", help="also the recipe's first classifier, whole")
    args = parser.parse_args(argv)
    recipe = json.loads((args.work / "recipe.json").read_text())
    made = {name: make(name, bundle, settings, args.out)
            for name, (bundle, settings) in run_settings(args.work, recipe["settings"], args.member).items()}
    summaries = {name: summary(args.out / name) for name in made}
    pairs = {"classification": ("classification_meta", "classification_plain"),
             "segmentation": ("segmentation_meta", "segmentation_plain")}
    result = {"work": str(args.work), "torch_threads": torch.get_num_threads(), "runs": {}}
    for name, run in summaries.items():
        result["runs"][name] = {**figures(run), **made[name]}
    for bundle, (meta, plain) in pairs.items():
        before, after = summaries[meta], summaries[plain]
        same = result[f"{bundle}_identical"] = identical(before, after)
        print(f"{bundle}: loader_track_meta True -> False, identical losses / validation / weights: {same}; epoch "
              f"{before['epoch_s']} -> {after['epoch_s']} s, waiting for data {before['data_s']} -> "
              f"{after['data_s']} s")
    print(f"classification, batched augmentation: epoch {summaries['classification_batched']['epoch_s']} s")
    if "member" in summaries:
        theirs = summary(args.work / "runs" / "classification", args.work / "models" / "classification")
        result["member_before"] = {**figures(theirs), "wall_s": recipe["seconds"]["classification"]}
        result["member_identical"] = identical(theirs, summaries["member"])
        print(f"the recipe's first classifier again: identical to {args.work}'s: {result['member_identical']}; "
              f"epochs {theirs['epochs_total_s']} -> {summaries['member']['epochs_total_s']} s, waiting for data "
              f"{theirs['data_total_s']} -> {summaries['member']['data_total_s']} s; the stage "
              f"{result['member_before']['wall_s']} s -> {made['member']['wall_s']} s wall")
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {RESULTS}")
    return result


if __name__ == "__main__":
    main()
