"""A pleural-cap detector for the small juxta-pleural nodules no stage-1 detector reaches: how many it reaches.

    python tests/benchmarks/bench_pleural_caps.py --series LIDC-IDRI-0006 --copies 24 --seed 2000
    python tests/benchmarks/bench_pleural_caps.py --series LIDC-IDRI-0001 --copies 10 --seed 1000   # bench_models' copies

A juxta-pleural nodule takes a bite out of the lung's air; the rolling-ball idea of classic lung CAD fills it
back. Per copy of ``--series`` with inserted nodules (``data_prep.training_cohort``, no scanner augmentation),
the caps of :func:`lungnod_ext.inference.pleural_caps.pleural_caps` (``--air-hu``, ``--closing-mm``), ranked
by depth (the largest in-plane distance from a cap voxel to its outline, mm). Printed and written (``--results``) by nodule type and size band: the fraction whose
voxels touch any cap ("any"), one of the 20 or 50 deepest, and the caps per scan. Nothing here is a test and
no model is involved: it is the ceiling such a detector would give the classifier.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from data_prep.nifti_io import read_nifti
    from data_prep.training_cohort import CohortOptions
    from lungnod_ext.inference.pleural_caps import pleural_caps
    from bench_models import held_out_copies

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", default="LIDC-IDRI-0006")
    ap.add_argument("--copies", type=int, default=24)
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--closing-mm", type=float, default=5.0)
    ap.add_argument("--air-hu", type=float, default=-500.0)
    ap.add_argument("--work", default="/tmp/bench_pleural_caps")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "pleural_caps.json"))
    args = ap.parse_args()

    work = Path(args.work) / f"{args.series}_seed{args.seed}"
    converted, inserted = work / "converted", work / "inserted"
    _, names = held_out_copies(args.series, converted, inserted, args.copies,
                               CohortOptions(augment=False, seed=args.seed))
    rows = [r for r in csv.DictReader(open(inserted / "nodules.csv")) if r["source"] == "inserted" and r["case_id"] in names]
    found, per_scan = [], []
    for name in names:
        hu, geometry = read_nifti(inserted / "images" / f"{name}.nii.gz")
        instances, _ = read_nifti(inserted / "instances" / f"{name}.nii.gz")
        labels, depth, _ = pleural_caps(hu, geometry.spacing[::-1], args.closing_mm, args.air_hu)
        n = len(depth) - 1
        rank = np.full(n + 1, n)
        rank[np.argsort(-depth[1:], kind="stable") + 1] = np.arange(n)
        per_scan.append(n)
        for r in rows:
            if r["case_id"] != name:
                continue
            hit = np.unique(labels[instances == int(r["nodule_id"])])
            hit = hit[hit > 0]
            found.append({"type": r["type"], "diameter_mm": float(r["diameter_mm"]),
                          "best_rank": int(rank[hit].min()) if hit.size else None})
    table = {}
    for kind in sorted({f["type"] for f in found}):
        for band, keep in (("3-6 mm", lambda d: d < 6), (">= 6 mm", lambda d: d >= 6)):
            sel = [f for f in found if f["type"] == kind and keep(f["diameter_mm"])]
            if not sel:
                continue
            table[f"{kind}, {band}"] = {
                "n": len(sel),
                "any": round(float(np.mean([f["best_rank"] is not None for f in sel])), 3),
                "top20": round(float(np.mean([f["best_rank"] is not None and f["best_rank"] < 20 for f in sel])), 3),
                "top50": round(float(np.mean([f["best_rank"] is not None and f["best_rank"] < 50 for f in sel])), 3)}
    result = {"command": " ".join(sys.argv), "series": args.series, "copies": args.copies, "seed": args.seed,
              "closing_mm": args.closing_mm, "air_hu": args.air_hu,
              "caps_per_scan": round(float(np.mean(per_scan)), 1), "by_type": table}
    print(f"{args.series}, {args.copies} copies (seed {args.seed}): {result['caps_per_scan']} caps per scan")
    print(f"{'nodules':<30}{'n':>4}{'any':>7}{'top20':>7}{'top50':>7}")
    for k, v in table.items():
        print(f"{k:<30}{v['n']:>4}{v['any']:>7.2f}{v['top20']:>7.2f}{v['top50']:>7.2f}")
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(results.read_text()) if results.is_file() else {}
    previous[f"{args.series}_seed{args.seed}"] = result
    results.write_text(json.dumps(previous, indent=1) + "\n")
    print(f"results: {results}")


if __name__ == "__main__":
    main()
