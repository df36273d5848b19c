"""``lungnod``: the product's command line.

    lungnod detect <DICOM folder | NIfTI | datalist> --out <dir>   two-stage nodule report
    lungnod evaluate <detect output> --reference <converted dir>  stage 1 vs stage 1+2 metrics table
    lungnod demo [--input <DICOM folder>] [--out demo_out] [--train]  shipped models on the built-in real example scan
    lungnod train-models --out <dir> [--install]                  the recipe of the shipped models

Bad input gives one line ``error: <path>: <problem>`` on stderr and exit code 2 (no traceback unless
``--debug``); nothing partial is left in the output folder.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from data_prep.cli import OneLineFormatter
from data_prep.errors import DataPrepError

EXIT_OK, EXIT_ERROR = 0, 2
MAX_NODULES_PRINTED = 10    # per case on the terminal; all of them are in the report files
PYTHON_LITERALS = {"True": True, "False": False, "None": None}   # --seg / --cls values spelt as monai.bundle takes them


def parse_overrides(pairs: list[str] | None) -> dict:
    """``key=value`` strings -> dict; values parsed as JSON when they are JSON (numbers, lists, true / false),
    Python's ``True`` / ``False`` / ``None`` as those (the monai.bundle command line's spelling), else strings."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: override {pair!r} is not key=value")
        if value in PYTHON_LITERALS:
            out[key] = PYTHON_LITERALS[value]
            continue
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _cmd_detect(args) -> int:
    from lungnod_ext.apps.pipeline import PipelineConfig, attenuation_text, axes_text, detect, scan_text

    cfg = PipelineConfig(use_classifier=not args.no_classifier, probability_threshold=args.threshold,
                         overlays=not args.no_overlays, dicom_seg=args.dicom_seg or args.dicom_sr,
                         dicom_sr=args.dicom_sr, explain=not args.no_explain,
                         assume_hu=args.assume_hu,
                         seg_overrides=parse_overrides(args.seg), cls_overrides=parse_overrides(args.cls))
    if args.seg_ckpt:
        cfg.seg_ckpt = Path(args.seg_ckpt)
    if args.cls_ckpt:
        cfg.cls_ckpt = Path(args.cls_ckpt)
    if args.three_d:
        cfg.seg_config = ["configs/inference.json", "configs/inference_3d.json"]
    if args.fast:
        cfg.use_fast_models()
    inputs = vars(args).pop("inputs", None)   # detect() owns them from here (and cleans up if it fails)
    summary = detect(args.input, args.out, cfg, inputs=inputs)
    for case in summary["cases"]:
        scan = f" ({scan_text(case['scan'])})" if case.get("scan") else ""
        print(f"{case['case']}: {case['n_nodules']} nodule(s) from {case['n_candidates']} candidate(s){scan}")
        for note in case.get("notes", []):
            print(f"  note: {note}")
        for n in case["nodules"][:MAX_NODULES_PRINTED]:
            x, y, z = n["centre_lps"]
            kind = "" if n.get("attenuation") is None else f"{attenuation_text(n)}, "
            print(f"  {n['id']:>3}. p {n.get('probability', float('nan')):.2f}  {kind}long x short axis {axes_text(n)} mm, "
                  f"volume {n['volume_mm3']:.0f} mm3, centre LPS ({x:.1f}, {y:.1f}, {z:.1f}) mm"
                  + (f", image {n['image_number']}" if n.get("image_number") is not None else ""))
        if case["n_nodules"] > MAX_NODULES_PRINTED:
            print(f"  ... and {case['n_nodules'] - MAX_NODULES_PRINTED} more (report.html, <case>_nodules.csv)")
    s = summary["seconds"]
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in s.items()) + f"; peak memory {summary['peak_rss_mb']:.0f} MB")
    print(f"report:  {Path(summary['output']) / 'report.html'}")
    return EXIT_OK


def _cmd_evaluate(args) -> int:
    from lungnod_ext.metrics.detection_evaluation import evaluate_pipeline, format_table

    result = evaluate_pipeline(args.pred, args.reference, threshold=args.threshold, min_readers=args.min_readers)
    print(format_table(result))
    if args.json:
        from data_prep.nifti_io import write_text_atomic

        write_text_atomic(args.json, json.dumps(result, indent=2, default=float) + "\n")
        print(f"metrics: {Path(args.json).resolve()}")
    return EXIT_OK


def _cmd_demo(args) -> int:
    from lungnod_ext.apps.demo import run_demo

    return run_demo(args)


def _positive_int(text: str) -> int:
    """argparse's type for a count of at least 1 (``--min-readers``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number expected") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1")
    return value


def _seed_list(text: str) -> list[int]:
    """``--cls-seeds`` "123,1,2" -> [123, 1, 2] (at least one)."""
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated integers expected") from None
    if not seeds:
        raise argparse.ArgumentTypeError("at least one seed")
    return seeds


def _hu_range(text: str) -> tuple[float, float]:
    """``LOW,HIGH`` (HU) -> (low, high); argparse's type for --ground-glass-hu."""
    from data_prep.synth.nodules import ground_glass_range

    try:
        return ground_glass_range([float(v) for v in text.split(",")])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: LOW <= HIGH in HU expected, within -1000 to -100 and LOW below "
                                         "-450, e.g. --ground-glass-hu=-750,-400") from None


def _share(text: str) -> float:
    """A chance, 0 to 1 (argparse's type for --cls-mass-diaphragm-share, --dependent-density)."""
    try:
        if 0.0 <= (value := float(text)) <= 1.0:
            return value
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r}: a share from 0 to 1 expected, e.g. 0.5")


def _count(text: str) -> int:
    """A whole number >= 0 (argparse's type for --faint-candidates)."""
    try:
        if (value := int(text)) >= 0:
            return value
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r}: a whole number >= 0 expected, e.g. 30")


def _type_shares(text: str) -> tuple:
    """Nodule types with shares (argparse's type for --small-types), see
    :func:`data_prep.training_cohort.parse_type_shares`."""
    from data_prep.training_cohort import parse_type_shares

    try:
        return parse_type_shares(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _cmd_train_models(args) -> int:
    from lungnod_ext.apps.train_models import DEFAULT_LIDC, RecipeSettings, train_models

    hold_out = args.hold_out or ["LIDC-IDRI-0001"]
    settings = RecipeSettings.tiny(hold_out) if args.tiny else RecipeSettings(hold_out=hold_out)
    for key in ("copies", "seg_epochs", "cls_epochs", "cls_seeds", "workers", "ground_glass_hu",
                "cls_mass_diaphragm_share", "faint_candidates", "inference_faint_candidates", "small_copies",
                "small_types", "dependent_density_share"):
        if getattr(args, key) is not None:
            setattr(settings, key, getattr(args, key))
    settings.seg_overrides = parse_overrides(args.seg)
    settings.cls_overrides = parse_overrides(args.cls)
    train_models(args.lidc or DEFAULT_LIDC, args.out, settings, install=args.install, until=args.until,
                 tracking=not args.no_mlflow)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lungnod", description="Lung nodule detection and delineation in chest CT.")
    p.add_argument("--debug", action="store_true", help="show tracebacks and library warnings")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("detect", help="DICOM folder / NIfTI -> nodule report (JSON, CSV, overlays, HTML)")
    d.add_argument("input", help="a DICOM folder (any nesting), a NIfTI file or folder, or a datalist JSON")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--threshold", type=float, default=0.5, help="nodule probability threshold (0.5)")
    d.add_argument("--no-classifier", action="store_true", help="stage 1 only (segmentation candidates)")
    d.add_argument("--no-overlays", action="store_true", help="skip the PNG overlays")
    d.add_argument("--dicom-seg", action="store_true", help="also write a DICOM SEG referencing the source series")
    d.add_argument("--dicom-sr", action="store_true", help="also a DICOM SR measurement report (TID 1500: long / short "
                   "axis, diameter, volume, probability per nodule) on the SEG's segments; implies --dicom-seg")
    d.add_argument("--no-explain", action="store_true", help="skip the classifier evidence maps (occlusion sensitivity)")
    d.add_argument("--assume-hu", action="store_true",
                   help="the image's values are Hounsfield units even though they do not look like it")
    mode = d.add_mutually_exclusive_group()
    mode.add_argument("--3d", dest="three_d", action="store_true", help="use the 3D segmentation overlay")
    mode.add_argument("--fast", action="store_true",
                      help="the shipped fast models (models/model_fast.pt: half-width decoder, about 1.3x faster, a little less accurate)")
    d.add_argument("--seg-ckpt", help="segmentation checkpoint (default <bundle>/models/model.pt; model_fast.pt with --fast)")
    d.add_argument("--cls-ckpt", help="classification checkpoint (default <bundle>/models/model.pt; model_fast.pt with --fast)")
    d.add_argument("--seg", action="append", metavar="KEY=VALUE", help="segmentation bundle config override")
    d.add_argument("--cls", action="append", metavar="KEY=VALUE", help="classification bundle config override")
    d.set_defaults(func=_cmd_detect)

    e = sub.add_parser("evaluate", help="detect output vs reference nodules: stage 1 and stage 1+2 metrics")
    e.add_argument("pred", help="output folder of 'lungnod detect'")
    e.add_argument("--reference", required=True, help="data-prep convert output (nodules.csv, images/)")
    e.add_argument("--threshold", type=float, default=0.5)
    e.add_argument("--min-readers", type=_positive_int, default=3, metavar="N",
                   help="LUNA16's reference standard (default 3): a nodule marked by fewer readers, like a LIDC "
                        "< 3 mm or non-nodule mark, is neither counted nor a false positive; 1 counts every nodule")
    e.add_argument("--json", help="also write the metrics here")
    e.set_defaults(func=_cmd_evaluate)

    t = sub.add_parser("train-models", help="train both bundles' models from the LIDC-IDRI series (the shipped recipe)")
    t.add_argument("--out", required=True, help="work folder (converted data, cohort, runs, MLflow, models)")
    t.add_argument("--lidc", help="folder of LIDC-IDRI series with their XML (default ../shared/data/lidc)")
    t.add_argument("--hold-out", action="append", metavar="PATIENT", help="patient id never trained on (repeatable; default LIDC-IDRI-0001)")
    t.add_argument("--install", action="store_true", help="copy the models into bundles/*/models/model.pt and set the inference configs to "
                   "match (detector_priors, blob_max_candidates, blob_faint_candidates, a --seg pleural_caps / blob_slice_profile_mm)")
    t.add_argument("--tiny", action="store_true", help="a few minutes, every stage, nothing useful learned (tests)")
    t.add_argument("--copies", type=int, help="cohort volumes per training series (10)")
    t.add_argument("--seg-epochs", type=int, help="segmentation epochs (140)")
    t.add_argument("--cls-epochs", type=int, help="classification epochs (20)")
    t.add_argument("--cls-seeds", type=_seed_list, metavar="S[,S...]",
                   help="one classifier per seed, averaged as one ensemble (123,1,2); one seed: one classifier")
    t.add_argument("--workers", type=int, help="processes for the conversion and the cohort (2)")
    t.add_argument("--ground-glass-hu", type=_hu_range, metavar="LOW,HIGH",
                   help="density of the cohort's ground-glass nodules and part-solid halos, HU (-600,-400; write "
                        "--ground-glass-hu=-750,-400 for fainter ones)")
    t.add_argument("--cls-mass-diaphragm-share", type=_share, metavar="SHARE",
                   help="the mass copies redrawn for the classifier with this share of their juxta-pleural masses on "
                        "the diaphragm (0.5; 0: the segmenter's copies, as the fast pair's classifier learned)")
    t.add_argument("--faint-candidates", type=_count, metavar="N",
                   help="faint dot-filter peaks (ground glass) per volume beyond the strongest ones, learned from by "
                        "the classifiers (30)")
    t.add_argument("--inference-faint-candidates", type=_count, metavar="N",
                   help="... and added per scan at inference: the segmentation config's blob_faint_candidates, which "
                        "--install sets (0: off; at their prior they changed no measured figure)")
    t.add_argument("--small-copies", type=_count, metavar="N",
                   help="volumes per series with 10-16 nodules of 3-6 mm (of --small-types) added for the "
                        "classifier only (3)")
    t.add_argument("--small-types", type=_type_shares, metavar="TYPE=SHARE[,...]",
                   help="the small copies' nodule types (juxta_vascular=0.7,solid=0.1,part_solid=0.1,"
                        "ground_glass=0.1; types: solid, part_solid, ground_glass, juxta_pleural, juxta_vascular)")
    t.add_argument("--dependent-density", dest="dependent_density_share", type=_share, metavar="SHARE",
                   help="this share of the cohort's copies (and of the mass and small copies) get posterior "
                        "subpleural ground-glass density as background, the dependent lung a supine scan shows "
                        "(0.5, the shipped models'; 0: none)")
    t.add_argument("--seg", action="append", metavar="KEY=VALUE",
                   help="segmentation config override for training and the candidate run, e.g. decoder_channels=[128,64,32,16,8]")
    t.add_argument("--cls", action="append", metavar="KEY=VALUE",
                   help="classification config override for training, e.g. network_def#centre_features=true")
    t.add_argument("--until", metavar="STAGE", help="stop after this stage (convert, cohort, segmentation, masses, "
                   "segmentation_masses, classifier_masses, classifier_small, candidates, patches); the same command without it goes on "
                   "(e.g. the segmenter on a GPU machine, the rest elsewhere from a copy of --out)")
    t.add_argument("--no-mlflow", action="store_true", help="log nothing to MLflow (where it is not installed)")
    t.set_defaults(func=_cmd_train_models)

    m = sub.add_parser("demo", help="the shipped models on the built-in real example scan (or --input); --train trains first")
    m.add_argument("--out", default="demo_out")
    m.add_argument("--input", default=None, help="your DICOM folder or NIfTI (default: the built-in example scan)")
    m.add_argument("--cases", type=int, default=16)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--train", action="store_true", help="train small models first (synthetic cohort or --input with LIDC XML)")
    m.add_argument("--quick", action="store_true", help="a tiny --train run (about 2 minutes) for smoke tests")
    m.set_defaults(func=_cmd_demo)
    return p


def run() -> None:
    """Process entry point (the ``lungnod`` script, ``python -m lungnod_ext``): :func:`main`, then exit fast.

    Exit handlers run and the streams are flushed as in a normal exit, but the interpreter's teardown of
    every loaded module and object (torch, MONAI: about 1.5 s after each ``detect``) is skipped.
    """
    code = main()
    try:
        atexit._run_exitfuncs()  # what a normal exit runs: logging.shutdown, tempfile / weakref finalizers
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _data_prep_error(exc: BaseException) -> DataPrepError | None:
    """The DataPrepError in an exception's cause/context chain (MONAI wraps config errors in RuntimeError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, DataPrepError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while (exc.__cause__ or exc.__context__) is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return exc


def _tracks_runs(args) -> bool:
    """Whether the command trains (and logs to MLflow): train-models, demo --train / --quick."""
    return args.command == "train-models" or (args.command == "demo" and (args.train or args.quick))


def _uses_monai(args) -> bool:
    """Whether the command runs a bundle (everything but ``evaluate``, which reads JSON, CSV and NIfTI only:
    without MONAI's import it starts about 6 s sooner on 2 cores)."""
    return args.command != "evaluate"


def _start_detect_inputs(args) -> None:
    """``detect``: check the output folder and start converting the input in a forked process, before MONAI's
    import (:mod:`lungnod_ext.apps.detect_inputs`: the two overlap on 2 cores, 2-5 s sooner)."""
    from lungnod_ext.apps.detect_inputs import DetectInputs

    args.inputs = DetectInputs(args.input, args.out, assume_hu=args.assume_hu, background=True)


def _run(args) -> int:
    """Import MONAI as the command needs it and run it; a detect run's input conversion starts first (see
    :func:`_start_detect_inputs`) and is stopped, its output folder removed, if the run fails before detect()."""
    try:
        if args.command == "detect":
            _start_detect_inputs(args)
        if _uses_monai(args) and not _tracks_runs(args):
            from lungnod_ext.apps.monai_import import import_monai_for_inference

            import_monai_for_inference()  # MLflow, pandas, scipy.signal, ... hidden from MONAI (module doc)
        if not args.debug and _uses_monai(args):
            import monai.bundle.workflows  # noqa: F401  (creates MONAI's loggers, which we then quieten)

            for name in list(logging.root.manager.loggerDict):
                if name.split(".")[0] in ("monai", "ignite", "mlflow"):
                    logging.getLogger(name).setLevel(logging.ERROR)
        return args.func(args)
    except BaseException:
        if getattr(args, "inputs", None) is not None:
            args.inputs.abandon()
        raise


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.debug:
        warnings.filterwarnings("ignore")
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(OneLineFormatter())
        logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user; --debug shows the traceback
        if args.debug:
            raise
        known = _data_prep_error(exc)
        if known is not None:
            print(f"error: {known}", file=sys.stderr)
        else:
            root = _root_cause(exc)
            where = (getattr(args, "input", None) or getattr(args, "pred", None) or getattr(args, "out", None)
                     or "")
            print(f"error: {where}: {type(root).__name__}: {str(root).splitlines()[0] if str(root) else ''}",
                  file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
