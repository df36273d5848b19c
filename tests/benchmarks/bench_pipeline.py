"""The whole pipeline on LIDC-IDRI-0001 on this machine: `lungnod detect <DICOM folder>` wall seconds and
peak memory, and where the time goes per stage (load, preprocess, segment, candidates, classify, write).

    python tests/benchmarks/bench_pipeline.py [--reps 3] [--seg-ckpt P --cls-ckpt P]

Default models are the bundles' defaults (2D ResNet-50 FlexibleUNet, 3D NoduleCNN) with random weights
unless checkpoints are given: timing does not depend on the weights' values, but the number of
candidates does (each is classified), so the candidate count is printed beside the times.
Writes tests/benchmarks/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
LIDC = (REPO / ".." / "shared" / "data" / "lidc").resolve()
RESULTS = Path(__file__).resolve().parent / "results" / "pipeline.json"


def measured(cmd: list[str]) -> tuple[float, float, str]:
    """(wall s, peak RSS MB of the process tree, stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, p = 0, psutil.Process(proc.pid)
    out: list[str] = []
    threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True).start()
    while proc.poll() is None:
        try:
            peak = max(peak, p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True)))
        except psutil.Error:
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.read()[-3000:]}")
    time.sleep(0.1)
    return wall, peak / 2**20, "".join(out)


def stage_profile(image: str, seg_ckpt: str, cls_ckpt: str, work: Path) -> dict:
    """Seconds per stage, in this process, running the bundles' own transform objects one by one."""
    import torch
    from monai.bundle import ConfigParser

    from lungnod_ext.pipeline import CLS_BUNDLE, SEG_BUNDLE

    torch.set_num_threads(os.cpu_count() or 2)
    p = ConfigParser()
    p.read_config(str(SEG_BUNDLE / "configs" / "inference.json"))
    p.update({"bundle_root": str(SEG_BUNDLE), "ckpt_path": seg_ckpt, "output_dir": str(work / "seg"),
              "datalist": [{"image": image}]})
    pre, net = p.get_parsed_content("preprocessing"), p.get_parsed_content("network")
    inferer, post = p.get_parsed_content("inferer"), p.get_parsed_content("postprocessing")
    net.load_state_dict(torch.load(seg_ckpt, map_location="cpu")["model"])
    net.eval()
    t: dict[str, float] = {"load": 0.0, "preprocess": 0.0, "segment": 0.0, "candidates": 0.0, "write": 0.0}
    d = {"image": image}
    for tr in pre.transforms:
        t0 = time.perf_counter()
        d = tr(d)
        t["load" if type(tr).__name__ in ("LoadImaged", "EnsureChannelFirstd") else "preprocess"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.inference_mode():
        d["pred"] = inferer(d["image"][None], net)[0]
    t["segment"] = time.perf_counter() - t0
    for tr in post.transforms:
        t0 = time.perf_counter()
        d = tr(d)
        t["write" if "Write" in type(tr).__name__ else "candidates"] += time.perf_counter() - t0
    case = Path(image).name[:-7]
    cands = work / "seg" / case / f"{case}_candidates.json"
    n = len(json.loads(cands.read_text())["candidates"])
    c = ConfigParser()
    c.read_config(str(CLS_BUNDLE / "configs" / "inference.json"))
    c.update({"bundle_root": str(CLS_BUNDLE), "ckpt_path": cls_ckpt, "output_dir": str(work / "cls"),
              "datalist": [{"image": image, "candidates": str(cands)}]})
    cpre, cnet, cinf = (c.get_parsed_content(k) for k in ("preprocessing", "network", "inferer"))
    cnet.load_state_dict(torch.load(cls_ckpt, map_location="cpu")["model"])
    cnet.eval()
    t0 = time.perf_counter()
    x = cpre({"image": image, "candidates": str(cands)})
    with torch.inference_mode():
        torch.sigmoid(cinf(x["image"][None], cnet))
    t["classify"] = time.perf_counter() - t0
    return {"seconds": {k: round(v, 2) for k, v in t.items()}, "n_candidates": n,
            "segment_input_shape": list(d["image"].shape)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seg-ckpt")
    ap.add_argument("--cls-ckpt")
    ap.add_argument("--threshold", type=float, default=0.5, help="segmentation threshold")
    a = ap.parse_args()
    import torch
    from monai.networks.nets import FlexibleUNet

    from lungnod_ext.classifier import NoduleCNN

    work = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    seg, cls = a.seg_ckpt, a.cls_ckpt
    if not seg:
        torch.manual_seed(0)
        seg = str(work / "seg.pt")
        torch.save({"model": FlexibleUNet(1, 1, "resnet50", pretrained=False, spatial_dims=2).state_dict()}, seg)
    if not cls:
        cls = str(work / "cls.pt")
        torch.save({"model": NoduleCNN(spatial_dims=2).state_dict()}, cls)
    series = next(LIDC.glob("LIDC-IDRI-0001/*/*/"))
    runs = []
    for r in range(a.reps):
        out = work / f"run{r}"
        wall, rss, stdout = measured([sys.executable, "-m", "lungnod_ext", "detect", str(series), "--out", str(out),
                                      "--seg-ckpt", seg, "--cls-ckpt", cls, "--seg", f"threshold={a.threshold}"])
        summary = json.loads((out / "summary.json").read_text())
        runs.append({"wall_s": round(wall, 2), "peak_rss_mb": round(rss), "stages": summary["seconds"],
                     "n_candidates": summary["cases"][0]["n_candidates"]})
        print(f"run {r}: {wall:.1f} s, peak {rss:.0f} MB, {runs[-1]['n_candidates']} candidates, stages "
              + ", ".join(f"{k} {v:.1f}" for k, v in summary["seconds"].items()), flush=True)
    image = next((work / "run0" / "converted" / "images").glob("*.nii.gz"))
    profile = stage_profile(str(image), seg, cls, work / "profile")
    walls = [r["wall_s"] for r in runs]
    result = {"input": "LIDC-IDRI-0001 DICOM folder (133 slices)", "cpu_count": os.cpu_count(),
              "models": {"segmentation": "FlexibleUNet resnet50 2D" if not a.seg_ckpt else a.seg_ckpt,
                         "classification": "NoduleCNN 2D" if not a.cls_ckpt else a.cls_ckpt},
              "median_wall_s": statistics.median(walls), "min_wall_s": min(walls), "max_wall_s": max(walls),
              "max_peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "runs": runs, "stage_profile": profile}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nlungnod detect on LIDC-IDRI-0001: median {result['median_wall_s']:.1f} s "
          f"(min {min(walls):.1f}, max {max(walls):.1f}) over {a.reps} runs, peak RSS {result['max_peak_rss_mb']} MB")
    print("stage        seconds (in-process profile)")
    for k, v in profile["seconds"].items():
        print(f"{k:<12} {v:>7.2f}")
    print(f"candidates classified: {profile['n_candidates']}; segmentation input {profile['segment_input_shape']}")
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
