"""Trained models, scored on scans they never saw: leave one LIDC-IDRI series out.

    python tests/benchmarks/bench_models.py --fold LIDC-IDRI-0001=bundles [--fold LIDC-IDRI-0002=/runs/B/export ...]

A fold is ``<held-out patient>=<models>``: ``bundles`` (the shipped ``bundles/*/models/model.pt``),
``bundles-fast`` (the shipped fast pair, ``model_fast.pt`` with the ``inference_fast.json`` overlays) or a
``lungnod train-models`` output / its ``export`` folder (``segmentation/model.pt`` +
``classification/model.pt``). The models must have been trained without that patient (the recipe's
``--hold-out``); its ``recipe.json`` ``detector_priors`` go to the classification bundle with them. For each fold, ``lungnod detect`` (both bundles' default inference configs, as a user
runs them) on:

* the held-out real series, whole (the readers' nodules; LIDC point marks, < 3 mm nodules and non-nodules,
  ignored as LUNA16 ignores them: before session 33 a hit on a non-nodule mark was a false positive);
* ``--inserted`` copies of that series' lungs with simulated nodules imaged in (3-30 mm, every type,
  no scanner augmentation, a seed never used for training), its real nodules ignored there.

``--noise-hu S`` adds S HU of correlated noise to all of them first (``bench_dose.py``'s low-dose model;
the same nodules and references), e.g. 40 HU: LIDC-IDRI-0001's lung noise 16 -> 37 HU
(``bench_dose.lung_noise_hu``), roughly a fifth of its dose; ``--sharpen A`` first passes them through a sharper
reconstruction kernel (``bench_dose.sharper``, an in-plane unsharp mask of amount A; the training cohort's go to 1.0).
``--slice-profile-mm T`` before both makes them a thicker reconstruction on the same grid (``bench_dose.thicker``: the
slices blurred along z to a T mm slice profile, as the cohort's augmentation does), e.g. LIDC-IDRI-0002's 1.25 mm
slices seen as 2.5 mm ones: an overlapping reconstruction, whose datalist entries give ``slice_thickness_mm`` T as
its DICOM would (``--thickness-unknown``: left out, the dot filter takes the spacing).
The copies are crops of the scan to its lungs + 15 mm, as the training volumes are; ``--full-fov`` pastes each
copy back into the whole real scan first (:func:`full_fov_versions`), so the copies come at the field of view a
user's scan has (the segmenter's CLAHE and resampling run before its own lung crop, so the two differ a little).

Printed and written to ``tests/benchmarks/results/models.json``: FROC at 0.125-8 FP/scan, CPM,
sensitivity and FP/scan at the default threshold (0.5), stage 1 (segmentation max probability) vs stage
1+2 (classifier probability), by subset (all real nodules, >= 3 readers, inserted 3-6 mm / >= 6 mm), and
per-nodule Dice against the reference (the readers' 50 % consensus; the inserted nodule's own mask) by
size. Nothing here is a test: it prints measured figures.
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
LIDC = (REPO / ".." / "shared" / "data" / "lidc").resolve()
RESULTS = Path(__file__).resolve().parent / "results" / "models.json"
TEST_SEED = 1000


def _models(spec: str) -> tuple[Path | None, Path | None]:
    if spec in ("bundles", "bundles-fast"):
        return None, None
    root = Path(spec)
    if (root / "export").is_dir():
        root = root / "export"
    return root / "segmentation" / "model.pt", root / "classification" / "model.pt"


def _recipe_priors(cls_ckpt: Path | None) -> dict:
    """The ``detector_priors`` of the ``lungnod train-models`` output holding ``cls_ckpt`` (its
    ``recipe.json``, beside the ``export`` folder); {} for the shipped models (``cls_ckpt`` None: the
    classification bundle's config has theirs)."""
    if cls_ckpt is None:
        return {}
    export = cls_ckpt.parents[1]
    for recipe in (export / "recipe.json", export.parent / "recipe.json"):
        if recipe.is_file():
            return json.loads(recipe.read_text()).get("detector_priors") or {}
    return {}


def held_out_copies(patient: str, converted: Path, inserted: Path, n_copies: int, options) -> tuple[str, list[str]]:
    """The held-out series converted into ``converted`` and ``n_copies`` copies of it with nodules imaged in
    (``data_prep.training_cohort.make_copies`` with ``options``, numbered 1..n) in ``inserted``, each made only
    when missing -> (the series' case id, the copies' case ids)."""
    from data_prep.convert import ConvertOptions, convert_dicom_root
    from data_prep.training_cohort import copy_name, make_copies, write_copy_marks, write_tables

    if not (converted / "nodules.csv").is_file():
        convert_dicom_root(LIDC / patient, converted, ConvertOptions(workers=2, progress=False))
    case = next(p.name[:-7] for p in (converted / "images").glob("*.nii.gz"))
    names = [copy_name(case, i) for i in range(1, n_copies + 1)]
    if not all((inserted / "images" / f"{n}.nii.gz").is_file() for n in names):
        write_tables(inserted, make_copies(converted, case, inserted, list(range(1, n_copies + 1)), options))
    # rewritten each run: a folder made before the copies carried the non-nodule marks (session 33) scores as today
    write_copy_marks(converted, case, inserted, names)
    return case, names


def reference_subsets(group: str) -> dict:
    """The scored subsets of a fold's ``real`` or ``inserted`` references: name -> keep(reference)."""
    if group == "real":
        return {"real: all contoured": lambda r: True,
                "real: >= 3 readers": lambda r: (r["n_readers"] or 0) >= 3}
    return {"inserted: all": lambda r: r["source"] == "inserted",
            "inserted: 3-6 mm": lambda r: r["source"] == "inserted" and r["diameter_mm"] < 6,
            "inserted: >= 6 mm": lambda r: r["source"] == "inserted" and r["diameter_mm"] >= 6}


def _stage_tables(detections, refs, marks, subsets, threshold):
    from lungnod_ext.metrics.model_evaluation import score_stage, subset_references

    out = {}
    for name, keep in subsets.items():
        rs = subset_references(refs, keep, marks)
        if not any(not r.get("exclude") for v in rs.values() for r in v):
            continue
        out[name] = {stage: score_stage(detections, rs, key, threshold)
                     for stage, key in (("stage1", "max_prob"), ("stage1+2", "cls_prob"))}
    return out


def noisy_versions(images: list[Path], folder: Path, sd_hu: float, sharpen: float = 0.0,
                   slice_mm: float = 0.0) -> list[Path]:
    """``images`` as a thicker reconstruction (``bench_dose.thicker``: a ``slice_mm`` slice profile on the same grid,
    when > 0), through a sharper kernel (``bench_dose.sharper`` with amount ``sharpen``, when > 0) and then with
    ``sd_hu`` of correlated noise added (``bench_dose.noisier``: a lower dose; none at 0), written once to
    ``folder`` under their own names (the case ids stay, so the reference tables still score them)."""
    import nibabel as nib

    from bench_dose import noisier, sharper, thicker

    out = []
    for path in images:
        dest = folder / path.name
        if not dest.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            image = nib.load(path)
            if slice_mm > 0:
                image = thicker(image, slice_mm)
            if sharpen > 0:
                image = sharper(image, sharpen)
            nib.save(noisier(image, sd_hu) if sd_hu > 0 else image, dest)
        out.append(dest)
    return out


def full_fov_versions(real_image: Path, copies: list[Path], copy_instances: Path, folder: Path) -> list[Path]:
    """Each copy (a crop of ``real_image`` to its lungs, the same voxel grid: spacing and axes) pasted back into
    the whole real scan at its place, written once to ``folder/images`` under its own name; its instance mask
    (``copy_instances/<name>``) likewise into ``folder/instances`` (zeros outside the crop), so the references
    score it unchanged. Returns the image paths."""
    from data_prep.nifti_io import read_nifti, write_nifti

    full, geometry = read_nifti(real_image)
    out = []
    for path in copies:
        name = path.name
        dest = folder / "images" / name
        if not dest.is_file():
            crop, cgeo = read_nifti(path)
            start = np.rint(geometry.world_to_voxel(np.asarray(cgeo.origin, dtype=float))).astype(int)   # (i, j, k)
            if not (np.allclose(cgeo.spacing, geometry.spacing) and np.allclose(cgeo.direction, geometry.direction)):
                raise ValueError(f"{path}: not a crop of {real_image} (another voxel grid)")
            box = tuple(slice(int(a), int(a) + n) for a, n in zip(start[::-1], crop.shape))   # (z, y, x)
            # the instances first: the image marks a finished copy
            for src, sub, base in ((copy_instances / name, "instances", np.zeros(full.shape, np.uint16)),
                                   (path, "images", full)):
                data, _ = read_nifti(src)
                pasted = base.copy()
                pasted[box] = data
                (folder / sub).mkdir(parents=True, exist_ok=True)
                write_nifti(folder / sub / name, pasted.astype(data.dtype), geometry)
        out.append(dest)
    return out


def run_fold(patient: str, models: str, work: Path, n_inserted: int, threshold: float,
             seg_overrides: dict | None = None, noise_hu: float = 0.0, sharpen: float = 0.0,
             full_fov: bool = False, slice_mm: float = 0.0, thickness_known: bool = True) -> dict:
    from data_prep.nifti_io import read_nifti
    from data_prep.training_cohort import CohortOptions
    from lungnod_ext.metrics.model_evaluation import (per_nodule_axes, per_nodule_dice, read_references,
                                                       read_small_marks, size_band)
    from lungnod_ext.apps.pipeline import PipelineConfig, detect

    converted, inserted = work / "converted", work / "inserted"
    case, names = held_out_copies(patient, converted, inserted, n_inserted, CohortOptions(augment=False, seed=TEST_SEED))

    seg_ckpt, cls_ckpt = _models(models)
    images = [converted / "images" / f"{case}.nii.gz"] + [inserted / "images" / f"{n}.nii.gz" for n in names]
    detect_dir = work / "detect"
    inserted_instances = inserted / "instances"
    if full_fov:
        full = work / "full_fov"
        images = images[:1] + full_fov_versions(images[0], images[1:], inserted_instances, full)
        inserted_instances, detect_dir = full / "instances", work / "detect_full_fov"
    if noise_hu > 0 or sharpen > 0 or slice_mm > 0:
        version = (("full_fov_" if full_fov else "") + f"noise{noise_hu:g}" + (f"_sharpen{sharpen:g}" if sharpen > 0 else "")
                   + (f"_slice{slice_mm:g}" if slice_mm > 0 else ""))
        images = noisy_versions(images, work / version, noise_hu, sharpen, slice_mm)
        detect_dir = work / f"detect_{version}"
    # a thicker reconstruction's slices are slice_mm thick, as a scanner's SliceThickness would say (the dot filter's
    # slice profile starts from it); --thickness-unknown leaves it out, as a NIfTI without it (segmentation 0.15.0)
    thickness = {"slice_thickness_mm": slice_mm} if slice_mm > 0 and thickness_known else {}
    (work / "test_datalist.json").write_text(json.dumps({"testing": [{"image": str(i), **thickness} for i in images]}))
    t = time.perf_counter()
    priors = _recipe_priors(cls_ckpt)
    cfg = PipelineConfig(seg_ckpt=seg_ckpt, cls_ckpt=cls_ckpt, overlays=False, explain=False,
                         probability_threshold=threshold, seg_overrides=dict(seg_overrides or {}),
                         cls_overrides={"detector_priors": priors} if priors else {})
    summary = detect(work / "test_datalist.json", detect_dir, cfg.use_fast_models() if models == "bundles-fast" else cfg)
    seconds = time.perf_counter() - t

    result: dict = {"held_out": patient, "models": models, "case": case, "n_inserted_scans": n_inserted,
                    "added_noise_hu": noise_hu, "sharpen": sharpen, "full_fov": full_fov, "slice_profile_mm": slice_mm,
                    "slice_thickness_in_datalist": thickness.get("slice_thickness_mm"),
                    "detector_priors": priors or "the classification bundle's",
                    "detect_seconds": round(seconds, 1), "pipeline_seconds": summary["seconds"]}
    for group, table_dir, cases in (("real", converted, [case]), ("inserted", inserted, names)):
        if not cases:
            continue
        dets = {c: json.loads((detect_dir / c / f"{c}_candidates.json").read_text())["candidates"] for c in cases}
        for cands in dets.values():
            for c in cands:
                c.setdefault("cls_prob", c["max_prob"])
        refs = read_references(table_dir / "nodules.csv", cases)
        marks = read_small_marks(table_dir / "small_marks.csv", cases)
        subsets = reference_subsets(group)
        result.setdefault("detection", {}).update(_stage_tables(dets, refs, marks, subsets, threshold))
        dice_rows = []
        for c in cases:
            labels, geometry = read_nifti(detect_dir / c / f"{c}_labels.nii.gz")
            inst_dir = table_dir / "instances" if group == "real" else inserted_instances
            instances, _ = read_nifti(inst_dir / f"{c}.nii.gz")
            ids = [r["nodule_id"] for r in refs.get(c, []) if group == "real" or r["source"] == "inserted"]
            dice = per_nodule_dice(labels, instances, ids)
            axes = per_nodule_axes(labels, instances, ids, geometry.spacing[::-1])
            by_id = {r["nodule_id"]: r for r in refs.get(c, [])}
            for nid, d in dice.items():
                r = by_id[nid]
                a = axes.get(nid, {"reference": None, "predicted": None})
                dice_rows.append({"case": c, "nodule_id": nid, "diameter_mm": round(r["diameter_mm"], 2),
                                  "size": size_band(r["diameter_mm"]), "type": r["type"], "n_readers": r["n_readers"],
                                  "dice": round(d, 4),
                                  "axes_mm_reference": None if a["reference"] is None else [round(v, 2) for v in a["reference"]],
                                  "axes_mm_predicted": None if a["predicted"] is None else [round(v, 2) for v in a["predicted"]]})
        result.setdefault("dice", {})[group] = dice_rows
    return result


def _print(result: dict) -> None:
    print(f"\n== held out {result['held_out']} (models: {result['models']}), {result['n_inserted_scans']} inserted scans")
    rates = ["0.125", "0.25", "0.5", "1", "2", "4", "8"]
    print(f"{'subset':<22}{'stage':<10}{'n':>4}" + "".join(f"{r:>7}" for r in rates) + f"{'CPM':>7}{'sens@0.5':>9}{'FP/scan':>9}")
    for name, stages in result["detection"].items():
        for stage, s in stages.items():
            print(f"{name:<22}{stage:<10}{s['n_nodules']:>4}" + "".join(f"{s['froc'][r]:>7.2f}" for r in rates)
                  + f"{s['cpm']:>7.3f}{s['sensitivity']:>9.2f}{s['fp_per_scan']:>9.2f}")
    for group, rows in result["dice"].items():
        by = {}
        for r in rows:
            by.setdefault(r["size"], []).append(r["dice"])
        print(f"per-nodule Dice, {group}: " + "; ".join(f"{k}: median {np.median(v):.2f} (n={len(v)})" for k, v in sorted(by.items())))
        if group == "real":
            for r in rows:
                ref, pred = r.get("axes_mm_reference"), r.get("axes_mm_predicted")
                axes = (f", long x short axis {pred[0]:.1f} x {pred[1]:.1f} mm (consensus {ref[0]:.1f} x {ref[1]:.1f})"
                        if ref and pred else "")
                print(f"   nodule {r['nodule_id']}: {r['diameter_mm']} mm, {r['n_readers']} readers, Dice {r['dice']:.3f}{axes}")
        pairs = [(r["axes_mm_predicted"], r["axes_mm_reference"]) for r in rows
                 if r.get("axes_mm_predicted") and r.get("axes_mm_reference") and r["dice"] >= 0.5]
        if pairs:
            err = np.array([(p[0] - q[0], p[1] - q[1], (p[0] + p[1]) / 2 - (q[0] + q[1]) / 2) for p, q in pairs])
            print(f"axes, {group}, outlined nodules (Dice >= 0.5, n={len(pairs)}): predicted - reference median "
                  f"long {np.median(err[:, 0]):+.1f} mm, short {np.median(err[:, 1]):+.1f} mm, mean axial diameter "
                  f"{np.median(err[:, 2]):+.1f} mm (median |error| {np.median(np.abs(err[:, 2])):.1f} mm)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fold", action="append", required=True, help="<held-out patient>=<bundles | train-models output>")
    ap.add_argument("--inserted", type=int, default=3, help="inserted-nodule copies of the held-out series (3)")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--work", default="/tmp/bench_models")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--seg", action="append", metavar="KEY=VALUE",
                    help="segmentation inference config override, e.g. inference_scales=[1,1.5]")
    ap.add_argument("--noise-hu", type=float, default=0.0,
                    help="correlated noise (HU) added to the held-out scan and its copies: a lower dose (bench_dose.py)")
    ap.add_argument("--sharpen", type=float, default=0.0,
                    help="a sharper reconstruction kernel first: unsharp-mask amount (bench_dose.sharper; cohort 0.3-1.0)")
    ap.add_argument("--slice-profile-mm", type=float, default=0.0,
                    help="a thicker reconstruction on the same grid: the slices blurred to this slice profile (mm; bench_dose.thicker)")
    ap.add_argument("--thickness-unknown", action="store_true",
                    help="with --slice-profile-mm: leave the versions' slice thickness out of the datalist (a NIfTI "
                         "without it; the dot filter then takes their slice spacing for it and blurs them again)")
    ap.add_argument("--full-fov", action="store_true",
                    help="paste the copies back into the whole real scan (a user's field of view) before detect")
    a = ap.parse_args()
    from lungnod_ext.apps.cli import parse_overrides
    results = {"command": " ".join(sys.argv), "folds": []}
    for fold in a.fold:
        patient, _, models = fold.partition("=")
        r = run_fold(patient, models or "bundles", Path(a.work) / patient, a.inserted, a.threshold, parse_overrides(a.seg),
                     a.noise_hu, a.sharpen, a.full_fov, a.slice_profile_mm, not a.thickness_unknown)
        _print(r)
        results["folds"].append(r)
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results).write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(f"\nresults: {a.results}")


if __name__ == "__main__":
    main()
