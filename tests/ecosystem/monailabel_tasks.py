"""Run MONAI Label's own bundle tasks on a lungnod bundle; executed with the MONAI Label venv's python
(tests/ecosystem/monailabel_env.sh), driven by tests/ecosystem/test_monailabel.py.

    python monailabel_tasks.py infer --bundle <app>/model/<bundle> --image <ct.nii.gz> --out <dir>
        monailabel.tasks.infer.bundle.BundleInferTask on one image (CPU); copies the label file it
        returns to <dir> and writes <dir>/result.json: {"valid", "type", "labels", "dimension",
        "label_file", "result": <the task's result JSON>}.
    python monailabel_tasks.py train --bundle <app>/model/<bundle> --studies <dir> --out <dir> [--epochs N]
        monailabel.tasks.train.bundle.BundleTrainTask on a LocalDatastore of <dir> (images, with their
        labels under <dir>/labels/final), as the server's /train/ would run it; writes <dir>/result.json:
        {"valid", "datalist_size", "config", "result"}.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        if isinstance(value, dict):
            return {str(k): _jsonable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_jsonable(v) for v in value]
        return str(value)


def run_infer(bundle: Path, image: Path, out: Path) -> dict:
    from monailabel.tasks.infer.bundle import BundleInferTask

    task = BundleInferTask(str(bundle), {"preload": "false"})
    summary = {"valid": task.is_valid()}
    if not task.is_valid():
        return summary
    label_file, result = task({"image": str(image), "device": "cpu"})
    copied = None
    if label_file:
        copied = out / ("label" + "".join(Path(label_file).suffixes))
        shutil.move(label_file, copied)
    summary.update(type=str(task.type), labels=task.labels, dimension=task.dimension, info=_jsonable(task.info()),
                   label_file=str(copied) if copied else None, result=_jsonable(result))
    return summary


def run_train(bundle: Path, studies: Path, out: Path, epochs: int) -> dict:
    from monailabel.datastore.local import LocalDatastore
    from monailabel.tasks.train.bundle import BundleTrainTask

    task = BundleTrainTask(str(bundle), {})
    summary = {"valid": task.is_valid()}
    if not task.is_valid():
        return summary
    datastore = LocalDatastore(str(studies), extensions=("*.nii.gz", "*.nii"), auto_reload=False)
    # "pretrained" stays at MONAI Label's default (True: start from models/model.pt when it exists);
    # monailabel 0.8.5 crashes on pretrained=False (os.path.exists(None) in _load_checkpoint).
    request = {"model": bundle.name, "max_epochs": epochs, "device": "cpu", "multi_gpu": False, "val_split": 0.25,
               "tracking": "None"}
    result = task(request, datastore)
    summary.update(datalist_size=len(datastore.datalist()), config=_jsonable(task.config()), result=_jsonable(result))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    infer = sub.add_parser("infer")
    infer.add_argument("--bundle", type=Path, required=True)
    infer.add_argument("--image", type=Path, required=True)
    infer.add_argument("--out", type=Path, required=True)
    train = sub.add_parser("train")
    train.add_argument("--bundle", type=Path, required=True)
    train.add_argument("--studies", type=Path, required=True)
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import torch

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "infer":
        summary = run_infer(args.bundle.resolve(), args.image.resolve(), args.out.resolve())
    else:
        summary = run_train(args.bundle.resolve(), args.studies.resolve(), args.out.resolve(), args.epochs)
    (args.out / "result.json").write_text(json.dumps(summary, indent=1))
    return 0 if summary["valid"] else 3


if __name__ == "__main__":
    sys.exit(main())
