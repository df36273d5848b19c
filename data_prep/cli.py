"""``data-prep`` / ``python -m data_prep``: the command line over the data_prep stages.

Errors in user data print one line ``error: <path>: <problem>`` and exit non-zero (no traceback
unless ``--debug``). Warnings (skipped series, dropped duplicate slices, ...) print one line each.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from data_prep.errors import DataPrepError

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR = 0, 1, 2


def _cmd_convert(args) -> int:
    from data_prep.convert import ConvertOptions, convert_dicom_root

    opts = ConvertOptions(consensus=args.consensus, workers=args.workers, force=args.force, progress=not args.quiet)
    if args.luna16_annotations:
        from data_prep.convert import convert_luna16_root

        report = convert_luna16_root(args.input, args.out, args.luna16_annotations, opts)
    else:
        report = convert_dicom_root(args.input, args.out, opts)
    n_ok = len(report.converted) + len(report.reused)
    print(f"converted {len(report.converted)} case(s), reused {len(report.reused)}, skipped {len(report.skipped)}, "
          f"failed {len(report.failed)}; {report.n_nodules} nodule(s) -> {Path(args.out).resolve()}")
    for f in report.failed:
        print(f"error: {f.get('folder') or f.get('file')}: {f['reason']}", file=sys.stderr)
    if n_ok == 0:
        print(f"error: {args.input}: no CT series could be converted", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_PARTIAL if report.failed else EXIT_OK


def _cmd_datalist(args) -> int:
    from data_prep.datalist import write_datalist

    path = write_datalist(args.root, args.out, n_folds=args.folds, val_fold=args.val_fold, test_fold=args.test_fold,
                          seed=args.seed)
    data = json.loads(Path(path).read_text())
    print(f"datalist: {len(data['training'])} training, {len(data['validation'])} validation, "
          f"{len(data['testing'])} testing -> {Path(path).resolve()}")
    return EXIT_OK


def _cmd_synth(args) -> int:
    from data_prep.synth import CohortConfig, write_cohort

    cfg = CohortConfig(n_cases=args.cases, seed=args.seed)
    truth = write_cohort(args.out, cfg)
    n_nod = sum(len(t.get("nodules", [])) for t in truth)
    print(f"synthetic cohort: {len(truth)} case(s), {n_nod} nodule(s) -> {(Path(args.out) / 'dicom').resolve()}")
    return EXIT_OK


def _cmd_insert(args) -> int:
    from data_prep.insert import insert_into_nifti

    records = insert_into_nifti(args.image, args.out_image, args.out_label, args.nodules, args.seed)
    print(f"inserted {len(records)} nodule(s) -> {Path(args.out_image).resolve()}, {Path(args.out_label).resolve()}")
    return EXIT_OK


def _color(text: str) -> tuple[int, int, int]:
    parts = [int(v) for v in text.replace(" ", "").split(",")]
    if len(parts) != 3 or not all(0 <= v <= 255 for v in parts):
        raise argparse.ArgumentTypeError(f"expected R,G,B with values 0..255, got {text!r}")
    return parts[0], parts[1], parts[2]


def _cmd_images2d(args) -> int:
    from data_prep.images2d import import_images2d

    report = import_images2d(args.images, args.masks, args.out, mask_color=args.mask_color, seed=args.seed)
    print(f"images2d: {len(report.pairs)} image + mask pair(s) -> {Path(args.out).resolve()}"
          + (f"; {len(report.problems)} file(s) left out (listed above)" if report.problems else ""))
    return EXIT_PARTIAL if report.problems else EXIT_OK


def _cmd_export2d(args) -> int:
    from data_prep.images2d import export_images2d

    out = export_images2d(args.converted, args.out, negatives_per_case=args.negatives_per_case, seed=args.seed)
    n = len(list((out / "images").glob("*.png")))
    print(f"export2d: {n} slice image(s) + mask(s) -> {out.resolve()}")
    return EXIT_OK


def _cmd_demo(args) -> int:
    """The main job on the built-in data: synthetic cohort -> convert -> datalist (or the user's DICOM)."""
    from data_prep.convert import ConvertOptions, convert_dicom_root
    from data_prep.datalist import write_datalist

    out = Path(args.out)
    if args.input:
        source = Path(args.input)
    else:
        from data_prep.synth import CohortConfig, write_cohort

        source = out / "synthetic"
        if not (source / "dicom").exists():
            truth = write_cohort(source, CohortConfig(n_cases=args.cases, seed=args.seed))
            print(f"synthetic cohort: {len(truth)} case(s) -> {(source / 'dicom').resolve()}")
        source = source / "dicom"
    report = convert_dicom_root(source, out / "converted", ConvertOptions(workers=args.workers, progress=not args.quiet))
    n_ok = len(report.converted) + len(report.reused)
    print(f"converted {n_ok} case(s) ({len(report.skipped)} series skipped, {len(report.failed)} failed), "
          f"{report.n_nodules} nodule(s)")
    if n_ok == 0:
        print(f"error: {source}: no CT series could be converted", file=sys.stderr)
        return EXIT_ERROR
    converted = (out / "converted").resolve()
    try:
        datalist = write_datalist(converted, n_folds=min(5, max(2, n_ok)), val_fold=0, seed=args.seed, require_labels=False)
    except DataPrepError as exc:   # e.g. one patient only: nothing to split into folds
        datalist = None
        print(f"datalist:  not written ({exc.problem})")
    print(f"images:    {converted / 'images'}")
    print(f"labels:    {converted / 'labels'}")
    print(f"nodules:   {converted / 'nodules.csv'}")
    if datalist:
        print(f"datalist:  {Path(datalist).resolve()}")
    print(f"report:    {converted / 'conversion_report.json'}")
    return EXIT_PARTIAL if report.failed else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="data-prep", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars / warnings")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="DICOM folder (any nesting, LIDC XML beside) or LUNA16 folder -> NIfTI + masks")
    c.add_argument("input", help="root folder of DICOM files, or of LUNA16 .mhd files with --luna16-annotations")
    c.add_argument("--out", required=True, help="output folder (images/, labels/, nodules.csv, ...)")
    c.add_argument("--workers", type=int, default=1, help="parallel processes over series (default 1)")
    c.add_argument("--consensus", type=float, default=0.5, help="fraction of a nodule's readers a voxel needs (0.5)")
    c.add_argument("--force", action="store_true", help="redo cases already converted")
    c.add_argument("--luna16-annotations", metavar="CSV", help="LUNA16 annotations.csv: input is a LUNA16 folder")
    c.set_defaults(func=_cmd_convert)

    d = sub.add_parser("datalist", help="converted folder -> MONAI datalist with patient-level folds")
    d.add_argument("root", help="output folder of 'convert'")
    d.add_argument("--out", default=None, help="datalist path (default <root>/datalist.json)")
    d.add_argument("--folds", type=int, default=5)
    d.add_argument("--val-fold", type=int, default=0)
    d.add_argument("--test-fold", type=int, default=None)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_datalist)

    s = sub.add_parser("synth", help="write a synthetic chest CT cohort (DICOM + LIDC XML + ground truth)")
    s.add_argument("--out", required=True)
    s.add_argument("--cases", type=int, default=6)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_synth)

    m = sub.add_parser("demo", help="the main job: synthetic cohort (or --input DICOM) -> converted data + datalist")
    m.add_argument("--out", default="demo_out")
    m.add_argument("--input", default=None, help="your DICOM folder (default: generate the synthetic cohort)")
    m.add_argument("--cases", type=int, default=8)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--workers", type=int, default=2)
    m.set_defaults(func=_cmd_demo)

    g = sub.add_parser("images2d", help="2D CT slice images + nodule mask images (the reference design's form) -> "
                                        "grey PNG + 0/255 labels + MONAI datalist with patient-grouped splits")
    g.add_argument("--images", required=True, help="folder of slice images (PNG / JPEG / TIFF / BMP, 8 or 16 bit)")
    g.add_argument("--masks", required=True, help="folder of masks, paired by file stem (nodule = non-black)")
    g.add_argument("--out", required=True)
    g.add_argument("--mask-color", type=_color, metavar="R,G,B", help="only pixels of this colour are nodule")
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=_cmd_images2d)

    x = sub.add_parser("export2d", help="a converted folder -> the 2D form (lung-window slice PNGs, red masks)")
    x.add_argument("converted", help="output folder of data-prep convert")
    x.add_argument("--out", required=True)
    x.add_argument("--negatives-per-case", type=int, default=4, help="slices without a nodule per case (4)")
    x.add_argument("--seed", type=int, default=0)
    x.set_defaults(func=_cmd_export2d)

    i = sub.add_parser("insert", help="insert simulated nodules into a real CT NIfTI")
    i.add_argument("image")
    i.add_argument("--out-image", required=True)
    i.add_argument("--out-label", required=True)
    i.add_argument("--nodules", type=int, default=3)
    i.add_argument("--seed", type=int, default=0)
    i.set_defaults(func=_cmd_insert)
    return p


class OneLineFormatter(logging.Formatter):
    """``warning: <message>``, like the ``error:`` line (also used by the ``lungnod`` command)."""

    def format(self, record):
        return f"{record.levelname.lower()}: {record.getMessage()}"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter())
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.WARNING, handlers=[handler], force=True)
    try:
        return args.func(args)
    except DataPrepError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
