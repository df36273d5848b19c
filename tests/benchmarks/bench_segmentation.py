"""Segmentation bundle, measured: loss choice (BCE vs Dice+BCE), 2D vs 3D, training on the synthetic cohort
alone or with nodules inserted into the real series, on held-out synthetic cases and on the real
LIDC-IDRI-0001 nodule; training data-wait share; inference seconds and peak memory on LIDC-IDRI-0001.

    python tests/benchmarks/bench_segmentation.py [--cases 16] [--epochs 60] [--out /tmp/bench_seg]

Every number comes from `python -m monai.bundle run ...` as a user runs it (train.json [+ overlays],
evaluate.json, inference.json). CPU budget settings (stated in the table): a ResNet-18 encoder instead
of the reference ResNet-50, 2D patches 128 px at 1.5 mm, 3D patches 64^3 at 2 mm. Writes
tests/benchmarks/results/segmentation.json.

``2d_dice_bce_inserted`` trains on the synthetic training cases plus real anatomy: LIDC-IDRI-0001 with its
real nodule's slab (the nodule's slices +- 15 mm) cut out, the parts above and below it each given
simulated nodules (data_prep.insert) with two seeds. The real nodule is never seen in training, so the
LIDC-IDRI-0001 column still measures it as unseen (the patient's other anatomy was seen: say so).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "lung_nodule_ct_segmentation"
LIDC = (REPO / ".." / "shared" / "data" / "lidc").resolve()
RESULTS = Path(__file__).resolve().parent / "results" / "segmentation.json"

VARIANTS = {
    "2d_dice_bce": {"configs": ["configs/train.json"], "infer": ["configs/inference.json"],
                    "args": ["--network_def#backbone", "resnet18", "--patch_size", "[128,128]", "--spacing", "[1.5,1.5,-1]",
                             "--infer_roi_size", "[256,256]"],
                    "infer_args": ["--network_def#backbone", "resnet18", "--spacing", "[1.5,1.5,-1]"]},
    "2d_bce": {"configs": ["configs/train.json", "{bce}"], "infer": ["configs/inference.json"],
               "args": ["--network_def#backbone", "resnet18", "--patch_size", "[128,128]", "--spacing", "[1.5,1.5,-1]",
                        "--infer_roi_size", "[256,256]"],
               "infer_args": ["--network_def#backbone", "resnet18", "--spacing", "[1.5,1.5,-1]"]},
    "2d_dice_bce_inserted": {"configs": ["configs/train.json"], "infer": ["configs/inference.json"], "inserted": True,
                             "args": ["--network_def#backbone", "resnet18", "--patch_size", "[128,128]",
                                      "--spacing", "[1.5,1.5,-1]", "--infer_roi_size", "[256,256]"],
                             "infer_args": ["--network_def#backbone", "resnet18", "--spacing", "[1.5,1.5,-1]"]},
    "3d_dice_bce": {"configs": ["configs/train.json", "configs/train_3d.json"],
                    "infer": ["configs/inference.json", "configs/inference_3d.json"],
                    "args": ["--patch_size", "[64,64,64]", "--infer_roi_size", "[96,96,96]", "--spacing", "[2,2,2]",
                             "--samples_per_volume", "2", "--batch_size", "4"],
                    "infer_args": ["--spacing", "[2,2,2]"]},
}


def run(cmd: list[str], cwd: Path = BUNDLE) -> tuple[float, float, str]:
    """Run a command; (wall s, peak RSS MB of the process tree sampled every 0.2 s, output tail)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0.0
    p = psutil.Process(proc.pid)
    out_lines = []
    import threading

    def reader():
        for line in proc.stdout:
            out_lines.append(line)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    while proc.poll() is None:
        try:
            rss = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    th.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{''.join(out_lines[-40:])}")
    return wall, peak / 2**20, "".join(out_lines[-5:])


def build_inserted(lidc: Path, converted: Path, out: Path, seeds=(0, 1), nodules: int = 4,
                   margin_mm: float = 15.0) -> dict:
    """Training set = the synthetic training cases + LIDC-IDRI-0001 parts (real nodule's slab cut out) with
    inserted nodules; validation / testing = the synthetic ones. Writes ``out``/datalist.json (synthetic
    entries by absolute path) and returns a summary of what was inserted."""
    import numpy as np

    from data_prep.insert import insert_nodules
    from data_prep.nifti_io import read_nifti, write_nifti
    from data_prep.coords import Geometry

    case = next((lidc / "images").glob("*.nii.gz")).name
    hu, geo = read_nifti(lidc / "images" / case)
    real, _ = read_nifti(lidc / "labels" / case)
    ks = np.flatnonzero(real.any(axis=(1, 2)))
    margin = int(np.ceil(margin_mm / geo.spacing[2]))
    parts = [(0, max(int(ks[0]) - margin, 0)), (min(int(ks[-1]) + margin + 1, hu.shape[0]), hu.shape[0])]
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    dl = json.loads((converted / "datalist.json").read_text())
    absolute = {split: [{**e, "image": str(converted / e["image"]), "label": str(converted / e["label"])}
                        for e in dl.get(split, [])] for split in ("training", "validation", "testing")}
    summary = {"real_nodule_slices": [int(ks[0]), int(ks[-1])], "cut_slices": [int(ks[0]) - margin, int(ks[-1]) + margin],
               "volumes": []}
    for k0, k1 in parts:
        if k1 - k0 < 32:
            continue
        part_geo = Geometry(tuple(float(v) for v in geo.voxel_to_world([0, 0, k0])), geo.spacing, geo.direction,
                            (geo.shape[0], geo.shape[1], k1 - k0))
        for seed in seeds:
            new, instance, records = insert_nodules(hu[k0:k1], part_geo, nodules, np.random.default_rng(seed))
            name = f"LIDC-IDRI-0001-inserted-k{k0}-{k1}-s{seed}.nii.gz"
            write_nifti(out / "images" / name, new, part_geo)
            write_nifti(out / "labels" / name, (instance > 0).astype(np.uint8), part_geo)
            case_id = name[: -len(".nii.gz")]
            absolute["training"].append({"image": f"images/{name}", "label": f"labels/{name}", "fold": -1,
                                         "case_id": case_id, "patient_id": "LIDC-IDRI-0001"})
            summary["volumes"].append({"name": name, "slices": [k0, k1], "nodules": len(records),
                                       "diameters_mm": [round(r["mask_diameter_mm"], 1) for r in records]})
    (out / "datalist.json").write_text(json.dumps(absolute, indent=1))
    return summary


def demo_cohort(data: Path, cases: int) -> Path:
    """The README demo's data stage (synthetic cohort -> convert -> datalist) with ``cases`` cases, made once
    under ``data``; returns the converted folder."""
    if not (data / "converted" / "datalist.json").is_file():
        subprocess.run([sys.executable, "-m", "data_prep", "-q", "demo", "--out", str(data), "--cases", str(cases)],
                       check=True)
    return data / "converted"


def bundle(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", *args]


def config_list(files: list[str], bce: Path) -> str:
    return "[" + ",".join(f"'{bce if f == '{bce}' else f}'" for f in files) + "]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--out", default="/tmp/bench_seg")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    bce = out / "loss_bce.json"
    bce.write_text(json.dumps({"loss": {"_target_": "torch.nn.BCEWithLogitsLoss"}}))

    converted = demo_cohort(out / "data", a.cases)
    lidc = out / "lidc"
    if not (lidc / "datalist.json").is_file():
        subprocess.run([sys.executable, "-m", "data_prep", "-q", "convert", str(LIDC), "--out", str(lidc)], check=True)
        case = next((lidc / "images").glob("*.nii.gz")).name
        (lidc / "datalist.json").write_text(json.dumps({"training": [], "validation": [], "testing": [
            {"image": f"images/{case}", "label": f"labels/{case}"}]}))
    lidc_image = next((lidc / "images").glob("*.nii.gz"))
    inserted = out / "inserted"
    if any(VARIANTS[n].get("inserted") for n in a.variants.split(",")) and not (inserted / "datalist.json").is_file():
        print("inserted:", json.dumps(build_inserted(lidc, converted, inserted)), flush=True)

    results = {"settings": {"cases": a.cases, "epochs": a.epochs, "val_interval": 10,
                            "datalist": json.loads((converted / "datalist.json").read_text()).get("description", ""),
                            "cpu_threads": os.cpu_count()}, "variants": {}}
    if RESULTS.is_file():  # rows of variants not rerun now stay, when measured with the same settings
        earlier = json.loads(RESULTS.read_text())
        if {k: earlier["settings"].get(k) for k in ("cases", "epochs")} == {"cases": a.cases, "epochs": a.epochs}:
            results["variants"] = earlier["variants"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    for name in a.variants.split(","):
        v = VARIANTS[name]
        work = out / name
        cfg = config_list(v["configs"], bce)
        train_dir = inserted if v.get("inserted") else converted
        wall, rss, _ = run(bundle(["training", "--config_file", cfg, "--dataset_dir", str(train_dir),
                                   "--output_dir", str(work / "eval"), "--ckpt_dir", str(work / "models"),
                                   "--epochs", str(a.epochs), "--val_interval", str(min(10, a.epochs)), "--num_workers", "0",
                                   "--learning_rate", "0.001", *v["args"]]))
        hist = json.loads((work / "eval" / "train_history.json").read_text())
        timing = json.loads((work / "eval" / "train_timing.json").read_text())
        ckpt = str(work / "models" / "model.pt")
        ev_cfg = config_list(v["configs"] + ["configs/evaluate.json"], bce)
        row = {"train_s": round(wall, 1), "train_peak_rss_mb": round(rss), "loss_first": hist[0]["loss"],
               "loss_last": hist[-1]["loss"],
               "data_share": round(sum(t["data_s"] for t in timing) / sum(t["step_s"] for t in timing), 4),
               "steps_per_s": round(sum(t["iterations"] for t in timing) / sum(t["step_s"] for t in timing), 3)}
        for split, ds in (("synthetic_test", converted), ("lidc_0001", lidc)):
            run(bundle(["--config_file", ev_cfg, "--dataset_dir", str(ds), "--output_dir", str(work / f"eval_{split}"),
                        "--ckpt_path", ckpt, "--num_workers", "0", *v["args"]]))
            m = json.loads((work / f"eval_{split}" / "metrics.json").read_text())["overall"]
            row[split] = {k: m.get(k) for k in ("n_cases", "mean_dice", "mean_iou", "mean_precision", "mean_recall",
                                                "n_reference_nodules", "sensitivity", "fp_per_scan", "cpm")}
        infer_cfg = config_list(v["infer"], bce)
        wall, rss, _ = run(bundle(["inference", "--config_file", infer_cfg, "--input", str(lidc_image),
                                   "--output_dir", str(work / "infer_lidc"), "--ckpt_path", ckpt, *v["infer_args"]]))
        row["lidc_inference_s"] = round(wall, 1)
        row["lidc_inference_peak_rss_mb"] = round(rss)
        row["measured_at_commit"] = commit
        results["variants"][name] = row
        print(name, json.dumps(row), flush=True)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{'variant':<14}{'train s':>9}{'loss 1st->last':>18}{'data %':>8}{'syn Dice':>10}{'syn sens':>10}"
          f"{'syn FP/scan':>12}{'LIDC Dice':>11}{'LIDC sens':>10}{'LIDC FP':>9}{'infer s':>9}{'RSS MB':>8}")
    for name, r in results["variants"].items():
        s, l = r["synthetic_test"], r["lidc_0001"]
        print(f"{name:<14}{r['train_s']:>9.0f}{r['loss_first']:>9.3f}->{r['loss_last']:<7.3f}{100 * r['data_share']:>8.1f}"
              f"{s['mean_dice']:>10.3f}{s['sensitivity']:>10.2f}{s['fp_per_scan']:>12.1f}{l['mean_dice']:>11.3f}"
              f"{l['sensitivity']:>10.2f}{l['fp_per_scan']:>9.1f}{r['lidc_inference_s']:>9.1f}{r['lidc_inference_peak_rss_mb']:>8}")
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
