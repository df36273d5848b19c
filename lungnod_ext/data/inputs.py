"""What a user hands to inference -> a list of ``{"image": <NIfTI path>}`` for a MONAI dataset.

Accepted: a NIfTI file (.nii / .nii.gz), a folder of NIfTI files, a MONAI datalist JSON (its
``testing`` list, else ``validation``), a LUNA16 ``.mhd`` file, or a folder of DICOM files (any
nesting) or a .zip / .tar / .tar.gz of one: every usable CT series is converted by data_prep's convert
into ``<work_dir>``, with all of its checks (an archive is unpacked there and removed afterwards), and
the converted volumes are used.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from data_prep.archives import is_archive
from data_prep.errors import InputNotFoundError

NIFTI_SUFFIXES = (".nii", ".nii.gz", ".mhd", ".nrrd")


def _is_image_file(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES)


def resolve_inputs(path, work_dir, check: bool = True, assume_hu: bool = False) -> list[dict]:
    """Inputs for inference (see module doc). Raises InputNotFoundError with a one-line reason.

    With ``check`` every image goes through :func:`lungnod_ext.data.input_checks.check_ct_volume` first
    (4D/RGB, NaN, constant, all-air, too-small and non-HU volumes are refused before any model runs;
    ``assume_hu`` lets values that do not look like HU through)."""
    items = _resolve(Path(str(path)), work_dir)
    if check:
        from lungnod_ext.data.input_checks import check_ct_volume

        for item in items:
            check_ct_volume(item["image"], assume_hu=assume_hu)
    return items


def _datalist_images(path: Path) -> list[Path]:
    """A MONAI datalist JSON -> the image paths of its ``testing`` list (else ``validation``, else
    ``training``), relative ones resolved against the JSON's folder."""
    data = json.loads(path.read_text())
    key = next((k for k in ("testing", "validation", "training") if data.get(k)), None)
    if key is None:
        raise InputNotFoundError(path, "datalist has no testing/validation/training entries")
    return [path.parent / (e["image"] if isinstance(e, dict) else e) for e in data[key]]


def _resolve(path: Path, work_dir) -> list[dict]:
    if not path.exists():
        raise InputNotFoundError(path, "no such file or folder")
    if _is_image_file(path):
        return [{"image": str(path.resolve())}]
    if path.is_file() and path.suffix.lower() == ".json":
        return [{"image": str(f.resolve())} for f in _datalist_images(path)]
    if path.is_dir() or is_archive(path):
        images = sorted(p for p in path.iterdir() if _is_image_file(p)) if path.is_dir() else []
        if not images and (path / "images").is_dir():
            images = sorted(p for p in (path / "images").iterdir() if _is_image_file(p))
        if images:
            return [{"image": str(p.resolve())} for p in images]
        from data_prep.convert import ConvertOptions, convert_dicom_root

        created = _first_missing(Path(work_dir))
        try:
            report = convert_dicom_root(path, work_dir, ConvertOptions(progress=False))
            cases = report.converted + report.reused
            if not cases:
                reasons = "; ".join(f.get("reason", "") for f in report.failed + report.skipped)[:300]
                raise InputNotFoundError(path, f"no usable CT series ({reasons or 'nothing found'})")
        except BaseException:
            if created is not None:  # nothing of a failed conversion is left behind
                shutil.rmtree(created, ignore_errors=True)
            raise
        return [{"image": str((Path(work_dir) / "images" / f"{c}.nii.gz").resolve())} for c in sorted(cases)]
    raise InputNotFoundError(path, "not a NIfTI / MetaImage file, datalist JSON, DICOM folder or archive of one "
                                   "(.zip, .tar, .tar.gz)")


def resolve_image2d_inputs(path) -> list[dict]:
    """2D inputs (the images2d overlays) -> ``[{"image": <path>}]``: one PNG / JPEG / TIFF / BMP file, a folder
    of them (or its ``images/``), or an images2d ``datalist.json`` (its ``testing`` list, else ``validation``).
    Every file is opened once here, so an unreadable one stops the run with one line naming it."""
    from data_prep.images2d import IMAGE_SUFFIXES, read_image

    path = Path(str(path))
    if not path.exists():
        raise InputNotFoundError(path, "no such file or folder")
    if path.is_file() and path.suffix.lower() == ".json":
        files = _datalist_images(path)
    elif path.is_dir():
        folder = path / "images" if (path / "images").is_dir() else path
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputNotFoundError(path, f"no image files ({', '.join(IMAGE_SUFFIXES)})")
    else:
        files = [path]
    for f in files:
        read_image(f)
    return [{"image": str(f.resolve())} for f in files]


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet, or None."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
    return missing


def check_checkpoint(path) -> str:
    """Fail early, in one line, when a config points at a missing checkpoint."""
    p = Path(str(path))
    if not p.is_file():
        raise InputNotFoundError(p, "checkpoint not found: train the bundle first or set --ckpt_path")
    return str(p)
