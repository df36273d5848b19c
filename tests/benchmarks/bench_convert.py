"""Benchmark: LIDC-IDRI-0001 DICOM -> int16 .nii.gz + consensus mask (data_prep) vs ``dcm2niix -z y``.

Both tools run as fresh processes, alternately, ``--reps`` times on the same series (in place, from
../shared/data/lidc); wall seconds and peak RSS of each process (os.wait4). Also timed: data_prep's
conversion inside a warm Python process (imports already paid), the cost a cohort run pays per case.
Prints a table and writes tests/benchmarks/results/convert.json.

    python tests/benchmarks/bench_convert.py [--reps 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIDC = (REPO / ".." / "shared" / "data" / "lidc").resolve()
RESULTS = REPO / "tests" / "benchmarks" / "results" / "convert.json"

WARM = r"""
import json, resource, sys, time
from data_prep.convert import ConvertOptions, convert_dicom_root
src, out, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
times = []
for _ in range(reps):
    t = time.perf_counter()
    r = convert_dicom_root(src, out, ConvertOptions(progress=False, force=True))
    times.append(time.perf_counter() - t)
    assert len(r.converted) == 1 and r.n_nodules == 1, r.as_dict()
print(json.dumps({"times": times, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_timed(cmd) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}\n{proc.stderr.read().decode()}")
    return wall, usage.ru_maxrss / 1024


def summary(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs),
            "stdev": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    series = next(LIDC.glob("LIDC-IDRI-0001/*/*/"))
    dcm2niix = shutil.which("dcm2niix") or str(Path(sys.executable).parent / "dcm2niix")
    ours_cli, ref_cli, ours_rss, ref_rss = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "d2n").mkdir()
        for rep in range(args.reps + 1):   # first round warms the page cache, not recorded
            w1, m1 = run_timed([sys.executable, "-m", "data_prep", "-q", "convert", str(series), "--out",
                                str(tmp / "ours"), "--force"])
            w2, m2 = run_timed([dcm2niix, "-z", "y", "-f", "ref", "-o", str(tmp / "d2n"), str(series)])
            for f in (tmp / "d2n").iterdir():
                f.unlink()
            if rep:
                ours_cli.append(w1), ref_cli.append(w2), ours_rss.append(m1), ref_rss.append(m2)
        warm = json.loads(subprocess.run([sys.executable, "-c", WARM, str(series), str(tmp / "warm"), str(args.reps)],
                                         check=True, capture_output=True, text=True).stdout)
    res = {
        "series": "LIDC-IDRI-0001 (133 x 512 x 512, uncompressed)",
        "machine": f"{os.cpu_count()} cpu, {platform.machine()}, Python {platform.python_version()}",
        "dcm2niix_cli_s": summary(ref_cli), "data_prep_cli_s": summary(ours_cli),
        "data_prep_in_process_s": summary(warm["times"][1:] or warm["times"]),
        "ratio_cli_median": statistics.median(ours_cli) / statistics.median(ref_cli),
        "ratio_in_process_median": statistics.median(warm["times"][1:] or warm["times"]) / statistics.median(ref_cli),
        "peak_rss_mb": {"dcm2niix": max(ref_rss), "data_prep_cli": max(ours_rss), "data_prep_in_process": warm["peak_rss_mb"]},
        "data_prep_writes": "image int16 .nii.gz + consensus label + instance label + provenance + nodules.csv",
        "dcm2niix_writes": "image int16 .nii.gz + json sidecar",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(res, indent=1))
    tmp_out.replace(args.out)
    print(f"{'tool':34s} {'median s':>9s} {'min':>6s} {'max':>6s} {'peak RSS MB':>12s}")
    for name, key, rss in (("dcm2niix -z y", "dcm2niix_cli_s", res["peak_rss_mb"]["dcm2niix"]),
                           ("data-prep convert (new process)", "data_prep_cli_s", res["peak_rss_mb"]["data_prep_cli"]),
                           ("data_prep convert (warm process)", "data_prep_in_process_s", res["peak_rss_mb"]["data_prep_in_process"])):
        s = res[key]
        print(f"{name:34s} {s['median']:9.3f} {s['min']:6.3f} {s['max']:6.3f} {rss:12.0f}")
    print(f"ratio to dcm2niix (median): new process {res['ratio_cli_median']:.2f}x, warm {res['ratio_in_process_median']:.2f}x"
          f"  (goal <= 1.2x)  -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
