"""`lungnod detect`'s start-up, up to the converted datalist: MONAI's import and the DICOM conversion one after the
other (as before session 42: MONAI imported with only MLflow and pandas hidden, then the conversion), against
today's CLI (the conversion in a forked process beside the import, MONAI imported without scipy.signal,
matplotlib, scikit-learn and ITK as well; :mod:`lungnod_ext.apps.detect_inputs`, :mod:`lungnod_ext.apps.monai_import`).

    python tests/benchmarks/bench_startup.py [--reps 5] [--series DIR ...] [--results FILE]

Each measurement is a fresh Python process (the import is what is timed), the two ways alternating, so a machine
that slows down mid-run slows both; seconds from the process's first statement to the datalist in hand, and the
process's wall time as its parent saw it (interpreter start and exit included). Prints the medians and ranges and
writes them (and every run) to ``--results``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIDC = REPO.parent / "shared" / "data" / "lidc"
DEFAULT_SERIES = [LIDC / "LIDC-IDRI-0001", LIDC / "LIDC-IDRI-0006", LIDC / "LIDC-IDRI-0002"]
WAYS = ("one after the other", "overlapped")

CHILD = """
import time
t0 = time.perf_counter()
import json, sys
from lungnod_ext.apps.detect_inputs import DetectInputs
from lungnod_ext.apps.monai_import import import_monai_for_inference
series, out, overlapped = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if overlapped:
    inputs = DetectInputs(series, out, background=True)
    import_monai_for_inference()
    t_import = time.perf_counter() - t0
else:
    import_monai_for_inference(skipped=("mlflow", "pandas"))
    t_import = time.perf_counter() - t0
    inputs = DetectInputs(series, out)
datalist = inputs.datalist()
print(json.dumps({"ready_s": time.perf_counter() - t0, "import_done_s": t_import, "convert_s": inputs.seconds,
                  "images": len(datalist), "forked": inputs.in_background}))
"""


def run_once(series: Path, overlapped: bool) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    try:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD, str(series), str(out / "out"), "1" if overlapped else "0"],
                              capture_output=True, text=True, cwd=REPO, timeout=600)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{series}: {proc.stderr.strip().splitlines()[-1:]}")
        return {**json.loads(proc.stdout.strip().splitlines()[-1]), "process_wall_s": wall}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--series", type=Path, nargs="+", default=DEFAULT_SERIES)
    ap.add_argument("--results", type=Path, default=REPO / "tests" / "benchmarks" / "results" / "startup.json")
    args = ap.parse_args(argv)
    runs = []
    for rep in range(args.reps):
        for series in args.series:
            for overlapped in (rep % 2 == 1, rep % 2 == 0):   # which way goes first alternates too
                r = run_once(series, overlapped)
                runs.append({"series": series.name, "way": WAYS[overlapped], "rep": rep, **r})
                print(f"{series.name:16s} {WAYS[overlapped]:20s} ready {r['ready_s']:5.2f} s (import {r['import_done_s']:.2f}, "
                      f"conversion {r['convert_s']:.2f}), process {r['process_wall_s']:.2f} s", flush=True)
    table = {}
    for series in args.series:
        for way in WAYS:
            sel = [r for r in runs if r["series"] == series.name and r["way"] == way]
            table.setdefault(series.name, {})[way] = {k: summary([r[k] for r in sel]) for k in
                                                      ("ready_s", "import_done_s", "convert_s", "process_wall_s")}
    print("\nmedian (min-max) seconds to the datalist, fresh process each:")
    for name, ways in table.items():
        a, b = ways[WAYS[0]]["ready_s"], ways[WAYS[1]]["ready_s"]
        print(f"{name:16s} one after the other {a['median']:.2f} ({a['min']:.2f}-{a['max']:.2f}) -> overlapped "
              f"{b['median']:.2f} ({b['min']:.2f}-{b['max']:.2f}); saved {a['median'] - b['median']:.2f} s")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"command": " ".join(["python", "tests/benchmarks/bench_startup.py", *sys.argv[1:]]),
                                        "reps": args.reps, "table": table, "runs": runs}, indent=1) + "\n")
    print(f"results: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
