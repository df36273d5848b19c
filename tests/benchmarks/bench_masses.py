"""Masses (> 30 mm) and external scans: what the models report where a lung cancer is larger than a nodule.

    python tests/benchmarks/bench_masses.py --models bundles
    python tests/benchmarks/bench_masses.py --models bundles --external lung2.nii.gz=lung2_label.nii.gz
    python tests/benchmarks/bench_masses.py --models bundles --mass-mm 50,70 --copies 6   # beyond the recipe's masses
    python tests/benchmarks/bench_masses.py --models bundles --diaphragm                  # masses on the diaphragm

LIDC-IDRI nodules are 3-30 mm, and so are the benchmark copies of ``bench_models.py``; a user's scan may hold a
lung cancer of 3-5 cm, often against the chest wall. Per ``--models`` (``bundles``, ``bundles-fast`` or a
``lungnod train-models`` output, as ``bench_models.py`` takes them) this runs ``lungnod detect`` (default configs) on:

* ``--copies`` copies of the held-out series (``--held-out``, default LIDC-IDRI-0001, the shipped models' test
  patient) with 2-3 masses of 30-50 mm (``--mass-mm LOW,HIGH``; 1-2 of them from 50 mm up) imaged in (every
  nodule type, no scanner augmentation, seed 3000: never used for training), its real nodules ignored; with
  ``--diaphragm`` all of them juxta-pleural and sitting on the diaphragm's dome (soft tissue directly below);
* optional ``--external IMAGE=LABEL`` pairs (NIfTI, HU; each connected component of the label > 0 a lesion).

Per lesion: a hit is a candidate centre within its radius (LUNA16); printed and written (``--results``,
keyed by the models and data): the best hit's segmentation and classifier probabilities, reported at
``--threshold`` or not, its Dice, and the false positives at the threshold per scan. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
RESULTS = Path(__file__).resolve().parent / "results" / "masses.json"
MASS_SEED = 3000
MASS_BANDS = ((30.0, 50.0, 1.0),)


def _label_references(label_path: Path) -> tuple[list[dict], np.ndarray]:
    """Lesions of a label NIfTI: each connected component of label > 0 -> (references, instance mask)."""
    from scipy import ndimage as ndi

    from data_prep.masks import equivalent_diameter_mm
    from data_prep.nifti_io import read_nifti

    label, geometry = read_nifti(label_path)
    instances, n = ndi.label(np.asarray(label) > 0)
    refs = []
    for i in range(1, n + 1):
        k, j, ii = np.nonzero(instances == i)
        centre = geometry.voxel_to_world(np.array([ii.mean(), j.mean(), k.mean()]))
        volume = float(k.size * geometry.voxel_volume_mm3)
        refs.append({"nodule_id": i, "centre_lps": [float(v) for v in centre],
                     "diameter_mm": float(equivalent_diameter_mm(volume)), "source": "external", "type": "lesion",
                     "n_readers": None})
    return refs, instances


def score_case(candidates: list[dict], refs: list[dict], ignored: list[dict], labels_zyx, instances_zyx,
               threshold: float) -> tuple[list[dict], int]:
    """Per reference lesion its best hit; and the candidates at ``threshold`` that hit no lesion and no
    ``ignored`` reference (the scan's own nodules, LIDC point marks) -> (rows, false positives)."""
    from lungnod_ext.metrics.model_evaluation import per_nodule_dice

    def hits(c, r):
        return np.linalg.norm(np.asarray(c["centre_lps"]) - np.asarray(r["centre_lps"])) < r["diameter_mm"] / 2

    dice = per_nodule_dice(labels_zyx, instances_zyx, [r["nodule_id"] for r in refs])
    rows = []
    for r in refs:
        hit = [c for c in candidates if hits(c, r)]
        best = max(hit, key=lambda c: c.get("cls_prob", c["max_prob"]), default=None)
        rows.append({"nodule_id": r["nodule_id"], "type": r["type"], "diameter_mm": round(r["diameter_mm"], 1),
                     "candidate": best is not None,
                     "max_prob": None if best is None else round(float(best["max_prob"]), 4),
                     "cls_prob": None if best is None else round(float(best.get("cls_prob", best["max_prob"])), 4),
                     "reported": best is not None and best.get("cls_prob", best["max_prob"]) >= threshold,
                     "dice": round(dice.get(r["nodule_id"], 0.0), 3)})
    fp = sum(1 for c in candidates if c.get("cls_prob", c["max_prob"]) >= threshold
             and not any(hits(c, r) for r in refs + ignored))
    return rows, fp


def copy_items(inserted: Path, names: list[str], group: str) -> list[dict]:
    """The scans of ``held_out_copies`` as :func:`detect_and_score` items: the inserted lesions are the
    references; the series' own nodules and LIDC point marks (< 3 mm nodules, non-nodules) are ignored (neither hits
    nor false positives)."""
    from lungnod_ext.metrics.model_evaluation import read_references, read_small_marks

    refs = read_references(inserted / "nodules.csv", names)
    marks = read_small_marks(inserted / "small_marks.csv", names)
    return [{"name": n, "image": inserted / "images" / f"{n}.nii.gz", "group": group,
             "refs": [r for r in refs.get(n, []) if r["source"] == "inserted"],
             "ignored": [r for r in refs.get(n, []) if r["source"] != "inserted"] + marks.get(n, []),
             "instances": inserted / "instances" / f"{n}.nii.gz"} for n in names]


def detect_and_score(items: list[dict], models: str, threshold: float, seg: list[str], work: Path,
                     groups=("inserted masses", "external")) -> dict:
    """``lungnod detect`` (default configs, ``seg`` overrides) on every item's image, each lesion scored by
    :func:`score_case`; prints a row per lesion and a summary per group -> the results dict (models,
    threshold, detect_seconds, scans, summary)."""
    from data_prep.nifti_io import read_nifti
    from lungnod_ext.apps.cli import parse_overrides
    from lungnod_ext.apps.pipeline import PipelineConfig, detect
    from bench_models import _models, _recipe_priors

    seg_ckpt, cls_ckpt = _models(models)
    priors = _recipe_priors(cls_ckpt)
    overrides = parse_overrides(seg)       # JSON values, as lungnod detect --seg takes them
    cfg = PipelineConfig(seg_ckpt=seg_ckpt, cls_ckpt=cls_ckpt, overlays=False, explain=False,
                         probability_threshold=threshold, seg_overrides=overrides,
                         cls_overrides={"detector_priors": priors} if priors else {})
    if models == "bundles-fast":
        cfg.use_fast_models()
    work.mkdir(parents=True, exist_ok=True)                  # --copies 0: only external scans, nothing made yet
    datalist = work / "datalist.json"
    datalist.write_text(json.dumps({"testing": [{"image": str(i["image"])} for i in items]}))
    out = work / "detect"
    t = time.perf_counter()
    detect(datalist, out, cfg)
    seconds = time.perf_counter() - t

    result = {"models": models, "threshold": threshold, "detect_seconds": round(seconds, 1), "scans": {}}
    for it in items:
        case = Path(str(it["image"])).name[:-7]
        cands = json.loads((out / case / f"{case}_candidates.json").read_text())["candidates"]
        labels, _ = read_nifti(out / case / f"{case}_labels.nii.gz")
        inst = it["instances"] if isinstance(it["instances"], np.ndarray) else read_nifti(it["instances"])[0]
        rows, fp = score_case(cands, it["refs"], it["ignored"], labels, inst, threshold)
        for r, ref in zip(rows, it["refs"]):
            if "mean_hu" in ref:
                r["mean_hu"] = ref["mean_hu"]
        result["scans"][it["name"]] = {"group": it["group"], "lesions": rows, "fp_at_threshold": fp}
    print(f"models {models}: {seconds:.0f} s for {len(items)} scans (threshold {threshold})")
    print(f"{'scan':<32}{'lesion':<30}{'candidate':>10}{'seg p':>8}{'cls p':>8}{'reported':>9}{'Dice':>7}")
    for name, s in result["scans"].items():
        for r in s["lesions"]:
            lesion = f"{r['type']} {r['diameter_mm']} mm" + (f" {r['mean_hu']:.0f} HU" if "mean_hu" in r else "")
            seg_p, cls_p = ("-" if r[k] is None else r[k] for k in ("max_prob", "cls_prob"))
            print(f"{name:<32}{lesion:<30}{str(r['candidate']):>10}{seg_p:>8}{cls_p:>8}{str(r['reported']):>9}"
                  f"{r['dice']:>7.2f}")
        print(f"{name:<32}false positives at {threshold}: {s['fp_at_threshold']}")
    for group in groups:
        rows = [r for s in result["scans"].values() if s["group"] == group for r in s["lesions"]]
        scans = [s for s in result["scans"].values() if s["group"] == group]
        if rows:
            summary = {"lesions": len(rows), "candidate": sum(r["candidate"] for r in rows),
                       "reported": sum(r["reported"] for r in rows),
                       "dice_median": float(np.median([r["dice"] for r in rows])),
                       "fp_per_scan": float(np.mean([s["fp_at_threshold"] for s in scans]))}
            result.setdefault("summary", {})[group] = summary
            print(f"{group}: reported {summary['reported']} of {summary['lesions']} (a candidate for "
                  f"{summary['candidate']}), Dice median {summary['dice_median']:.2f}, "
                  f"{summary['fp_per_scan']:.1f} false positives per scan")
    return result


def copies_parser(description: str, work: str, results: Path) -> argparse.ArgumentParser:
    """The options of a benchmark over copies of a held-out series (--models, --held-out, --copies,
    --threshold, --seg, --work, --results); the caller adds what it draws into the copies."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--models", default="bundles",
                    help="bundles | bundles-fast (the shipped fast pair) | a lungnod train-models output")
    ap.add_argument("--held-out", default="LIDC-IDRI-0001", help="series the models never saw (the copies' background)")
    ap.add_argument("--copies", type=int, default=6)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--seg", action="append", default=[], metavar="KEY=VALUE", help="segmentation config override")
    ap.add_argument("--work", default=work)
    ap.add_argument("--results", default=str(results))
    return ap


def parse_range(ap: argparse.ArgumentParser, option: str, text: str, hint: str) -> tuple[float, float]:
    """``LOW,HIGH`` of a range option -> (low, high); anything else, or LOW above HIGH, is the usage error
    ``<option> '<text>': <hint>`` (exit 2)."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        ap.error(f"{option} {text!r}: {hint}")
    if low > high:
        ap.error(f"{option} {text!r}: LOW is above HIGH")
    return low, high


def write_keyed_result(path, key: str, result: dict) -> None:
    """``result`` under ``key`` in the JSON file ``path`` (created if missing; the other keys are kept)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(path.read_text()) if path.is_file() else {}
    previous[key] = result
    path.write_text(json.dumps(previous, indent=1) + "\n")
    print(f"results: {path}")


def main() -> None:
    from data_prep.training_cohort import CohortOptions
    from bench_models import held_out_copies

    ap = copies_parser(__doc__.splitlines()[0], "/tmp/bench_masses", RESULTS)
    ap.add_argument("--mass-mm", default="30,50", metavar="LOW,HIGH",
                    help="diameters of the imaged-in masses, log-uniform (30,50: the recipe's masses)")
    ap.add_argument("--diaphragm", action="store_true",
                    help="every mass juxta-pleural, on the lungs' floor (soft tissue directly below: the diaphragm, "
                         "at times the heart)")
    ap.add_argument("--external", action="append", default=[], metavar="IMAGE=LABEL")
    args = ap.parse_args()

    low, high = parse_range(ap, "--mass-mm", args.mass_mm, "give LOW,HIGH in mm, e.g. 50,70")
    bands = ((low, high, 1.0),)
    band_name = "" if bands == MASS_BANDS else f"{low:g}-{high:g} mm"    # the recipe's band keeps its old names
    if args.diaphragm:
        band_name = f"on the diaphragm {low:g}-{high:g} mm"
    work = Path(args.work)
    converted = work / args.held_out / "converted"
    site = {"diaphragm_share": 1.0, "type_weights": (("juxta_pleural", 1.0),)} if args.diaphragm else {}
    inserted = work / args.held_out / ("masses" + ("_diaphragm" if args.diaphragm else "")
                                       + (f"_{low:g}_{high:g}" if band_name else ""))
    items = []
    if args.copies:
        _, names = held_out_copies(args.held_out, converted, inserted, args.copies,
                                   CohortOptions(augment=False, seed=MASS_SEED, nodules=(2, 3) if low < 50 else (1, 2),
                                                 size_bands=bands, **site))
        items += copy_items(inserted, names, "inserted masses")
    for pair in args.external:
        image, _, label = pair.partition("=")
        if not label:
            ap.error(f"--external {pair!r}: give IMAGE=LABEL")
        refs, instances = _label_references(Path(label))
        items.append({"name": Path(image).name.split(".")[0], "image": Path(image), "group": "external",
                      "refs": refs, "ignored": [], "instances": instances, "label": label})

    result = detect_and_score(items, args.models, args.threshold, args.seg, work)
    result = {"command": " ".join(sys.argv), "mass_mm": [low, high], **result}
    key = args.models + (f" {' '.join(args.seg)}" if args.seg else "") + ("" if not args.external else " +external") \
        + (f" masses {band_name}" if band_name else "")
    write_keyed_result(args.results, key, result)


if __name__ == "__main__":
    main()
