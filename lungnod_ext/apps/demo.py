"""``lungnod demo``: what the product does, in one command.

By default (a minute on a laptop CPU): the shipped models (``bundles/*/models/model.pt``) run ``lungnod
detect`` on the real example scan kept in the package (LIDC-IDRI-0001, a lung slab, CC BY 3.0; never used
for training), or on ``--input`` (your DICOM folder / NIfTI), and the findings are set against the
example's readers: each reference nodule found or missed (probability, distance, Dice), and every other
reported finding (false positives; LIDC small marks are not counted).

``--train`` is the training route: generate the synthetic chest CT cohort as DICOM + LIDC XML (or take
``--input``), convert it, write a patient-level datalist, train both bundles briefly (MLflow tracking),
run ``lungnod detect`` on the held-out test cases and print stage 1 vs stage 1+2. It took 611 s on a
2-core CPU (session 40, classification 0.13.0's per-sample augmentation); ``--quick`` trains 4 epochs per bundle
instead of 25 / 30 (not timed since). Small models, few epochs: it shows the machinery, not the accuracy of a
full training (``lungnod train-models`` is the recipe of the shipped models).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from data_prep.errors import InputNotFoundError
from lungnod_ext.data.bundle_paths import REPO_ROOT
from lungnod_ext.apps.bundle_runs import bundle_run

SEG = REPO_ROOT / "bundles" / "lung_nodule_ct_segmentation"
CLS = REPO_ROOT / "bundles" / "lung_nodule_ct_classification"

# CPU-sized settings (the bundles' defaults are the reference design: ResNet-50, 224 px, 50 epochs ...)
SEG_DEMO = {"network_def#backbone": "resnet18", "patch_size": [96, 96], "spacing": [1.5, 1.5, -1],
            "infer_roi_size": [256, 256], "learning_rate": 0.001, "num_workers": 0}
SEG_INFER = {"network_def#backbone": "resnet18", "spacing": [1.5, 1.5, -1]}


def _step(msg: str) -> float:
    print(f"[demo] {msg}", flush=True)
    return time.perf_counter()


def prepare_data(out: Path, input_dir: str | None, cases: int, seed: int) -> Path:
    """Synthetic cohort (or ``input_dir``) -> ``<out>/converted`` with ``datalist.json``."""
    from data_prep.convert import ConvertOptions, convert_dicom_root
    from data_prep.datalist import write_datalist
    from data_prep.synth import CohortConfig, write_cohort

    if input_dir:
        source = Path(input_dir)
        if not source.exists():
            raise InputNotFoundError(source, "no such file or folder")
    else:
        source = out / "synthetic"
        if not (source / "dicom").exists():
            write_cohort(source, CohortConfig(n_cases=cases, seed=seed))
        source = source / "dicom"
    converted = out / "converted"
    report = convert_dicom_root(source, converted, ConvertOptions(workers=2, progress=False))
    n = len(report.converted) + len(report.reused)
    if n < 3:
        raise InputNotFoundError(source, f"the demo needs at least 3 CT series with nodule reads, found {n}")
    write_datalist(converted, n_folds=min(5, n), val_fold=0, test_fold=1, seed=seed)
    return converted


def run_training_demo(args) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    tracking = {"tracking": "mlflow", "tracking_uri": f"sqlite:///{out / 'mlruns.db'}", "experiment_name": "lungnod_demo"}
    seg_epochs, cls_epochs = (4, 4) if args.quick else (25, 30)

    t = _step("1/5 data: synthetic cohort -> DICOM -> NIfTI + consensus masks + datalist" if not args.input
              else f"1/5 data: {args.input} -> NIfTI + masks + datalist")
    converted = prepare_data(out, args.input, 6 if args.quick else args.cases, args.seed)
    datalist = json.loads((converted / "datalist.json").read_text())
    print(f"       {len(datalist['training'])} training / {len(datalist['validation'])} validation / "
          f"{len(datalist['testing'])} test cases ({time.perf_counter() - t:.0f} s)")

    t = _step(f"2/5 train the segmentation bundle ({seg_epochs} epochs, ResNet-18 encoder on CPU)")
    seg_models = out / "models" / "segmentation"
    bundle_run(SEG, "training", ["configs/train.json"],
                {**SEG_DEMO, **tracking, "dataset_dir": str(converted), "output_dir": str(out / "runs" / "segmentation"),
                 "ckpt_dir": str(seg_models), "epochs": seg_epochs, "val_interval": max(1, seg_epochs // 4)},
                logs / "segmentation_train.log")
    print(f"       done ({time.perf_counter() - t:.0f} s)")

    t = _step("3/5 candidates on the training cases -> patches (hard negatives) -> train the classification bundle")
    from lungnod_ext.apps.patch_dataset import build_patch_dataset
    from lungnod_ext.apps.pipeline import run_bundle_inference

    train_items = [{"image": str(converted / e["image"])} for e in datalist["training"] + datalist["validation"]]
    cand_dir = out / "runs" / "train_candidates"
    run_bundle_inference(SEG, ["configs/inference.json"], train_items, cand_dir, seg_models / "model.pt",
                         {**SEG_INFER, "write_overlays": False})
    patches = out / "patches"
    build_patch_dataset(converted, patches, candidates_dir=cand_dir, seed=args.seed)
    cls_models = out / "models" / "classification"
    bundle_run(CLS, "training", ["configs/train.json"],
                {**tracking, "dataset_dir": str(patches), "output_dir": str(out / "runs" / "classification"),
                 "ckpt_dir": str(cls_models), "epochs": cls_epochs, "num_workers": 0},
                logs / "classification_train.log")
    print(f"       done ({time.perf_counter() - t:.0f} s)")

    t = _step("4/5 lungnod detect on the held-out test cases")
    from lungnod_ext.metrics.detection_evaluation import evaluate_pipeline, format_table
    from lungnod_ext.apps.pipeline import PipelineConfig, detect

    test_list = out / "runs" / "test_datalist.json"
    test_list.write_text(json.dumps({"testing": [{"image": str(converted / e["image"])} for e in datalist["testing"]]}))
    report_dir = out / "report"
    summary = detect(test_list, report_dir, PipelineConfig(seg_ckpt=seg_models / "model.pt",
                                                           cls_ckpt=cls_models / "model.pt", seg_overrides=SEG_INFER))
    print(f"       {sum(c['n_nodules'] for c in summary['cases'])} nodule(s) reported in {len(summary['cases'])} "
          f"case(s) ({time.perf_counter() - t:.0f} s)")

    _step("5/5 evaluation: stage 1 (segmentation) vs stage 1+2 (segmentation + classifier)")
    result = evaluate_pipeline(report_dir, converted)
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(format_table(result))
    print(f"\nreport:      {report_dir / 'report.html'}")
    print(f"metrics:     {out / 'metrics.json'}")
    print(f"models:      {seg_models / 'model.pt'}, {cls_models / 'model.pt'}")
    print(f"MLflow runs: mlflow ui --backend-store-uri sqlite:///{out / 'mlruns.db'}")
    print(f"your data:   lungnod detect <DICOM folder> --out <dir> --seg-ckpt {seg_models / 'model.pt'} "
          f"--cls-ckpt {cls_models / 'model.pt'} --seg network_def#backbone=resnet18 --seg 'spacing=[1.5,1.5,-1]'")
    return 0


EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "example_data"
EXAMPLE = EXAMPLE_DIR / "LIDC-IDRI-0001_slab.json"


def _example_reference() -> dict:
    return json.loads(EXAMPLE.read_text())


def compare_with_readers(nodules: list[dict], candidates: list[dict], reference: dict, labels_path=None,
                         instance_path=None) -> dict:
    """Reported nodules vs the example's reference: per reference nodule the nearest reported one within
    its radius (LUNA16 rule); other reported nodules are false positives unless within 5 mm of a LIDC point mark
    (a < 3 mm nodule or a non-nodule: LUNA16's irrelevant findings, listed in the example's ``small_marks``)."""
    import numpy as np

    rows, used = [], set()
    for ref in reference["nodules"]:
        c = np.asarray(ref["centre_lps_mm"])
        hits = sorted(((float(np.linalg.norm(np.asarray(n["centre_lps"]) - c)), n) for n in nodules),
                      key=lambda t: t[0])
        hits = [(d, n) for d, n in hits if d < ref["diameter_mm"] / 2]
        best = hits[0] if hits else None
        near = [(float(np.linalg.norm(np.asarray(n["centre_lps"]) - c)), n) for n in candidates]
        cand = min(near, key=lambda t: t[0]) if near else None
        used |= {int(n["id"]) for _, n in hits}
        rows.append({"reference": ref, "found": best is not None,
                     "probability": best[1]["probability"] if best else None,
                     "distance_mm": best[0] if best else None, "diameter_mm": best[1].get("diameter_mm") if best else None,
                     "axes_mm": ([best[1]["long_axis_mm"], best[1]["short_axis_mm"]]
                                 if best and best[1].get("long_axis_mm") is not None else None),
                     "attenuation": best[1].get("attenuation") if best else None,
                     "nearest_candidate": {"distance_mm": cand[0], "probability": cand[1].get("probability")} if cand else None})
    marks = [np.asarray(m["centre_lps_mm"]) for m in reference.get("small_marks", [])]
    others = [n for n in nodules if int(n["id"]) not in used]
    at_marks = [n for n in others if any(np.linalg.norm(np.asarray(n["centre_lps"]) - m) <= 5.0 for m in marks)]
    fps = [n for n in others if n not in at_marks]
    return {"nodules": rows, "false_positives": fps, "at_small_marks": at_marks}


def run_shipped_demo(args) -> int:
    """The shipped models on the example scan (or ``--input``), compared with the readers when known."""
    from lungnod_ext.apps.pipeline import CLS_BUNDLE, SEG_BUNDLE, PipelineConfig, detect
    from lungnod_ext.inference.attenuation import reader_attenuation

    for bundle in (SEG_BUNDLE, CLS_BUNDLE):
        if not (bundle / "models" / "model.pt").is_file():
            raise InputNotFoundError(bundle / "models" / "model.pt",
                                     "shipped model missing (a partial clone?); `lungnod demo --train` trains a small one")
    out = Path(args.out).resolve()
    source = Path(args.input) if args.input else EXAMPLE_DIR / _example_reference()["image"]
    if args.input and not source.exists():
        raise InputNotFoundError(source, "no such file or folder")
    if args.input:
        t = _step(f"1/2 lungnod detect on {source} with the shipped models")
    else:
        ref = _example_reference()
        t = _step("1/2 lungnod detect with the shipped models on the example scan: LIDC-IDRI-0001 (TCIA, CC BY 3.0), "
                  "a 170 mm lung slab, never used for training")
    report_dir = out / "report"
    summary = detect(source, report_dir, PipelineConfig())
    for case in summary["cases"]:
        print(f"       {case['case']}: {case['n_nodules']} nodule(s) reported from {case['n_candidates']} candidate(s)")
    print(f"       ({time.perf_counter() - t:.0f} s)")
    if not args.input:
        _step("2/2 against the example's readers (LIDC XML, 50 % consensus)")
        case = summary["cases"][0]
        cands = json.loads((report_dir / case["folder"] / f"{case['case']}_candidates.json").read_text())["candidates"]
        result = compare_with_readers(case["nodules"], cands, ref)
        for row in result["nodules"]:
            r = row["reference"]
            what = f"nodule {r['nodule_id']} ({r['diameter_mm']:.1f} mm, {r['n_readers']} readers)"
            if row["found"]:
                axes = ""
                if row["axes_mm"] and r.get("axes_mm"):
                    axes = (f"; long x short axis {row['axes_mm'][0]:.1f} x {row['axes_mm'][1]:.1f} mm (readers' "
                            f"{r['axes_mm'][0]:.1f} x {r['axes_mm'][1]:.1f})")
                readers_kind = reader_attenuation(r.get("texture_median"))
                kind = f"; {row['attenuation']} (readers' texture: {readers_kind})" if row["attenuation"] and readers_kind else ""
                print(f"       FOUND   {what}: probability {row['probability']:.2f}, centre {row['distance_mm']:.1f} mm "
                      f"from the readers', {row['diameter_mm']:.1f} mm across{axes}{kind}")
            else:
                near = row["nearest_candidate"]
                extra = (f" (nearest candidate {near['distance_mm']:.0f} mm away, probability {near['probability']:.2f})"
                         if near else "")
                print(f"       MISSED  {what}{extra}")
        print(f"       other findings reported: {len(result['false_positives'])} false positive(s)"
              + (f", {len(result['at_small_marks'])} at LIDC point marks (< 3 mm nodules or non-nodules: not counted, "
                 "as LUNA16)" if result["at_small_marks"] else ""))
        (out / "comparison.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    else:
        _step("2/2 done (no reader marks for your data: `lungnod evaluate` scores a converted LIDC-style folder)")
    print(f"\nreport:  {report_dir / 'report.html'}  (overlays with probabilities: {report_dir}/<case>/overlays/)")
    print("train your own: lungnod demo --train   |   the shipped models' recipe: lungnod train-models --out <dir>")
    return 0


def run_demo(args) -> int:
    """``--train``: :func:`run_training_demo`; otherwise :func:`run_shipped_demo`."""
    return run_training_demo(args) if getattr(args, "train", False) or args.quick else run_shipped_demo(args)
