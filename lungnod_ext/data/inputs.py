"""What a user hands to inference -> a list of ``{"image": <NIfTI path>}`` for a MONAI dataset.

Accepted: a NIfTI file (.nii / .nii.gz), a folder of NIfTI files, a MONAI datalist JSON (its
``testing`` list, else ``validation``), a LUNA16 ``.mhd`` file, or a folder of DICOM files (any
nesting) or a .zip / .tar / .tar.gz of one: every usable CT series is converted by data_prep's convert
into ``<work_dir>``, with all of its checks (an archive is unpacked there and removed afterwards), and
the converted volumes are used.

An image with a data_prep provenance record beside it (``<folder>/provenance/<case>.json``: converted here, or
a data_prep convert output given as the input) or a dcm2niix sidecar (``<name>.json``, BIDS ``SliceThickness``)
also gets ``slice_thickness_mm``, its DICOM SliceThickness (mm), where the series said it: a NIfTI header keeps
only the slice spacing, and an overlapping reconstruction's slices are thicker than that (the segmentation
bundle's dot filter reads it, ``AddBlobCandidatesd``). A datalist JSON's entries may give it themselves.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from data_prep.archives import is_archive
from data_prep.errors import InputNotFoundError
from data_prep.slice_profile import slice_thickness_or_none

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


def _item(image: Path) -> dict:
    """``{"image": <absolute path>}``, with ``slice_thickness_mm`` where a data_prep provenance record
    (``<image folder>/../provenance/<case>.json``) or a dcm2niix / BIDS sidecar (:func:`sidecar_slice_thickness`)
    names the series' slice thickness."""
    item = {"image": str(image.resolve())}
    thickness = recorded_slice_thickness(image)
    if thickness is not None:
        item["slice_thickness_mm"] = thickness
    return item


def recorded_slice_thickness(image) -> float | None:
    """The slice thickness (mm) recorded beside an image file: its data_prep provenance record
    (:func:`provenance_slice_thickness`), else its dcm2niix sidecar (:func:`sidecar_slice_thickness`); None where
    neither says."""
    image = Path(str(image))
    thickness = provenance_slice_thickness(image)
    return thickness if thickness is not None else sidecar_slice_thickness(image)


def sidecar_slice_thickness(image: Path) -> float | None:
    """``SliceThickness`` (mm) from the JSON sidecar dcm2niix writes beside a NIfTI it converted (BIDS:
    ``<name>.nii.gz`` -> ``<name>.json``); None without one, or one that is not such a record or does not say."""
    sidecar = image.with_name(f"{_stem(image)}.json")
    if not sidecar.is_file():
        return None
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return slice_thickness_or_none(record.get("SliceThickness")) if isinstance(record, dict) else None


def provenance_slice_thickness(image: Path) -> float | None:
    """The DICOM slice thickness (mm) data_prep's provenance record gives for a converted ``image``
    (``<folder>/images/<case>.nii.gz`` -> ``<folder>/provenance/<case>.json``, ``reconstruction``); None where
    there is no record, or it does not say (older conversions, multi-frame series, no SliceThickness)."""
    record = image.parent.parent / "provenance" / f"{_stem(image)}.json"
    if not record.is_file():
        return None
    try:
        value = (json.loads(record.read_text()).get("reconstruction") or {}).get("slice_thickness_mm")
    except (OSError, ValueError, AttributeError):
        return None
    return slice_thickness_or_none(value)


def _stem(image: Path) -> str:
    """An image file's name without its suffix (``.nii.gz`` whole): the case id of a data_prep conversion."""
    name = image.name
    return name[:-len(".nii.gz")] if name.lower().endswith(".nii.gz") else image.stem


def _datalist_items(path: Path) -> list[dict]:
    """A MONAI datalist JSON -> its items (:func:`_item`), an entry's own ``slice_thickness_mm`` (mm > 0; anything
    else stops here) taking the place of the provenance record's."""
    items = []
    for image, entry in _datalist_entries(path):
        item = _item(image)
        if isinstance(entry, dict) and entry.get("slice_thickness_mm") is not None:
            own = slice_thickness_or_none(entry["slice_thickness_mm"])
            if own is None:
                raise InputNotFoundError(path, f"entry {entry.get('image')!r}: slice_thickness_mm must be a slice "
                                               f"thickness in mm > 0 (or left out), got {entry['slice_thickness_mm']!r}")
            item["slice_thickness_mm"] = own
        items.append(item)
    return items


def _datalist_entries(path: Path) -> list[tuple[Path, object]]:
    """A MONAI datalist JSON -> (image path, entry) of its ``testing`` list (else ``validation``, else
    ``training``), relative paths resolved against the JSON's folder."""
    data = json.loads(path.read_text())
    key = next((k for k in ("testing", "validation", "training") if data.get(k)), None)
    if key is None:
        raise InputNotFoundError(path, "datalist has no testing/validation/training entries")
    return [(path.parent / (e["image"] if isinstance(e, dict) else e), e) for e in data[key]]


def _datalist_images(path: Path) -> list[Path]:
    """A MONAI datalist JSON -> the image paths of its entries (:func:`_datalist_entries`)."""
    return [image for image, _ in _datalist_entries(path)]


def _resolve(path: Path, work_dir) -> list[dict]:
    if not path.exists():
        raise InputNotFoundError(path, "no such file or folder")
    if _is_image_file(path):
        return [_item(path)]
    if path.is_file() and path.suffix.lower() == ".json":
        return _datalist_items(path)
    if path.is_dir() or is_archive(path):
        images = sorted(p for p in path.iterdir() if _is_image_file(p)) if path.is_dir() else []
        if not images and (path / "images").is_dir():
            images = sorted(p for p in (path / "images").iterdir() if _is_image_file(p))
        if images:
            return [_item(p) for p in images]
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
        return [_item(Path(work_dir) / "images" / f"{c}.nii.gz") for c in sorted(cases)]
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
