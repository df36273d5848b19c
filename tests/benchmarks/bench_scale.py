"""Conversion at cohort scale: a synthetic cohort of 50 DICOM series (+ LIDC XML) converted by
``data-prep convert`` with ``--workers 1`` and ``--workers 2``: wall seconds, seconds per case, speed-up,
peak memory of the process tree, and what the full LIDC-IDRI (1,018 scans) costs at that rate.

    python tests/benchmarks/bench_scale.py [--cases 50] [--out /tmp/bench_scale] [--workers 1,2]

The synthetic series have LIDC-IDRI-0001's geometry by default (512 x 512 pixels of 0.703125 mm,
133 slices of 2.5 mm), so a case costs what a typical LIDC scan costs. Each run converts from scratch
(``--force``) into its own folder; the outputs of the runs are compared (same cases, same nodule table).
The cohort is read once before the first run, so every run reads from the page cache and the order of the
runs does not favour the later ones (that warm-up read is timed as ``read_s``).
Writes tests/benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import measured  # noqa: E402  (a script beside this one)

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
LIDC_IDRI_SCANS = 1018


def make_cohort(out: Path, cases: int, size_xy: int, pixel_mm: float, slices: int, slice_mm: float) -> float:
    """Write the synthetic DICOM cohort (2 processes); seconds taken (0 when it was already there)."""
    from data_prep.synth import CohortConfig, write_cohort

    t0 = time.perf_counter()
    write_cohort(out, CohortConfig(n_cases=cases, size_xy=size_xy, pixel_spacing_mm=pixel_mm, n_slices=slices,
                                   slice_spacing_mm=slice_mm), workers=2)
    return time.perf_counter() - t0


def nodule_rows(converted: Path) -> list[tuple]:
    with open(converted / "nodules.csv", newline="") as f:
        return sorted((r["case_id"], r["nodule_id"], r["volume_mm3"]) for r in csv.DictReader(f))


def read_all(folder: Path) -> float:
    """Read every file under ``folder`` once (into the page cache); seconds taken."""
    t0 = time.perf_counter()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(1 << 22):
                    pass
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=50)
    ap.add_argument("--out", default="/tmp/bench_scale")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--size-xy", type=int, default=512)
    ap.add_argument("--pixel-mm", type=float, default=0.703125)
    ap.add_argument("--slices", type=int, default=133)
    ap.add_argument("--slice-mm", type=float, default=2.5)
    a = ap.parse_args()
    out = Path(a.out)
    synth_s = make_cohort(out / "synthetic", a.cases, a.size_xy, a.pixel_mm, a.slices, a.slice_mm)
    dicom = out / "synthetic" / "dicom"
    n_files = sum(1 for _ in dicom.rglob("*.dcm"))
    dicom_mb = sum(p.stat().st_size for p in dicom.rglob("*")) / 2**20
    read_s = read_all(dicom)

    runs: dict[str, dict] = {}
    tables = {}
    for w in (int(x) for x in a.workers.split(",")):
        target = out / f"converted_w{w}"
        shutil.rmtree(target, ignore_errors=True)
        wall, rss, _ = measured([sys.executable, "-m", "data_prep", "-q", "convert", str(dicom), "--out", str(target),
                                 "--workers", str(w), "--force"])
        report = json.loads((target / "conversion_report.json").read_text())
        n = len(report["converted"])
        if n != a.cases:
            raise SystemExit(f"--workers {w}: {n} of {a.cases} series converted: {json.dumps(report)[:2000]}")
        tables[w] = nodule_rows(target)
        runs[str(w)] = {"wall_s": round(wall, 2), "s_per_case": round(wall / n, 3), "peak_rss_mb": round(rss),
                        "cases": n, "nodules": len(tables[w]),
                        "lidc_idri_hours": round(wall / n * LIDC_IDRI_SCANS / 3600, 2)}
        print(f"--workers {w}: {json.dumps(runs[str(w)])}", flush=True)
    first = next(iter(tables.values()))
    identical = all(t == first for t in tables.values())
    w_min, w_max = min(runs, key=int), max(runs, key=int)
    result = {"cohort": {"cases": a.cases, "geometry": f"{a.size_xy}x{a.size_xy}x{a.slices}, {a.pixel_mm} mm pixels, "
                                                         f"{a.slice_mm} mm slices", "dicom_files": n_files,
                         "dicom_mb": round(dicom_mb), "generated_s": round(synth_s, 1),
                         "read_s": round(read_s, 1), "page_cache": "warm for every run"},
              "cpu_count": os.cpu_count(), "runs": runs, "outputs_identical": identical,
              "speedup": round(runs[w_min]["wall_s"] / runs[w_max]["wall_s"], 3)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{a.cases} series ({n_files} DICOM files, {dicom_mb:.0f} MB, read once first in {read_s:.1f} s: "
          f"every run reads from the page cache), {os.cpu_count()} cores")
    print(f"{'workers':>8}{'wall s':>9}{'s/case':>8}{'peak RSS MB':>13}{'LIDC-IDRI h':>13}")
    for w, r in runs.items():
        print(f"{w:>8}{r['wall_s']:>9.1f}{r['s_per_case']:>8.2f}{r['peak_rss_mb']:>13}{r['lidc_idri_hours']:>13.2f}")
    print(f"speed-up {w_min} -> {w_max} workers: {result['speedup']:.2f}x; outputs identical: {identical}")
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
