"""How often the reported attenuation (solid / part-solid / ground-glass) is the nodule's own.

    python tests/benchmarks/bench_attenuation.py [--inserted NAME=IMAGES,DETECT ...] [--real] [--work DIR] [--results FILE]

``--inserted``: nodules of known type inserted into a series and outlined by the segmenter. ``IMAGES`` holds
``nodules.csv`` (``type`` of each ``inserted`` row: solid, juxta-pleural and juxta-vascular are solid) and
``images/<case>.nii.gz``; ``DETECT`` holds ``<case>/<case>_candidates.csv`` and ``<case>_labels.nii.gz`` as
``lungnod detect`` or the bundle writes them. Two such pairs the project has:
- a ``bench_models.py --work W`` run: ``W/<patient>/inserted`` and ``W/<patient>/detect`` (LIDC-IDRI-0001 for
  the shipped models: the unseen patient, the figures to quote);
- a ``lungnod train-models --out R`` run: ``R/cohort`` and ``R/runs/train_candidates`` (the training series'
  copies: what the rule's two fractions were chosen on).
``--real``: the LIDC series of ``../shared/data/lidc`` converted (``--work``) and run through ``lungnod detect``
(shipped models, a fresh process); the truth is the readers' median ``texture`` rating
(:func:`lungnod_ext.inference.attenuation.reader_attenuation`).

Each reference nodule takes the nearest candidate whose centre is within its radius (the LUNA16 rule; none:
not counted) and that candidate's outline is measured by :func:`lungnod_ext.inference.attenuation.add_attenuation`
(the function the segmentation bundle runs), so detect outputs made before the step existed count too. Printed:
per size band (equivalent diameter 3-6, 6-10, >= 10 mm) the table of true against reported class and the share
right; written to ``tests/benchmarks/results/attenuation.json``. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
RESULTS = Path(__file__).resolve().parent / "results" / "attenuation.json"
INSERTED_CLASS = {"solid": "solid", "juxta_pleural": "solid", "juxta_vascular": "solid", "part_solid": "part-solid",
                  "ground_glass": "ground-glass"}
BANDS = ((3.0, 6.0, "3-6 mm"), (6.0, 10.0, "6-10 mm"), (10.0, float("inf"), ">= 10 mm"))


def _band(diameter_mm: float) -> str | None:
    return next((name for lo, hi, name in BANDS if lo <= diameter_mm < hi), None)


def _truth(row: dict) -> str | None:
    from lungnod_ext.inference.attenuation import reader_attenuation

    if row["source"] == "inserted":
        return INSERTED_CLASS.get(row["type"])
    return reader_attenuation(row["texture_median"])


def measure_case(image_path: Path, detect_case_dir: Path, case: str, references: list[dict]) -> list[dict]:
    """Per reference nodule with a truth: its band, truth, reported class, solid fraction, candidate id and
    distance; references no candidate reaches are left out (they are the detector's misses)."""
    import pandas as pd

    from data_prep.nifti_io import read_nifti
    from lungnod_ext.inference.attenuation import add_attenuation

    cands = pd.read_csv(detect_case_dir / f"{case}_candidates.csv")
    if cands.empty:
        return []
    hu, geometry = read_nifti(image_path)
    labels, _ = read_nifti(detect_case_dir / f"{case}_labels.nii.gz")
    centres = cands[["centre_x_lps_mm", "centre_y_lps_mm", "centre_z_lps_mm"]].to_numpy(float)
    spacing = np.asarray(geometry.spacing, dtype=float)[::-1]
    rows = []
    for ref in references:
        truth = _truth(ref)
        band = _band(ref["diameter_mm"])
        if truth is None or band is None:
            continue
        dist = np.linalg.norm(centres - np.asarray(ref["centre_lps"]), axis=1)
        i = int(np.argmin(dist))
        if dist[i] > ref["diameter_mm"] / 2:
            continue
        cand = {"id": int(cands["id"][i]), "bbox_voxel": [int(cands[f"bbox_{a}{e}"][i]) for e in "01" for a in "ijk"]}
        got = add_attenuation([cand], labels, hu, spacing)[0]
        rows.append({"case": case, "nodule_id": ref["nodule_id"], "diameter_mm": round(ref["diameter_mm"], 2),
                     "band": band, "truth": truth, "reported": got.get("attenuation"),
                     "solid_fraction": got.get("solid_fraction"), "candidate": cand["id"],
                     "distance_mm": round(float(dist[i]), 2)})
    return rows


def measure_set(images_dir: Path, detect_dir: Path) -> list[dict]:
    """Every case of ``images_dir/nodules.csv`` that ``detect_dir`` has (module doc)."""
    from lungnod_ext.metrics.model_evaluation import read_references

    rows = []
    for case, refs in sorted(read_references(images_dir / "nodules.csv").items()):
        if (detect_dir / case / f"{case}_candidates.csv").is_file():
            rows += measure_case(images_dir / "images" / f"{case}.nii.gz", detect_dir / case, case, refs)
    return rows


def summarise(rows: list[dict]) -> dict:
    """Per band: n, share right, and counts of (truth, reported)."""
    out = {}
    for _, _, band in BANDS:
        sel = [r for r in rows if r["band"] == band]
        if sel:
            out[band] = {"n": len(sel), "right": round(sum(r["truth"] == r["reported"] for r in sel) / len(sel), 3),
                         "truth -> reported": {f"{t} -> {p}": n for (t, p), n in
                                               sorted(Counter((r["truth"], r["reported"]) for r in sel).items())}}
    return out


def _print(name: str, summary: dict) -> None:
    for band, s in summary.items():
        print(f"{name:28s} {band:9s} n {s['n']:3d}  right {s['right']:.2f}  "
              + ", ".join(f"{k}: {v}" for k, v in s["truth -> reported"].items()), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inserted", action="append", default=[], metavar="NAME=IMAGES,DETECT")
    ap.add_argument("--real", action="store_true", help="the LIDC series through lungnod detect (shipped models)")
    ap.add_argument("--work", default="/tmp/bench_attenuation")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args()
    results = {"command": " ".join(sys.argv), "sets": {}}
    for spec in args.inserted:
        name, _, dirs = spec.partition("=")
        images, _, detect = dirs.partition(",")
        if not (name and images and detect):
            ap.error(f"--inserted {spec!r}: give NAME=IMAGES,DETECT")
        rows = measure_set(Path(images), Path(detect))
        results["sets"][name] = {"summary": summarise(rows), "nodules": rows}
        _print(name, results["sets"][name]["summary"])
    if args.real:
        from bench_slice_thickness import converted_series, run_version

        from lungnod_ext.metrics.model_evaluation import read_references

        rows = []
        work = Path(args.work)
        for src, case, _, _, _ in converted_series(work):
            run_version(src, work / "out" / case)
            refs = read_references(work / "converted" / "nodules.csv", [case]).get(case, [])
            found = measure_case(src, work / "out" / case / case, case, refs)
            rows += found
            for r in found:
                print(f"{case[:14]} nodule {r['nodule_id']} {r['diameter_mm']:5.1f} mm  readers {r['truth']:12s} "
                      f"reported {r['reported']:12s} (solid fraction {r['solid_fraction']:.3f})", flush=True)
        results["sets"]["real LIDC nodules (readers' texture)"] = {"summary": summarise(rows), "nodules": rows}
        _print("real", results["sets"]["real LIDC nodules (readers' texture)"]["summary"])
    Path(args.results).write_text(json.dumps(results, indent=1) + "\n")
    print(f"results: {args.results}")


if __name__ == "__main__":
    main()
