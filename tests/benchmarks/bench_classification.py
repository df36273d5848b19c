"""Stage 2 measured: 2D vs 3D patch CNN, and stage 1 vs stage 1+2 detection on held-out synthetic cases and
on the real LIDC-IDRI-0001 series.

    python tests/benchmarks/bench_classification.py --data <converted cohort> --seg-ckpt <2D seg model.pt>
        [--seg-backbone resnet18] [--epochs 30] [--out /tmp/bench_cls]

Uses a converted cohort with a datalist (e.g. the one `bench_segmentation.py` writes) and a trained
segmentation checkpoint: candidates on every case -> patches (hard negatives from the training cases'
false positives) -> train the 3D and the 2D classifier (`monai.bundle run training`) -> evaluate both on
the test patches -> `lungnod detect` (2D classifier, the default) on the test cases and on LIDC-IDRI-0001 ->
`lungnod evaluate`. Writes tests/benchmarks/results/classification.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLS = REPO / "bundles" / "lung_nodule_ct_classification"
LIDC = (REPO / ".." / "shared" / "data" / "lidc").resolve()
RESULTS = Path(__file__).resolve().parent / "results" / "classification.json"


def sh(cmd: list[str], cwd: Path = REPO) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if p.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--seg-ckpt", required=True)
    ap.add_argument("--seg-backbone", default="resnet18")
    ap.add_argument("--seg-spacing", default="[1.5,1.5,-1]")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--out", default="/tmp/bench_cls")
    a = ap.parse_args()
    from lungnod_ext.apps.patch_dataset import build_patch_dataset
    from lungnod_ext.apps.pipeline import SEG_BUNDLE, run_bundle_inference

    data, out = Path(a.data), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    seg_over = {"network_def#backbone": a.seg_backbone, "spacing": json.loads(a.seg_spacing), "write_overlays": False}
    dl = json.loads((data / "datalist.json").read_text())
    cands = out / "candidates"
    if not cands.is_dir():
        items = [{"image": str(data / e["image"])} for s in ("training", "validation", "testing") for e in dl[s]]
        run_bundle_inference(SEG_BUNDLE, ["configs/inference.json"], items, cands, Path(a.seg_ckpt), seg_over)
    result: dict = {"settings": vars(a), "classifier": {}}
    for dims in (3, 2):
        patches = out / f"patches_{dims}d"
        if not (patches / "datalist.json").is_file():
            build_patch_dataset(data, patches, candidates_dir=cands, spatial_dims=dims)
        d = json.loads((patches / "datalist.json").read_text())
        work = out / f"cls_{dims}d"
        configs = "configs/train.json" if dims == 2 else "['configs/train.json','configs/train_3d.json']"
        hist = work / "eval" / "train_history.json"
        if hist.is_file() and len(json.loads(hist.read_text())) == a.epochs and (work / "models" / "model.pt").is_file():
            train_s = float("nan")  # trained by an earlier run of this script: reuse
        else:
            train_s = sh([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", configs,
                          "--dataset_dir", str(patches), "--output_dir", str(work / "eval"), "--ckpt_dir",
                          str(work / "models"), "--epochs", str(a.epochs), "--val_interval", "5", "--num_workers",
                          "0"], cwd=CLS)
        ev = configs[:-1] + ",'configs/evaluate.json']" if dims == 3 else "['configs/train.json','configs/evaluate.json']"
        sh([sys.executable, "-m", "monai.bundle", "run", "--config_file", ev, "--dataset_dir", str(patches),
            "--output_dir", str(work / "test"), "--ckpt_path", str(work / "models" / "model.pt"), "--num_workers", "0"],
           cwd=CLS)
        m = json.loads((work / "test" / "metrics.json").read_text())
        timing = json.loads((work / "eval" / "train_timing.json").read_text())
        result["classifier"][f"{dims}d"] = {
            "train_s": round(train_s, 1), "n_train_patches": len(d["training"]), "n_test_patches": m["n_patches"],
            "test": {k: m["overall"].get(k) for k in ("roc_auc", "sensitivity", "specificity", "precision", "f1")},
            "hard_negative_specificity": m["per_kind"].get("hard_negative", {}).get("specificity"),
            "data_share": round(sum(t["data_s"] for t in timing) / sum(t["step_s"] for t in timing), 4)}
        print(f"{dims}D:", json.dumps(result["classifier"][f"{dims}d"]), flush=True)

    seg_args = ["--seg", f"network_def#backbone={a.seg_backbone}", "--seg", f"spacing={a.seg_spacing}"]
    cls2 = str(out / "cls_2d" / "models" / "model.pt")
    test_list = out / "test_datalist.json"
    held_out = dl.get("testing") or dl["validation"]  # a datalist without a test fold: its validation cases
    test_list.write_text(json.dumps({"testing": [{"image": str(data / e["image"])} for e in held_out]}))
    lidc_conv = out / "lidc_converted"
    if not (lidc_conv / "nodules.csv").is_file():
        sh([sys.executable, "-m", "data_prep", "-q", "convert", str(LIDC), "--out", str(lidc_conv)])
    for name, inp, ref in (("synthetic_test", test_list, data),
                           ("lidc_0001", next((lidc_conv / "images").glob("*.nii.gz")), lidc_conv)):
        rep = out / f"detect_{name}"
        secs = sh([sys.executable, "-m", "lungnod_ext", "detect", str(inp), "--out", str(rep), "--seg-ckpt", a.seg_ckpt,
                   "--cls-ckpt", cls2, *seg_args])
        sh([sys.executable, "-m", "lungnod_ext", "evaluate", str(rep), "--reference", str(ref), "--json",
            str(out / f"eval_{name}.json")])
        ev = json.loads((out / f"eval_{name}.json").read_text())
        keys = ("n_scans", "n_reference_nodules", "n_candidates", "sensitivity", "fp_per_scan", "cpm", "map_50",
                "map_50_95", "candidate_specificity", "candidate_auc")
        result[name] = {"detect_s": round(secs, 1), **{s: {k: ev[s].get(k) for k in keys} for s in ev}}
        print(name, json.dumps(result[name]), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'classifier':<8}{'AUC':>7}{'sens':>7}{'spec':>7}{'hard-neg spec':>15}{'train s':>9}")
    for k, v in result["classifier"].items():
        t = v["test"]
        print(f"{k:<8}{t['roc_auc']:>7.3f}{t['sensitivity']:>7.2f}{t['specificity']:>7.2f}"
              f"{(v['hard_negative_specificity'] or 0):>15.2f}{v['train_s']:>9.0f}")
    print(f"\n{'data':<16}{'stage':<10}{'sens':>6}{'FP/scan':>9}{'CPM':>7}{'mAP50':>7}")
    for name in ("synthetic_test", "lidc_0001"):
        for stage in ("stage1", "stage1+2"):
            if stage in result[name]:
                s = result[name][stage]
                print(f"{name:<16}{stage:<10}{s['sensitivity']:>6.2f}{s['fp_per_scan']:>9.1f}{s['cpm']:>7.3f}"
                      f"{s['map_50']:>7.3f}")
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
