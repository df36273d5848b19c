"""LUNA16 input: MetaImage volumes (``<seriesuid>.mhd`` + ``.raw``, in ``subset0..9``) and ``annotations.csv``.

``annotations.csv`` has one row per nodule: ``seriesuid, coordX, coordY, coordZ, diameter_mm``, the
centre in world mm as ITK writes it (LPS, the same frame as the .mhd ``Offset`` / ``TransformMatrix``)
and the diameter in mm. LUNA16 keeps the LIDC nodules >= 3 mm that at least 3 of the 4 readers marked,
and every one of its scans was read: a scan with no row has no such nodule (its label is empty, not
missing). LUNA16 files carry no patient id, so the patient id of a case is its series UID.

Volumes come back as (z, y, x) int16 HU (values below -1024 clipped to -1024) with
:class:`data_prep.coords.Geometry` (LPS mm); nodules become spheres of the annotated diameter.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from data_prep.errors import AnnotationError, DataPrepError, DicomReadError, InputNotFoundError, SeriesError
from data_prep.masks import nodule_stats, sphere_mask
from data_prep.coords import Geometry

log = logging.getLogger(__name__)

HU_AIR = -1024
HU_MAX = 32767
LUNA16_MIN_READERS = 3
ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
MAX_HEADER_BYTES = 65536
# bytes per element of the MetaImage types whose size does not depend on the platform
MET_ELEMENT_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                     "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


def luna16_case_id(series_uid: str) -> str:
    """Case id of a LUNA16 scan: ``luna16_<8 hex of sha1(series UID)>``."""
    return f"luna16_{hashlib.sha1(series_uid.encode()).hexdigest()[:8]}"


# -------------------------------------------------------------------------------------------------
# annotations.csv
# -------------------------------------------------------------------------------------------------

def read_annotations(csv_path) -> dict[str, list[dict]]:
    """``annotations.csv`` -> ``{seriesuid: [row, ...]}`` in file order.

    Each row: ``{"coord_lps": [x, y, z] (world mm, LPS), "diameter_mm": float, "line": int}``.
    Raises InputNotFoundError for a missing file and AnnotationError (naming the file and line) for
    a missing column, an empty series UID, a non-numeric / non-finite value or a diameter <= 0.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputNotFoundError(csv_path, "LUNA16 annotations file not found")
    out: dict[str, list[dict]] = {}
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in ANNOTATION_COLUMNS if c not in header]
            if missing:
                raise AnnotationError(csv_path, f"line 1: missing column(s) {', '.join(missing)} "
                                                f"(expected {', '.join(ANNOTATION_COLUMNS)}; got {', '.join(header) or 'nothing'})")
            reader.fieldnames = header
            for row in reader:
                line = reader.line_num
                if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                    continue  # blank line
                uid = (row.get("seriesuid") or "").strip()
                if not uid:
                    raise AnnotationError(csv_path, f"line {line}: empty seriesuid")
                values = []
                for col in ANNOTATION_COLUMNS[1:]:
                    text = (row.get(col) or "").strip()
                    try:
                        v = float(text)
                    except ValueError:
                        raise AnnotationError(csv_path, f"line {line}: {col} {text!r} is not a number") from None
                    if not math.isfinite(v):
                        raise AnnotationError(csv_path, f"line {line}: {col} {text!r} is not a finite number")
                    values.append(v)
                if values[3] <= 0:
                    raise AnnotationError(csv_path, f"line {line}: diameter_mm {values[3]:g} must be > 0 (a negative "
                                                    f"diameter marks a non-nodule in annotations_excluded.csv: "
                                                    f"use annotations.csv)")
                out.setdefault(uid, []).append({"coord_lps": values[:3], "diameter_mm": values[3], "line": line})
    except UnicodeDecodeError:
        raise AnnotationError(csv_path, "not a text (UTF-8) csv file") from None
    except csv.Error as exc:
        raise AnnotationError(csv_path, f"malformed csv ({exc})") from None
    return out


# -------------------------------------------------------------------------------------------------
# .mhd / .raw volumes
# -------------------------------------------------------------------------------------------------

def find_mhd_files(root) -> list[Path]:
    """Every ``*.mhd`` under ``root`` (any nesting, e.g. LUNA16's ``subset0..9``), sorted; hidden files skipped.

    ``root`` may also be one .mhd file. Raises InputNotFoundError when ``root`` does not exist.
    """
    root = Path(root)
    if not root.exists():
        raise InputNotFoundError(root, "no such file or folder")
    if root.is_file():
        return [root] if root.suffix.lower() == ".mhd" else []
    return sorted(p for p in root.rglob("*") if p.suffix.lower() == ".mhd" and p.is_file()
                  and not p.name.startswith("."))


def read_mhd_header(mhd_path) -> dict[str, str]:
    """``Key = Value`` fields of a MetaImage header (up to ``ElementDataFile``, which ends it).

    Raises DicomReadError when the file is not a readable MetaImage header or lacks a required field.
    """
    mhd_path = Path(mhd_path)
    with open(mhd_path, "rb") as f:
        head = f.read(MAX_HEADER_BYTES)
    fields: dict[str, str] = {}
    for raw_line in head.splitlines():
        try:
            line = raw_line.decode("ascii").strip()
        except UnicodeDecodeError:
            raise DicomReadError(mhd_path, "not a MetaImage header (binary content)") from None
        if not line:
            continue
        if "=" not in line:
            raise DicomReadError(mhd_path, f"not a MetaImage header (line {line[:60]!r} is not 'Key = Value')")
        key, value = (s.strip() for s in line.split("=", 1))
        fields[key.lower()] = value
        if key.lower() == "elementdatafile":
            break
    for key in ("NDims", "DimSize", "ElementType", "ElementDataFile"):
        if key.lower() not in fields:
            raise DicomReadError(mhd_path, f"MetaImage header has no {key} field")
    return fields


def _check_data_file(mhd_path: Path, fields: dict[str, str]) -> list[Path]:
    """The data file(s) a header names must exist and (uncompressed) hold all the voxels -> their paths."""
    name = fields["elementdatafile"]
    if name.upper() == "LOCAL":
        data_file, offset_in_file = mhd_path, True
    elif name.upper().startswith("LIST") or "%" in name or " " in name:
        return []  # multi-file layouts: SimpleITK checks them
    else:
        data_file, offset_in_file = mhd_path.parent / name, False
        if not data_file.is_file():
            raise InputNotFoundError(data_file, f"data file named by {mhd_path.name} (ElementDataFile) is missing")
    compressed = fields.get("compresseddata", "false").lower() == "true"
    elem = MET_ELEMENT_BYTES.get(fields["elementtype"].upper())
    try:
        dims = [int(v) for v in fields["dimsize"].split()]
        channels = int(fields.get("elementnumberofchannels", "1"))
        header_size = int(fields.get("headersize", "0"))
    except ValueError:
        raise DicomReadError(mhd_path, f"MetaImage header has a non-integer DimSize / channels / HeaderSize "
                                       f"({fields['dimsize']!r})") from None
    if not compressed and elem is not None and not offset_in_file:
        need = int(np.prod(dims, dtype=np.int64)) * channels * elem + max(header_size, 0)
        have = data_file.stat().st_size
        if have < need:
            raise DicomReadError(data_file, f"truncated: {have} bytes, the header {mhd_path.name} needs {need} "
                                            f"({'x'.join(map(str, dims))} {fields['elementtype']})")
    return [data_file] if not offset_in_file else []


def load_luna16_volume(mhd_path) -> tuple[np.ndarray, Geometry, str]:
    """Read one LUNA16 scan -> ``(hu_zyx int16, geometry (LPS mm), series_uid)``.

    ``hu_zyx`` is (z, y, x) = (k, j, i) with values below -1024 HU clipped to -1024; the series UID
    is the file stem (LUNA16 names files ``<seriesuid>.mhd``). Raises InputNotFoundError (missing
    .mhd / data file), DicomReadError (unreadable or truncated file) or SeriesError (not a 3D
    single-channel image).
    """
    hu, geometry, uid, _ = _read_volume(mhd_path)
    return hu, geometry, uid


def _read_volume(mhd_path) -> tuple[np.ndarray, Geometry, str, list[Path]]:
    """:func:`load_luna16_volume` plus the data file(s) the header names."""
    import SimpleITK as sitk

    mhd_path = Path(mhd_path)
    if not mhd_path.is_file():
        raise InputNotFoundError(mhd_path, "no such .mhd file")
    fields = read_mhd_header(mhd_path)
    try:
        ndims = int(fields["ndims"])
    except ValueError:
        raise DicomReadError(mhd_path, f"MetaImage header NDims {fields['ndims']!r} is not an integer") from None
    if ndims != 3:
        raise SeriesError(mhd_path, f"a {ndims}D image (NDims = {ndims}): a CT volume must be 3D")
    data_files = _check_data_file(mhd_path, fields)
    reader = sitk.ImageFileReader()
    reader.SetImageIO("MetaImageIO")
    reader.SetFileName(str(mhd_path))
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        detail = [s for s in str(exc).splitlines() if s.strip()][-1]
        raise DicomReadError(mhd_path, f"unreadable MetaImage ({detail.strip()})") from None
    if image.GetDimension() != 3:
        raise SeriesError(mhd_path, f"a {image.GetDimension()}D image: a CT volume must be 3D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise SeriesError(mhd_path, f"{image.GetNumberOfComponentsPerPixel()} components per voxel (RGB / vector "
                                    f"image): a CT volume has one value (HU) per voxel")
    view = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(view.dtype, np.floating):
        view = np.rint(np.nan_to_num(view, nan=HU_AIR))
    hu = np.clip(view, HU_AIR, HU_MAX).astype(np.int16, copy=False)
    return hu, Geometry.from_sitk(image), mhd_path.stem, data_files


# -------------------------------------------------------------------------------------------------
# spheres
# -------------------------------------------------------------------------------------------------

def _sub_geometry(geometry: Geometry, lo_ijk, hi_ijk) -> Geometry:
    """The grid of voxels [lo, hi) (i, j, k) of ``geometry``."""
    origin = geometry.voxel_to_world(np.asarray(lo_ijk, dtype=float))
    return Geometry(tuple(float(v) for v in origin), geometry.spacing, geometry.direction,
                    tuple(int(h - l) for l, h in zip(lo_ijk, hi_ijk)))


def _sphere_box(geometry: Geometry, centre_lps, diameter_mm: float):
    """Voxel box [lo, hi) (i, j, k), clipped to the image, that holds the sphere; None if it misses the image."""
    centre = geometry.world_to_voxel(np.asarray(centre_lps, dtype=float))
    half = np.ceil(diameter_mm / 2.0 / np.asarray(geometry.spacing)) + 1
    lo = np.maximum(np.floor(centre - half).astype(int), 0)
    hi = np.minimum(np.ceil(centre + half).astype(int) + 1, np.asarray(geometry.shape))
    return None if np.any(hi <= lo) else (lo, hi)


def nodule_masks(geometry: Geometry, annotations_for_series: list[dict],
                 hu_zyx: np.ndarray | None = None) -> tuple[np.ndarray, list[dict]]:
    """Annotation rows of one scan -> ``(instance_mask_zyx uint16, records)``.

    Row n (1-based, file order) becomes the sphere of its diameter around its centre (LPS mm),
    instance id n; a voxel inside two spheres belongs to the nearer centre (the earlier row on a
    tie). Each record: :func:`data_prep.masks.nodule_stats` of the final mask (centre voxel (i, j, k)
    and LPS mm, bbox, volume, equivalent diameter, mean HU when ``hu_zyx`` is given) plus
    ``nodule_id``, ``diameter_mm_annotated``, ``centre_lps_annotated``, ``source="luna16"``,
    ``n_readers=None`` (LUNA16 does not say) and ``min_readers=3``. A sphere entirely outside the
    image keeps its record with ``n_voxels == 0``.
    """
    instance = np.zeros(geometry.shape_zyx, dtype=np.uint16)
    centres = [np.asarray(r["coord_lps"], dtype=float) for r in annotations_for_series]
    for nid, row in enumerate(annotations_for_series, start=1):
        box = _sphere_box(geometry, row["coord_lps"], row["diameter_mm"])
        if box is None:
            continue
        lo, hi = box
        sphere = sphere_mask(_sub_geometry(geometry, lo, hi), row["coord_lps"], row["diameter_mm"]).astype(bool)
        window = instance[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
        window[sphere & (window == 0)] = nid
        contested = sphere & (window != 0) & (window != nid)
        if contested.any():
            kk, jj, ii = np.nonzero(contested)
            world = geometry.voxel_to_world(np.stack([ii + lo[0], jj + lo[1], kk + lo[2]], axis=-1))
            owners = window[kk, jj, ii]
            d_own = np.linalg.norm(world - np.stack([centres[o - 1] for o in owners]), axis=-1)
            d_new = np.linalg.norm(world - centres[nid - 1], axis=-1)
            take = d_new < d_own
            window[kk[take], jj[take], ii[take]] = nid

    records = []
    for nid, row in enumerate(annotations_for_series, start=1):
        box = _sphere_box(geometry, row["coord_lps"], row["diameter_mm"])
        if box is None:
            stats = nodule_stats(np.zeros((1, 1, 1), dtype=bool), geometry)
        else:
            lo, hi = box
            crop = np.s_[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
            stats = nodule_stats(instance[crop] == nid, _sub_geometry(geometry, lo, hi),
                                 hu_zyx[crop] if hu_zyx is not None else None)
            if stats["n_voxels"]:
                stats["centre_voxel"] = [c + float(o) for c, o in zip(stats["centre_voxel"], lo)]
                b = stats["bbox_voxel"]
                stats["bbox_voxel"] = [int(v + lo[n % 3]) for n, v in enumerate(b)]
        records.append({"nodule_id": nid, **stats, "diameter_mm_annotated": float(row["diameter_mm"]),
                        "centre_lps_annotated": [float(v) for v in row["coord_lps"]], "source": "luna16",
                        "n_readers": None, "min_readers": LUNA16_MIN_READERS})
    return instance, records


# -------------------------------------------------------------------------------------------------
# cases
# -------------------------------------------------------------------------------------------------

def load_luna16_case(mhd_path, annotations: dict[str, list[dict]]) -> dict:
    """One LUNA16 scan with its nodules -> a case dict (see :func:`iter_luna16_cases`)."""
    mhd_path = Path(mhd_path)
    hu, geometry, uid, data_files = _read_volume(mhd_path)
    rows = annotations.get(uid, [])
    instance, records = nodule_masks(geometry, rows, hu)
    warnings = [f"{mhd_path.name}: nodule {r['nodule_id']} (annotations line {rows[r['nodule_id'] - 1]['line']}, "
                f"LPS {np.round(r['centre_lps_annotated'], 1).tolist()}) lies outside the image: no voxels"
                for r in records if r["n_voxels"] == 0]
    for w in warnings:
        log.warning("%s", w)
    return {"case_id": luna16_case_id(uid), "patient_id": uid, "series_uid": uid, "source": "luna16",
            "hu_zyx": hu, "geometry": geometry, "instance_mask": instance, "records": records,
            "n_nodules": len(records), "warnings": warnings,
            "source_files": [str(mhd_path)] + [str(p) for p in data_files]}


def unmatched_annotations(annotations: dict[str, list[dict]], mhd_paths: list[Path]) -> list[str]:
    """Series UIDs that have annotation rows but no ``<uid>.mhd`` among ``mhd_paths`` (sorted)."""
    present = {Path(p).stem for p in mhd_paths}
    return sorted(uid for uid in annotations if uid not in present)


def iter_luna16_cases(root, annotations_csv,
                      on_error: Callable[[Path, DataPrepError], None] | None = None) -> Iterator[dict]:
    """Lazily yield one case per ``.mhd`` under ``root`` (one volume in memory at a time).

    Each case: ``case_id`` (:func:`luna16_case_id`), ``patient_id`` (= series UID, LUNA16 has no
    patient ids), ``series_uid``, ``hu_zyx`` (z, y, x) int16, ``geometry`` (LPS), ``instance_mask``
    (z, y, x) uint16 (all zero for a scan without annotation rows), ``records`` (one per row, see
    :func:`nodule_masks`), ``n_nodules``, ``warnings``, ``source_files`` (.mhd and its data file).

    The csv is read first (a bad row fails before any volume is read). A scan that cannot be read
    raises its DataPrepError, unless ``on_error(path, exc)`` is given: then it is reported there and
    skipped. A second file with an already seen series UID is skipped with a warning. Raises
    InputNotFoundError when ``root`` holds no .mhd file.
    """
    annotations = read_annotations(annotations_csv)
    paths = find_mhd_files(root)
    if not paths:
        raise InputNotFoundError(root, "no .mhd files found (expected LUNA16's subset*/<seriesuid>.mhd + .raw)")
    missing = unmatched_annotations(annotations, paths)
    if missing:
        log.warning("%s: %d annotated series have no .mhd under %s (e.g. %s): their rows are ignored",
                    annotations_csv, len(missing), root, missing[0])
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            log.warning("%s: series %s already read from %s: skipped", path, path.stem, seen[path.stem])
            continue
        seen[path.stem] = path
        try:
            case = load_luna16_case(path, annotations)
        except DataPrepError as exc:
            if on_error is None:
                raise
            on_error(path, exc)
            continue
        yield case
