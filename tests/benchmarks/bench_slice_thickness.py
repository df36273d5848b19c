"""The shipped models on other reconstructions of the same real scans: thick slices (5 mm, as many PACS keep
the axial series) and thin ones (0.625 mm), made from the LIDC series by resampling along z.

    python tests/benchmarks/bench_slice_thickness.py [--work DIR] [--results FILE]

Each LIDC series (``../shared/data/lidc``, converted by data_prep) is rewritten along its slice axis:
thicker by averaging each run of k adjacent slices into one (k = 5 mm / slice spacing: a slab average, the
simplest thick reconstruction; the kernel and slice profile of a scanner's own are not modelled), thinner by
linear interpolation (no new detail: it tests what 500+ slices cost). The NIfTI keeps the case id, so the
readers' nodules (``nodules.csv``, LPS) and LIDC point marks score every version. For each version
``lungnod detect`` (shipped models, default configs, a fresh process) reports nodules at p >= 0.5; per
reference nodule: found (a reported centre within its radius, LUNA16), probability, long x short axis; false
positives (reported, hitting no nodule and no LIDC point mark: a < 3 mm nodule or a non-nodule, within 5 mm of
it, LUNA16's irrelevant findings); wall seconds, peak memory
and the report's notes (a thick-slice warning). LIDC-IDRI-0001
is the shipped models' unseen patient; 0002 and 0006 are their training series (robustness, not accuracy).
Printed and written to ``tests/benchmarks/results/slice_thickness.json``. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from lungnod_ext.metrics.model_evaluation import read_small_marks  # noqa: E402

LIDC = (REPO / ".." / "shared" / "data" / "lidc").resolve()
RESULTS = Path(__file__).resolve().parent / "results" / "slice_thickness.json"
THICK_MM, THIN_MM = 5.0, 0.625


def resliced(image: nib.Nifti1Image, target_mm: float) -> nib.Nifti1Image | None:
    """``image`` (int16 HU, slices along its third axis) at ``target_mm`` slice spacing: the mean of each
    run of k = round(target / spacing) slices when thicker, linear interpolation when thinner; None when
    that is the spacing it has (k = 1)."""
    data = np.asarray(image.dataobj).astype(np.float32)
    affine = image.affine.copy()
    step = float(np.linalg.norm(affine[:3, 2]))
    if target_mm > step:
        k = int(round(target_mm / step))
        if k < 2:
            return None
        n = data.shape[2] // k * k
        out = data[..., :n].reshape(*data.shape[:2], n // k, k).mean(-1)
        affine[:3, 3] += affine[:3, 2] * (k - 1) / 2.0         # slab centre
        affine[:3, 2] *= k
    else:
        factor = step / target_mm
        if factor < 1.5:
            return None
        z = np.arange(0.0, data.shape[2] - 1 + 1e-6, 1.0 / factor)
        lo = np.floor(z).astype(int)
        hi = np.minimum(lo + 1, data.shape[2] - 1)
        w = (z - lo)[None, None, :]
        out = data[..., lo] * (1 - w) + data[..., hi] * w
        affine[:3, 2] /= factor
    img = nib.Nifti1Image(np.rint(out).astype(np.int16), affine)
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    return img


def _table(path: Path, case: str) -> list[dict]:
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r["case_id"] == case]


def score(nodules: list[dict], references: list[dict], marks: list[dict]) -> dict:
    """Per reference nodule found / probability / axes, and the reported nodules that hit nothing."""
    def hits(n, centre, radius):
        return float(np.linalg.norm(np.asarray(n["centre_lps"]) - centre)) < radius

    rows, used = [], set()
    for r in references:
        centre = np.array([float(r[f"centre_{a}_lps_mm"]) for a in "xyz"])
        radius = float(r["diameter_mm"]) / 2.0
        hit = [i for i, n in enumerate(nodules) if hits(n, centre, radius)]
        used.update(hit)
        best = max(hit, key=lambda i: nodules[i]["probability"]) if hit else None
        rows.append({"nodule_id": r["nodule_id"], "diameter_mm": round(float(r["diameter_mm"]), 1),
                     "n_readers": int(r["n_readers"]), "found": best is not None,
                     "probability": round(nodules[best]["probability"], 3) if hit else None,
                     "long_x_short_mm": ([nodules[best].get("long_axis_mm"), nodules[best].get("short_axis_mm")]
                                         if hit else None)})
    on_marks = {i for i, n in enumerate(nodules) for m in marks
                if hits(n, np.asarray(m["centre_lps"]), m["diameter_mm"] / 2.0)}
    return {"nodules": rows, "false_positives": len(nodules) - len(used | on_marks)}


def converted_series(work: Path):
    """The LIDC series converted into ``work/converted`` (done once): per series ``(NIfTI path, case id, nibabel
    image, its reference nodules (rows of ``nodules.csv``), its LIDC point marks: < 3 mm nodules, non-nodules, as
    :func:`lungnod_ext.metrics.model_evaluation.read_small_marks` gives them)``."""
    from data_prep.convert import ConvertOptions, convert_dicom_root

    converted = work / "converted"
    convert_dicom_root(LIDC, converted, ConvertOptions(progress=False))
    for src in sorted((converted / "images").glob("*.nii.gz")):
        case = src.name[:-7]
        marks = _point_marks(converted, case)
        yield src, case, nib.load(src), _table(converted / "nodules.csv", case), marks


def _point_marks(converted: Path, case: str) -> list[dict]:
    """The case's LIDC point marks as ``read_small_marks`` gives them (LPS centre, 10 mm sphere)."""
    return read_small_marks(converted / "small_marks.csv", [case]).get(case, [])


def run_version(image_path: Path, out: Path, extra_args=()) -> dict:
    """``lungnod detect`` (with ``extra_args``, e.g. ``--fast``) in a fresh process, under GNU time for its peak RSS where that is installed (the
    run's own ru_maxrss would start from this benchmark's RSS: Linux keeps a forked child's high-water mark
    across exec), else sampled every 50 ms (which can miss a short peak)."""
    import psutil

    cmd = [sys.executable, "-m", "lungnod_ext", "detect", str(image_path), "--out", str(out), *extra_args]
    gnu_time = Path("/usr/bin/time")
    rss_file = out.parent / f".{out.name}.maxrss"
    if gnu_time.is_file():
        rss_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = [str(gnu_time), "-f", "%M", "-o", str(rss_file), *cmd]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, sum(p.memory_info().rss for p in [watched, *watched.children(recursive=True)]))
        except psutil.Error:
            pass
        time.sleep(0.05)
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"detect {image_path}: {err.strip().splitlines()[-1:]}")
    if rss_file.is_file():
        peak = int(rss_file.read_text().split()[-1]) * 1024     # KB
    summary = json.loads((out / "summary.json").read_text())
    case = summary["cases"][0]
    return {"wall_s": round(wall, 1), "in_process_s": round(summary["seconds"]["total"], 1),
            "peak_rss_gb": round(peak / 2**30, 2), "notes": case.get("notes", []), "nodules": case["nodules"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/bench_slice_thickness")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args()
    work = Path(args.work)
    results = []
    for src, case, image, refs, marks in converted_series(work):
        step = float(np.linalg.norm(image.affine[:3, 2]))
        versions = {f"original {step:g} mm": src}
        for target in (THICK_MM, THIN_MM):
            img = resliced(image, target)
            if img is not None:
                path = work / f"{target:g}mm" / f"{case}.nii.gz"
                path.parent.mkdir(parents=True, exist_ok=True)
                nib.save(img, path)
                versions[f"{target:g} mm ({'slab mean' if target > step else 'interpolated'}, "
                         f"{img.shape[2]} slices)"] = path
        for name, path in versions.items():
            got = run_version(path, work / "out" / case / name.split()[0])
            scored = score(got.pop("nodules"), refs, marks)
            row = {"case": case, "version": name, **scored, **got}
            results.append(row)
            found = ", ".join(f"{n['diameter_mm']} mm/{n['n_readers']}r: "
                              + (f"p {n['probability']:.2f} {n['long_x_short_mm'][0]} x {n['long_x_short_mm'][1]}"
                                 if n["found"] else "missed") for n in scored["nodules"])
            print(f"{case[:14]} {name:32s} FP {scored['false_positives']}  {got['wall_s']:5.1f} s "
                  f"{got['peak_rss_gb']:.2f} GB  {found}", flush=True)
    Path(args.results).write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=1) + "\n")
    print(f"results: {args.results}")


if __name__ == "__main__":
    main()
