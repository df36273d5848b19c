"""The reference design's 2D dataset form: folders of CT slice images and nodule masks, to and from lungnod.

:func:`import_images2d` (``data-prep images2d``) pairs ``images/`` and ``masks/`` files by file stem (a mask
may also be named ``<stem>_mask`` / ``_seg`` / ``_label``), reads PNG, JPEG, TIFF or BMP, 8 or 16 bit, grey
or colour, and writes ``<out>/images/<stem>.png`` (grey, the input's bit depth), ``<out>/labels/<stem>.png``
(uint8 0 / 255: nodule = any non-black mask pixel, or with ``mask_color`` the pixels near that RGB colour)
and ``<out>/datalist.json`` (MONAI lists "training" / "validation" / "testing", relative paths; images of
one patient, read from the name's prefix before a trailing slice number, stay in one list). Unpaired,
unreadable and size-mismatched files are reported one line each and left out; nothing is written when
no pair is usable.

:func:`export_images2d` (``data-prep export2d``) writes that form from a ``data-prep convert`` folder: axial
slices as 8-bit grey PNG in the lung window (-1350..150 HU) and the consensus mask drawn in red on black
(as the reference design's annotations are), every slice with a nodule plus ``negatives_per_case`` random
slices without one. Names: ``<case>_slice_<k:03d>.png`` (k = slice index, inferior to superior).
Arrays here are (row, column) = (y, x) as image files hold them.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_prep.datalist import patient_kfold
from data_prep.errors import InputNotFoundError
from data_prep.nifti_io import atomic_path, read_nifti, write_text_atomic

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MASK_STEM_SUFFIXES = ("", "_mask", "-mask", "_seg", "_label")
BLACK_LEVEL = 32          # 8-bit scale: JPEG masks leave near-black noise around the drawing
COLOR_TOLERANCE = 60      # max per-channel distance (8-bit) from ``mask_color``
LUNG_WINDOW_HU = (-1350.0, 150.0)
"""The lung window (min, max HU) of exported slices and of every overlay picture."""
_SLICE_NUMBER = re.compile(r"^(?P<patient>.*?)[_\-. ]*(?:slice|slc|img|image|s)?[_\-. ]*\d+$", re.IGNORECASE)


@dataclass
class Images2DReport:
    """What :func:`import_images2d` did: ``pairs`` written, one message per file left out."""

    out_dir: Path
    pairs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def patient_of(stem: str) -> str:
    """Patient id from a slice image's name: the prefix before a trailing slice number
    (``LIDC-IDRI-0001_slice_085`` -> ``LIDC-IDRI-0001``, ``p12-034`` -> ``p12``); the stem itself if none."""
    m = _SLICE_NUMBER.match(stem)
    return m.group("patient") if m and m.group("patient") else stem


def _files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputNotFoundError(folder, "no such folder")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def read_image(path: Path) -> np.ndarray:
    """An image file -> (H, W) grey or (H, W, 3) RGB array, uint8 or uint16; InputNotFoundError if unreadable."""
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.size == 0:
        raise InputNotFoundError(path, "cannot read the image (not a PNG / JPEG / TIFF / BMP, or damaged)")
    if arr.dtype not in (np.uint8, np.uint16):
        raise InputNotFoundError(path, f"pixel type {arr.dtype}: need 8 or 16 bit")
    if arr.ndim == 3:
        arr = arr[..., :3][..., ::-1]                       # BGR(A) -> RGB
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
    return np.ascontiguousarray(arr)


def to_grey(arr: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) -> (H, W), same dtype (ITU-R 601 luma)."""
    if arr.ndim == 2:
        return arr
    grey = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
    return np.round(grey).astype(arr.dtype)


def mask_from_drawing(arr: np.ndarray, mask_color: tuple[int, int, int] | None = None) -> np.ndarray:
    """A colour or grey annotation image -> bool (H, W): any non-black pixel, or the pixels within
    ``COLOR_TOLERANCE`` of ``mask_color`` (RGB, 8-bit scale)."""
    scale = 257.0 if arr.dtype == np.uint16 else 1.0
    a = arr.astype(np.float32) / scale
    if mask_color is None:
        return (a if a.ndim == 2 else a.max(axis=-1)) > BLACK_LEVEL
    rgb = a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=-1)
    return (np.abs(rgb - np.asarray(mask_color, np.float32)).max(axis=-1) <= COLOR_TOLERANCE)


def write_image_png(path, arr: np.ndarray) -> Path:
    """(H, W) grey (uint8 / uint16) or (H, W, 3) BGR uint8 -> PNG at ``path``, atomically; returns ``path``."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr))
    if not ok:
        raise ValueError(f"could not encode {path} as PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return Path(path)


def _splits(stems: list[str], positive: dict[str, bool], seed: int) -> dict[str, int]:
    cases = [{"case_id": s, "patient_id": patient_of(s), "n_nodules": int(positive[s])} for s in stems]
    return patient_kfold(cases, n_folds=5, seed=seed)


def write_images2d_datalist(out_dir: Path, stems: list[str], positive: dict[str, bool], seed: int = 0) -> Path:
    """``datalist.json`` of an images2d folder: 5 patient-grouped folds, fold 0 validation, fold 1 testing."""
    folds = _splits(stems, positive, seed)
    lists: dict[str, list] = {"training": [], "validation": [], "testing": []}
    for s in stems:
        name = {0: "validation", 1: "testing"}.get(folds[s], "training")
        lists[name].append({"image": f"images/{s}.png", "label": f"labels/{s}.png", "patient": patient_of(s),
                            "nodule": bool(positive[s])})
    if not lists["training"]:                      # too few patients for 5 folds: train on what there is
        lists["training"] = lists["validation"] + lists["testing"]
    if not lists["validation"]:
        log.warning("%s: %d patient(s) only: validation uses the training images (no held-out check)", out_dir,
                    len({patient_of(s) for s in stems}))
        lists["validation"] = list(lists["training"])
    path = out_dir / "datalist.json"
    write_text_atomic(path, json.dumps(lists, indent=1) + "\n")
    return path


def import_images2d(images_dir, masks_dir, out_dir, mask_color: tuple[int, int, int] | None = None,
                    seed: int = 0) -> Images2DReport:
    """Pair, check and write a 2D image + mask dataset (module doc). Raises InputNotFoundError when no
    pair is usable (nothing written then)."""
    images_dir, masks_dir, out_dir = Path(images_dir), Path(masks_dir), Path(out_dir)
    images, masks = _files(images_dir), _files(masks_dir)
    report = Images2DReport(out_dir)
    used_masks: set[str] = set()
    pairs = []
    for stem, image_path in images.items():
        mask_stem = next((stem + s for s in MASK_STEM_SUFFIXES if stem + s in masks), None)
        if mask_stem is None:
            report.problems.append(f"{image_path}: no mask named {stem}.* in {masks_dir}")
            continue
        used_masks.add(mask_stem)
        pairs.append((stem, image_path, masks[mask_stem]))
    report.problems += [f"{p}: no image for this mask in {images_dir}" for s, p in masks.items() if s not in used_masks]
    loaded = []
    for stem, image_path, mask_path in pairs:
        try:
            image, drawing = read_image(image_path), read_image(mask_path)
        except InputNotFoundError as exc:
            report.problems.append(str(exc))
            continue
        if image.shape[:2] != drawing.shape[:2]:
            report.problems.append(f"{mask_path}: size {drawing.shape[1]}x{drawing.shape[0]} differs from its image's "
                                   f"{image.shape[1]}x{image.shape[0]}")
            continue
        loaded.append((stem, to_grey(image), mask_from_drawing(drawing, mask_color)))
    for msg in report.problems:
        log.warning("%s", msg)
    if not loaded:
        raise InputNotFoundError(images_dir, f"no usable image + mask pair ({len(images)} images, {len(masks)} masks"
                                             f"{'; ' + report.problems[0] if report.problems else ''})")
    for stem, grey, mask in loaded:
        write_image_png(out_dir / "images" / f"{stem}.png", grey)
        write_image_png(out_dir / "labels" / f"{stem}.png", mask.astype(np.uint8) * 255)
        report.pairs.append(stem)
    write_images2d_datalist(out_dir, report.pairs, {s: bool(m.any()) for s, _, m in loaded}, seed)
    return report


def window_to_uint8(hu: np.ndarray, window=LUNG_WINDOW_HU) -> np.ndarray:
    """HU -> 0..255 grey through a (min, max) HU window, clipped."""
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"window must be (min, max) HU with max > min, got {window}")
    grey = (np.asarray(hu, dtype=np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def export_images2d(converted_dir, out_dir, negatives_per_case: int = 4, seed: int = 0) -> Path:
    """Write the 2D form from a ``data-prep convert`` folder (module doc): ``<out>/images``, ``<out>/masks``
    (red nodule on black, RGB PNG). Returns ``out_dir``."""
    converted, out = Path(converted_dir), Path(out_dir)
    labels = sorted((converted / "labels").glob("*.nii.gz"))
    if not labels:
        raise InputNotFoundError(converted, "no labels/*.nii.gz: not a data-prep convert folder")
    rng = np.random.default_rng(seed)
    for label_path in labels:
        case = label_path.name[: -len(".nii.gz")]
        hu, _ = read_nifti(converted / "images" / label_path.name)
        lab, _ = read_nifti(label_path)
        has_nodule = np.nonzero((lab > 0).reshape(lab.shape[0], -1).any(axis=1))[0]
        others = np.setdiff1d(np.arange(lab.shape[0]), has_nodule)
        negatives = rng.choice(others, size=min(len(others), negatives_per_case), replace=False) if len(others) else []
        for k in sorted({*has_nodule.tolist(), *np.asarray(negatives, int).tolist()}):
            # (z, y, x) volume: row y runs anterior -> posterior, column x right -> left (radiological view)
            write_image_png(out / "images" / f"{case}_slice_{k:03d}.png", window_to_uint8(hu[k]))
            drawing = np.zeros((*lab.shape[1:], 3), np.uint8)
            drawing[lab[k] > 0] = (0, 0, 255)                 # BGR for cv2: red
            write_image_png(out / "masks" / f"{case}_slice_{k:03d}.png", drawing)
    return out
