"""``lungnod demo``: the whole product on the built-in synthetic cohort (or the user's DICOM folder).

1. data: generate the synthetic chest CT cohort as DICOM + LIDC XML (or take ``--input``), convert it
   with data_prep, write a patient-level datalist (train / validation / test);
2. train the segmentation bundle briefly (``monai.bundle run training``, MLflow tracking);
3. run it over the training cases to collect candidates, build the classification patches (reference
   nodules, random lung, and the segmenter's false positives as hard negatives) and train the
   classification bundle briefly (MLflow tracking);
4. run ``lungnod detect`` on the held-out test cases, evaluate stage 1 and stage 1+2 against the
   reference, print the table and where everything is.

The default size took 4.5 minutes on a 2-core CPU (measured); ``--quick`` about 2 minutes (a smoke test).
Small models and few epochs: the numbers show the machinery works, not the accuracy of a full training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from data_prep.errors import InputNotFoundError
from lungnod_ext.bundle_paths import REPO_ROOT

SEG = REPO_ROOT / "bundles" / "lung_nodule_ct_segmentation"
CLS = REPO_ROOT / "bundles" / "lung_nodule_ct_classification"

# CPU-sized settings (the bundles' defaults are the reference design: ResNet-50, 224 px, 50 epochs ...)
SEG_DEMO = {"network_def#backbone": "resnet18", "patch_size": [96, 96], "spacing": [1.5, 1.5, -1],
            "infer_roi_size": [256, 256], "learning_rate": 0.001, "num_workers": 0}
SEG_INFER = {"network_def#backbone": "resnet18", "spacing": [1.5, 1.5, -1]}


def _args(overrides: dict) -> list[str]:
    out = []
    for k, v in overrides.items():
        out += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    return out


def _bundle_run(bundle: Path, run_id: str | None, configs: list[str], overrides: dict, log: Path) -> None:
    cfg = "[" + ",".join(f"'{c}'" for c in configs) + "]" if len(configs) > 1 else configs[0]
    cmd = [sys.executable, "-m", "monai.bundle", "run", *([run_id] if run_id else []), "--config_file", cfg,
           *_args(overrides)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=bundle, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"{bundle.name} {run_id or 'run'} failed (log {log}): {' | '.join(tail)}")


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


def run_demo(args) -> int:
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
    _bundle_run(SEG, "training", ["configs/train.json"],
                {**SEG_DEMO, **tracking, "dataset_dir": str(converted), "output_dir": str(out / "runs" / "segmentation"),
                 "ckpt_dir": str(seg_models), "epochs": seg_epochs, "val_interval": max(1, seg_epochs // 4)},
                logs / "segmentation_train.log")
    print(f"       done ({time.perf_counter() - t:.0f} s)")

    t = _step("3/5 candidates on the training cases -> patches (hard negatives) -> train the classification bundle")
    from lungnod_ext.patches import build_patch_dataset
    from lungnod_ext.pipeline import run_bundle_inference

    train_items = [{"image": str(converted / e["image"])} for e in datalist["training"] + datalist["validation"]]
    cand_dir = out / "runs" / "train_candidates"
    run_bundle_inference(SEG, ["configs/inference.json"], train_items, cand_dir, seg_models / "model.pt",
                         {**SEG_INFER, "write_overlays": False})
    patches = out / "patches"
    build_patch_dataset(converted, patches, candidates_dir=cand_dir, seed=args.seed)
    cls_models = out / "models" / "classification"
    _bundle_run(CLS, "training", ["configs/train.json"],
                {**tracking, "dataset_dir": str(patches), "output_dir": str(out / "runs" / "classification"),
                 "ckpt_dir": str(cls_models), "epochs": cls_epochs, "num_workers": 0},
                logs / "classification_train.log")
    print(f"       done ({time.perf_counter() - t:.0f} s)")

    t = _step("4/5 lungnod detect on the held-out test cases")
    from lungnod_ext.detection_evaluation import evaluate_pipeline, format_table
    from lungnod_ext.pipeline import PipelineConfig, detect

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
