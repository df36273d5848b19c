"""Real-time slices: 2D segmentation networks on a stream of 224 x 224 slices, slices per second on this CPU.

    python tests/benchmarks/bench_realtime.py [--threads 2] [--batches 1,16] [--reps 5] [--min-s 2] [--note TEXT]

Networks: the shipped 2.5D U-Net (bundles/lung_nodule_ct_segmentation, ResNet-18, 3 slices in, models/model.pt),
the shipped fast one (models/model_fast.pt: the same encoder, a decoder of half the width) and the reference
design's 2D ResNet-50 FlexibleUNet (1 channel, random weights, seed 0). Runtimes: torch eager fp32 (``torch.inference_mode``), torch channels-last (weights and input), ONNX Runtime (CPU, ``export_onnx``).
Each (network, runtime, batch): warm-up, then ``--reps`` timings of at least ``--min-s`` seconds each
(repeated calls on one random batch); slices/s = slices done / seconds, median over the timings. Outputs
are compared with torch eager on the same batch (max |sigmoid difference|, and of the logits).
Writes tests/benchmarks/results/realtime.json with the load average before and after (other processes
share the cores: say which with ``--note``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "lung_nodule_ct_segmentation"
RESULTS = Path(__file__).resolve().parent / "results" / "realtime.json"
SIZE = (224, 224)
VIDEO_RATE = 25.0   # slices/s
SAME = 1e-4         # max |sigmoid difference| that counts as the same outputs


def networks() -> dict[str, tuple[torch.nn.Module, int]]:
    """name -> (network in eval mode, input channels)."""
    from monai.networks.nets import FlexibleUNet

    from lungnod_ext.apps.pipeline import FAST_OVERLAY
    from lungnod_ext.networks.network_setup import bundle_network

    shipped = {}
    for name, configs, weights in [("shipped 2.5D ResNet-18 U-Net", ["configs/inference.json"], "model.pt"),
                                   ("shipped fast 2.5D U-Net (half-width decoder)",
                                    ["configs/inference.json", FAST_OVERLAY], "model_fast.pt")]:
        net = bundle_network(BUNDLE, configs)
        net.load_state_dict(torch.load(BUNDLE / "models" / weights, map_location="cpu", weights_only=True)["model"])
        shipped[name] = (net.eval(), 3)
    torch.manual_seed(0)
    reference = FlexibleUNet(in_channels=1, out_channels=1, backbone="resnet50", pretrained=False, spatial_dims=2)
    return {**shipped, "reference 2D ResNet-50 U-Net": (reference.eval(), 1)}


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")


def rate(run, batch: int, reps: int, min_s: float) -> dict:
    """Slices/s of ``run()`` (one batch of ``batch`` slices): 2 warm-up calls, then ``reps`` timings >= ``min_s``."""
    for _ in range(2):
        run()
    rates, calls = [], []
    for _ in range(reps):
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < min_s:
            run()
            n += 1
        rates.append(n * batch / elapsed)
        calls.append(n)
    return {"slices_per_s": round(statistics.median(rates), 2), "min": round(min(rates), 2),
            "max": round(max(rates), 2), "calls_per_timing": calls}


def runtimes(net: torch.nn.Module, in_channels: int, threads: int, work: Path) -> dict:
    """runtime name -> (batch tensor -> logits tensor); the channels-last copy and the ONNX file made here."""
    import copy

    from lungnod_ext.networks.network_setup import prepare_for_inference
    from lungnod_ext.networks.onnx_export import export_onnx, onnx_session

    fast = prepare_for_inference(copy.deepcopy(net), channels_last=True)
    session = onnx_session(export_onnx(net, work / "net.onnx", in_channels, SIZE), threads)
    return {"torch eager": net,
            "torch channels-last": lambda x: fast(x.contiguous(memory_format=torch.channels_last)),
            "onnxruntime": lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])}


def main() -> None:
    import onnxruntime

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads and ONNX Runtime intra-op threads")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--min-s", type=float, default=2.0, help="seconds per timing, at least")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--note", default="", help="measuring conditions, stored in the results")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    batches = [int(b) for b in a.batches.split(",")]
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_realtime_") as work:
        for name, (net, channels) in networks().items():
            inputs = {b: torch.rand(b, channels, *SIZE, generator=torch.Generator().manual_seed(b)) for b in batches}
            with torch.inference_mode():
                expected = {b: net(x) for b, x in inputs.items()}
            for runtime, run in runtimes(net, channels, a.threads, Path(work)).items():
                for b, x in inputs.items():
                    with torch.inference_mode():
                        out = run(x)
                        timed = rate(lambda: run(x), b, a.reps, a.min_s)
                    row = {"network": name, "runtime": runtime, "batch": b,
                           **timed,
                           "max_sigmoid_diff": float((out.sigmoid() - expected[b].sigmoid()).abs().max()),
                           "max_logit_diff": float((out - expected[b]).abs().max())}
                    row["same_outputs"] = row["max_sigmoid_diff"] <= SAME
                    row["video_rate"] = row["slices_per_s"] >= VIDEO_RATE
                    rows.append(row)
                    print(f"{name:<30} {runtime:<20} batch {b:>2}: {row['slices_per_s']:7.1f} slices/s "
                          f"({row['min']:.1f}-{row['max']:.1f}), sigmoid diff {row['max_sigmoid_diff']:.1e}, "
                          f"logit diff {row['max_logit_diff']:.1e}", flush=True)
    result = {"slice_size": list(SIZE), "threads": a.threads, "cpu_count": os.cpu_count(), "reps": a.reps,
              "min_s_per_timing": a.min_s, "video_rate_slices_per_s": VIDEO_RATE, "same_outputs_max_sigmoid_diff": SAME,
              "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "cpu": cpu_model(),
              "loadavg_before": [round(v, 2) for v in load_before],
              "loadavg_after": [round(v, 2) for v in os.getloadavg()],
              "wall_s": round(time.perf_counter() - t_start, 1), "note": a.note, "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"load average before {result['loadavg_before']}, after {result['loadavg_after']}; "
          f"{result['wall_s']} s; results: {a.out}")


if __name__ == "__main__":
    main()
