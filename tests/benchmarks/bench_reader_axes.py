"""How much LIDC readers differ in a nodule's caliper size: per-reader long / short axis next to the consensus.

    python tests/benchmarks/bench_reader_axes.py [--lidc ../shared/data/lidc] [--results results/reader_axes.json]

For every contoured nodule of the LIDC-IDRI series under ``--lidc`` (LIDC XML beside the DICOM), each
reader's own mask (their contours filled, as ``data-prep convert`` fills them) and the 50 % consensus are
measured by :func:`lungnod_ext.inference.measurements.axial_axes` (long axis on the axial slice where the
region is longest, short axis across it; mm). A reader's mask belongs to the consensus nodule it overlaps
most. This is the yardstick for the segmentation bundle's caliper figures: a model within the readers'
spread measures as a reader does. Prints a table and writes ``--results``; nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
RESULTS = Path(__file__).resolve().parent / "results" / "reader_axes.json"


def reader_axes(series_dir: Path) -> list[dict]:
    """Per consensus nodule of the series under ``series_dir``: its consensus axes and each reader's."""
    from data_prep.annotations import SliceIndex, build_case_annotations, rois_by_slice
    from data_prep.convert import index_lidc_xml
    from data_prep.dicom_series import discover_series
    from data_prep.lidc_xml import KIND_NODULE, parse_lidc_xml
    from data_prep.masks import rasterize_rois
    from lungnod_ext.inference.measurements import axial_axes

    plans, _, _ = discover_series(series_dir)
    xml_index = index_lidc_xml(series_dir)
    out = []
    for plan in plans:
        reads = [parse_lidc_xml(p) for p in xml_index.get(plan.series_uid, [])]
        if not reads:
            continue
        slices = SliceIndex({h.sop_instance_uid: k for k, h in enumerate(plan.headers)},
                            np.array([h.position[2] for h in plan.headers]), 0.25 * plan.geometry.spacing[2])
        shape, spacing = plan.geometry.shape_zyx, plan.geometry.spacing[::-1]
        consensus = build_case_annotations(reads, plan.geometry, slices).instance_mask
        per_nodule = defaultdict(list)
        for read in reads:
            for mark in read.marks:
                if mark.kind != KIND_NODULE:
                    continue
                by_k, _ = rois_by_slice(mark, slices)
                sparse = rasterize_rois(by_k, shape) if by_k else None
                if sparse is None:
                    continue
                lo, hi = sparse.bounds()        # measured on its own crop: the same axes, no full-size copy
                window = consensus[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
                ids, counts = np.unique(window[sparse.array], return_counts=True)
                counts, ids = counts[ids > 0], ids[ids > 0]
                if not ids.size:
                    continue                    # a reader's mark outside every consensus nodule (fewer readers)
                axes = axial_axes(sparse.array, spacing)
                per_nodule[int(ids[np.argmax(counts)])].append(
                    {"reader": mark.reader, "axes_mm": [round(axes["long_axis_mm"], 2), round(axes["short_axis_mm"], 2)]})
        for nid in sorted(per_nodule):
            cons = axial_axes(consensus == nid, spacing)
            readers = per_nodule[nid]
            longs = [r["axes_mm"][0] for r in readers]
            shorts = [r["axes_mm"][1] for r in readers]
            out.append({"case": plan.case_id, "nodule_id": nid, "n_readers": len(readers),
                        "consensus_axes_mm": [round(cons["long_axis_mm"], 2), round(cons["short_axis_mm"], 2)],
                        "readers": readers,
                        "reader_long_range_mm": [min(longs), max(longs)],
                        "reader_short_range_mm": [min(shorts), max(shorts)]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lidc", default=str(REPO.parent / "shared" / "data" / "lidc"))
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args()
    rows = []
    for series in sorted(p for p in Path(args.lidc).iterdir() if p.is_dir()):
        rows += reader_axes(series)
    print(f"{'case':<26}{'nodule':>7}{'readers':>8}   consensus long x short mm   readers' long / short (min-max) mm")
    for r in rows:
        c = r["consensus_axes_mm"]
        print(f"{r['case']:<26}{r['nodule_id']:>7}{r['n_readers']:>8}   {c[0]:>6.1f} x {c[1]:<6.1f}"
              f"              {r['reader_long_range_mm'][0]:.1f}-{r['reader_long_range_mm'][1]:.1f} / "
              f"{r['reader_short_range_mm'][0]:.1f}-{r['reader_short_range_mm'][1]:.1f}")
    Path(args.results).write_text(json.dumps({"command": " ".join(sys.argv), "nodules": rows}, indent=1) + "\n")
    print(f"\nresults: {args.results}")


if __name__ == "__main__":
    main()
