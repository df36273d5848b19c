"""Another stage-2 classifier on a finished ``bench_models.py`` fold, in seconds instead of a full rerun.

    python tests/benchmarks/bench_rescore.py --work /tmp/bench_models/LIDC-IDRI-0001 \
        --cls-ckpt runs/foldX/export/classification/model.pt --prior 0.046 [--prior-faint 0.002] \
        [--cls KEY=VALUE ...] [--max-blob-rank 50] [--results out.json]

``--work``: the per-patient folder ``bench_models.py --work W`` left (``W/<patient>``: ``converted/``,
``inserted/``, ``detect/``). Its stage-1 candidates (the segmenter's and the dot filter's, as detect wrote
them) are scored again by ``--cls-ckpt`` (built from the classification bundle's inference config with
the ``--cls`` overrides, e.g. ``network_def#centre_features=true``; patches as that config cuts them);
dot-filter candidates get the posterior with ``--prior`` (the recipe's ``detector_priors`` blob value), those of
its faint quota (``detector`` "faint") with ``--prior-faint`` when given (else the network's own value);
``--max-blob-rank N`` keeps only the dot-filter candidates of rank < N (a detect run with more peaks
contains every run with fewer: peaks are taken in rank order). With the classifier and prior the fold
was run with, the tables equal ``bench_models.py``'s.

Printed and written (``--results``): stage 1+2 FROC / CPM / operating point at 0.5 per subset as in
``bench_models.py``, plus **stage-1 recall**: the share of the subset's nodules with any candidate centre
within their radius, whatever its score (what no classifier can exceed). Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _classifier(ckpt: Path, overrides: dict):
    """The classification bundle's network (with ``overrides``) loaded from ``ckpt``, and the bundle's own
    preprocessing (candidate patches, HU window) from its inference config."""
    from monai.bundle import ConfigParser

    from lungnod_ext.apps.pipeline import CLS_BUNDLE
    from lungnod_ext.networks.network_setup import bundle_network

    overrides = {**overrides, "ckpt_path": str(ckpt)}     # an ensemble checkpoint builds its members
    net = bundle_network(CLS_BUNDLE, overrides=overrides)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() for k, v in state.get("model", state).items()}, strict=True)
    parser = ConfigParser()
    parser.read_config(str(CLS_BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(CLS_BUNDLE), **overrides})
    return net.eval(), parser.get_parsed_content("preprocessing")


def rescore(work: Path, ckpt: Path, prior: float, overrides: dict, max_blob_rank: int | None,
            prior_faint: float | None = None) -> dict:
    from bench_models import _stage_tables, reference_subsets
    from lungnod_ext.inference.classify import apply_detector_priors
    from lungnod_ext.metrics.detection import match_detections
    from lungnod_ext.metrics.model_evaluation import read_references, read_small_marks, subset_references

    net, preprocessing = _classifier(ckpt, overrides)
    priors = {"blob": prior, **({"faint": prior_faint} if prior_faint is not None else {})}
    result: dict = {"work": str(work), "cls_ckpt": str(ckpt), "prior": prior, "prior_faint": prior_faint,
                    "cls_overrides": overrides,
                    "max_blob_rank": max_blob_rank, "detection": {}, "stage1_recall": {}}
    for group, table_dir in (("real", work / "converted"), ("inserted", work / "inserted")):
        cases = [p.name[:-7] for p in sorted((table_dir / "images").glob("*.nii.gz"))
                 if (work / "detect" / p.name[:-7]).is_dir()]
        if not cases:
            continue
        dets = {}
        for case in cases:
            cands = json.loads((work / "detect" / case / f"{case}_candidates.json").read_text())["candidates"]
            if max_blob_rank is not None:
                cands = [c for c in cands if c.get("blob_rank", -1) < max_blob_rank]
            if cands:
                x = preprocessing({"image": str(table_dir / "images" / f"{case}.nii.gz"), "candidates": cands})["image"]
                with torch.no_grad():
                    raw = torch.sigmoid(net(x)).reshape(-1).tolist()
                apply_detector_priors(cands, raw, priors)
                for c in cands:
                    c["cls_prob"] = c["probability"]
            dets[case] = cands
        refs = read_references(table_dir / "nodules.csv", cases)
        marks = read_small_marks(table_dir / "small_marks.csv", cases)
        subsets = reference_subsets(group)
        result["detection"].update(_stage_tables(dets, refs, marks, subsets, 0.5))
        for name, keep in subsets.items():
            found = total = 0
            for case, rs in subset_references(refs, keep, marks).items():
                total += sum(not r.get("exclude") for r in rs)
                if rs and dets.get(case):      # excluded references (other subsets, point marks) take no hit
                    found += len(match_detections([{**c, "score": 1.0} for c in dets[case]], rs).tp)
            if total:
                result["stage1_recall"][name] = {"found": found, "n": total, "recall": found / total}
    return result


def main() -> None:
    from lungnod_ext.apps.cli import parse_overrides

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, type=Path, help="bench_models.py's folder for one patient")
    ap.add_argument("--cls-ckpt", required=True, type=Path)
    ap.add_argument("--prior", required=True, type=float, help="detector_priors blob value for this classifier")
    ap.add_argument("--prior-faint", type=float, default=None,
                    help="detector_priors faint value (the dot filter's faint quota); default: the network's own value")
    ap.add_argument("--cls", action="append", metavar="KEY=VALUE", help="classification config override")
    ap.add_argument("--max-blob-rank", type=int, default=None)
    ap.add_argument("--results", type=Path, default=None)
    args = ap.parse_args()
    result = rescore(args.work, args.cls_ckpt, args.prior, parse_overrides(args.cls), args.max_blob_rank,
                     args.prior_faint)
    rates = ["0.125", "0.25", "0.5", "1", "2", "4", "8"]
    print(f"{'subset':<22}{'n':>4}{'stage-1 recall':>16}" + "".join(f"{r:>7}" for r in rates) + "    CPM  sens@0.5  FP/scan@0.5")
    for name, tables in result["detection"].items():
        s, rec = tables["stage1+2"], result["stage1_recall"].get(name, {})
        print(f"{name:<22}{s['n_nodules']:>4}{rec.get('recall', float('nan')):>16.2f}"
              + "".join(f"{s['froc'][r]:>7.2f}" for r in rates)
              + f"  {s['cpm']:.3f}  {s['sensitivity']:>8.2f}  {s['fp_per_scan']:>11.2f}")
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(result, indent=1) + "\n")
        print(f"results: {args.results}")


if __name__ == "__main__":
    main()
