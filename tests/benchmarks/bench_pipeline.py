"""The whole pipeline on LIDC-IDRI-0001 on this machine: `lungnod detect <DICOM folder>` wall seconds and
peak memory, and where the time goes per stage (load, preprocess, segment, candidates, classify, write).

    python tests/benchmarks/bench_pipeline.py [--reps 3] [--seg-ckpt P --cls-ckpt P] [--no-anchor]

Default models are the shipped ones (``bundles/*/models/model.pt``: 2.5D ResNet-18 FlexibleUNet, 2.5D
NoduleCNN), what ``lungnod detect`` runs with no checkpoint flags. The post-processing's time depends on
the segmentation map (a random network puts ~45 % of the voxels above threshold, the worst case), so the
foreground fraction and the candidate count (each candidate is classified) are printed beside the times.

Side by side in the same run (unless ``--no-anchor``): the anchor a user would pick instead, the MONAI model
zoo's lung_nodule_ct_detection RetinaNet (tests/benchmarks/zoo_retinanet_anchor.py: the zoo's published
inference configuration, random weights, timing only) on the same volume at the zoo's resolution, as a
fresh process with the same threads; it needs torchvision, so it runs in the MONAI Label venv
(tests/ecosystem/monailabel_env.sh builds or reuses it).
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
ANCHOR = Path(__file__).resolve().parent / "zoo_retinanet_anchor.py"
ENV_SCRIPT = REPO / "tests" / "ecosystem" / "monailabel_env.sh"


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

    from lungnod_ext.apps.pipeline import CLS_BUNDLE, SEG_BUNDLE

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
            "foreground_fraction": round(float((d["pred"] > 0).float().mean()), 4),
            "segment_input_shape": list(d["image"].shape)}


def run_anchor(image: str) -> dict:
    """The zoo RetinaNet on ``image`` in a fresh process of the MONAI Label venv: wall s, peak RSS, its stages."""
    env_build = subprocess.run(["bash", str(ENV_SCRIPT)], cwd=REPO, capture_output=True, text=True)
    if env_build.returncode:
        raise SystemExit(f"cannot build the venv the anchor needs ({ENV_SCRIPT}):\n{env_build.stderr[-3000:]}")
    python = env_build.stdout.strip().splitlines()[-1]
    wall, rss, stdout = measured([python, str(ANCHOR), image, "--threads", str(os.cpu_count() or 2)])
    versions = subprocess.run([python, "-c", "import torch, monai; print(torch.__version__, monai.__version__)"],
                              capture_output=True, text=True).stdout.split()
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(rss), **json.loads(stdout.strip().splitlines()[-1]),
            "torch": versions[0], "monai": versions[1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seg-ckpt", help="default: the shipped segmentation model")
    ap.add_argument("--cls-ckpt", help="default: the shipped classification model")
    ap.add_argument("--threshold", type=float, default=0.5, help="segmentation threshold")
    ap.add_argument("--no-anchor", action="store_true", help="skip the model zoo RetinaNet anchor (~12 min)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    seg = a.seg_ckpt or str(REPO / "bundles" / "lung_nodule_ct_segmentation" / "models" / "model.pt")
    cls = a.cls_ckpt or str(REPO / "bundles" / "lung_nodule_ct_classification" / "models" / "model.pt")
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
    anchor = None
    if not a.no_anchor:
        anchor = run_anchor(str(image))
        print(f"model zoo RetinaNet anchor: {anchor['wall_s']:.1f} s, peak {anchor['peak_rss_mb']} MB, "
              f"{anchor['n_windows']} windows over {anchor['resampled_shape']}", flush=True)
    result = {"input": "LIDC-IDRI-0001 DICOM folder (133 slices)", "cpu_count": os.cpu_count(),
              "models": {"segmentation": a.seg_ckpt or "shipped (2.5D ResNet-18 FlexibleUNet)",
                         "classification": a.cls_ckpt or "shipped (2.5D NoduleCNN)"},
              "median_wall_s": statistics.median(walls), "min_wall_s": min(walls), "max_wall_s": max(walls),
              "max_peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "runs": runs, "stage_profile": profile}
    if anchor:
        result["anchor_zoo_retinanet"] = anchor
        result["speedup_vs_anchor"] = round(anchor["wall_s"] / result["median_wall_s"], 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nlungnod detect on LIDC-IDRI-0001: median {result['median_wall_s']:.1f} s "
          f"(min {min(walls):.1f}, max {max(walls):.1f}) over {a.reps} runs, peak RSS {result['max_peak_rss_mb']} MB")
    print("stage        seconds (in-process profile)")
    for k, v in profile["seconds"].items():
        print(f"{k:<12} {v:>7.2f}")
    print(f"candidates classified: {profile['n_candidates']}; segmentation input {profile['segment_input_shape']}; "
          f"{100 * profile['foreground_fraction']:.1f} % of the voxels above threshold")
    if anchor:
        print(f"model zoo RetinaNet (random weights, {anchor['resampled_shape']} at 0.703x0.703x1.25 mm, "
              f"{anchor['n_windows']} windows of 512x512x192): {anchor['wall_s']:.1f} s (detect {anchor['detect_s']:.1f} s), "
              f"peak RSS {anchor['peak_rss_mb']} MB -> lungnod detect is {result['speedup_vs_anchor']:.1f}x faster")
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
