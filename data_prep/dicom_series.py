"""DICOM series discovery, selection, checks and reading -> int16 HU volume + geometry.

Discovery reads only headers (pydicom, no pixel data) of every file under a root, in any nesting,
groups them by SeriesInstanceUID, and decides per series: usable axial CT, or skipped with a reason
(not CT, scout/localizer, dose report, ...). A usable series is sorted by ImagePositionPatient along
the slice normal (never by file name) and checked (missing slice, duplicates, mixed geometry, gantry
tilt). Pixels are decoded by SimpleITK/GDCM (JPEG, JPEG-LS, JPEG 2000 and RLE included).

Volumes are (z, y, x) = (slice k, row j, column i) int16 Hounsfield units; slice k = 0 is the lowest
position along the normal ``row_dir x col_dir`` (for standard axial CT: the most inferior slice).
Geometry is LPS mm (:class:`data_prep.coords.Geometry`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from data_prep.errors import DicomReadError, InputNotFoundError, SeriesError
from data_prep.coords import Geometry
from data_prep.recon_kernels import kernel_name
from data_prep.slice_profile import slice_thickness_or_none

log = logging.getLogger(__name__)

HU_AIR = -1024
HU_MAX = 32767
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
UNCOMPRESSED_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
RLE_LOSSLESS = "1.2.840.10008.1.2.5"   # decoded by pydicom (pylibjpeg-rle): 6-8x faster than SimpleITK's GDCM on LIDC
HEADER_TAGS = [
    "Modality", "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID",
    "FrameOfReferenceUID", "ImageType", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "NumberOfFrames", "RescaleSlope", "RescaleIntercept",
    "GantryDetectorTilt", "SeriesDescription", "InstanceNumber", "AcquisitionNumber", "SliceThickness",
    "Manufacturer", "ConvolutionKernel",
]
SCOUT_WORDS = ("LOCALIZER", "SCOUT", "TOPOGRAM", "SURVIEW", "SCANOGRAM")
DOSE_WORDS = ("DOSE", "SCREEN SAVE", "REPORT")
MAX_AXIAL_ANGLE_DEG = 30.0     # slice normal within this angle of the body axis counts as axial
POSITION_TOL_MM = 1e-3
SPACING_REL_TOL = 0.05        # slices further apart than 1.5x the spacing are a gap; others must agree to 5%
TILT_TOL_DEG = 0.2
MIN_SLICES = 3
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"   # SOP classes of (multi-frame) secondary captures


@dataclass
class DicomHeader:
    """The header fields of one DICOM file that series selection needs."""

    path: Path
    modality: str
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    patient_id: str
    frame_of_reference_uid: str
    image_type: tuple[str, ...]
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    rows: int
    columns: int
    samples_per_pixel: int
    n_frames: int
    transfer_syntax: str
    gantry_tilt_deg: float
    series_description: str
    acquisition_number: int | None
    pixel_bytes_expected: int
    manufacturer: str = ""
    convolution_kernel: str = ""     # the reconstruction kernel (data_prep.recon_kernels.kernel_name); "" unknown
    instance_number: int | None = None   # InstanceNumber: the image number a PACS viewer shows; None if absent
    slice_thickness_mm: float | None = None   # SliceThickness (mm, the slice profile's width); None if absent or not > 0


@dataclass
class SeriesPlan:
    """A usable CT series: files sorted along the normal, geometry, and notes (warnings) on it."""

    series_uid: str
    study_uid: str
    patient_id: str
    case_id: str
    files: list[Path]
    headers: list[DicomHeader]
    geometry: Geometry
    tilt_offsets_mm: np.ndarray | None = None   # (n_slices, 2) in-plane (i, j) shift in mm, when tilted
    warnings: list[str] = field(default_factory=list)

    @cached_property
    def folder(self) -> Path:
        return Path(os.path.commonpath([str(f.parent) for f in self.files]))


@dataclass
class SkippedSeries:
    series_uid: str
    folder: str
    n_files: int
    reason: str
    error: bool = False   # True: a CT series we should have converted but cannot (user must look)


def case_id_for(patient_id: str, series_uid: str) -> str:
    """Stable, readable case id: ``<patient id>_<8 hex of sha1(series UID)>``, filesystem safe."""
    pid = re.sub(r"[^A-Za-z0-9.\-]+", "-", (patient_id or "").strip()).strip("-.") or "anon"
    return f"{pid}_{hashlib.sha1(series_uid.encode()).hexdigest()[:8]}"


def _floats(value, n: int):
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def read_header(path: Path) -> DicomHeader | None:
    """Header of one file, or None for a file that is not DICOM at all (silently ignored).

    Raises DicomReadError for a file that claims to be DICOM but cannot be read or is truncated.
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
    except InvalidDicomError:
        if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
            raise DicomReadError(path, "not a readable DICOM file (no DICM preamble / bad header)")
        return None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on damaged files
        raise DicomReadError(path, f"unreadable DICOM header ({type(exc).__name__}: {exc})") from None
    if "SOPClassUID" not in ds and "Modality" not in ds:
        return None
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "1.2.840.10008.1.2")) if meta is not None else "1.2.840.10008.1.2"
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    spacing = _floats(ds.get("PixelSpacing"), 2)
    tilt = ds.get("GantryDetectorTilt", 0.0)
    try:
        tilt = float(tilt or 0.0)
    except (TypeError, ValueError):
        tilt = 0.0
    acq = ds.get("AcquisitionNumber")
    try:
        instance_number = int(ds.get("InstanceNumber"))
    except (TypeError, ValueError):
        instance_number = None
    thickness = slice_thickness_or_none(ds.get("SliceThickness"))
    return DicomHeader(
        path=path,
        modality=str(ds.get("Modality", "")).upper(),
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        patient_id=str(ds.get("PatientID", "")),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
        image_type=tuple(str(v).upper() for v in (ds.get("ImageType") or ())),
        position=_floats(ds.get("ImagePositionPatient"), 3),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        pixel_spacing=spacing,
        rows=rows,
        columns=cols,
        samples_per_pixel=spp,
        n_frames=frames,
        transfer_syntax=syntax,
        gantry_tilt_deg=tilt,
        series_description=str(ds.get("SeriesDescription", "")),
        acquisition_number=int(acq) if acq not in (None, "") else None,
        pixel_bytes_expected=rows * cols * spp * frames * bits // 8,
        manufacturer=str(ds.get("Manufacturer", "") or "").strip(),
        convolution_kernel=kernel_name(ds.get("ConvolutionKernel")),
        instance_number=instance_number,
        slice_thickness_mm=thickness,
    )


def _check_not_truncated(h: DicomHeader) -> None:
    if h.transfer_syntax in UNCOMPRESSED_SYNTAXES and h.pixel_bytes_expected:
        if h.path.stat().st_size < h.pixel_bytes_expected:
            raise DicomReadError(h.path, f"truncated DICOM file: {h.path.stat().st_size} bytes, pixel data alone needs "
                                         f"{h.pixel_bytes_expected}")


def iter_files(root: Path):
    """Every regular file under ``root`` (any nesting), hidden files and folders excluded, sorted."""
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and not name.lower().endswith((".xml", ".json", ".csv", ".txt", ".md", ".nii", ".gz", ".mhd", ".raw", ".zip")):
                yield Path(dirpath) / name


def discover_series(root) -> tuple[list[SeriesPlan], list[SkippedSeries], list[str]]:
    """Scan ``root`` and sort its DICOM files into usable CT series and skipped ones.

    Returns (plans, skipped, unreadable) where ``unreadable`` holds one message per damaged file.
    Raises InputNotFoundError if ``root`` does not exist or holds no DICOM file at all.
    """
    root = Path(root)
    if not root.exists():
        raise InputNotFoundError(root, "no such file or folder")
    by_series: dict[str, list[DicomHeader]] = defaultdict(list)
    unreadable: list[str] = []
    for path in iter_files(root):
        try:
            h = read_header(path)
            if h is None:
                continue
            _check_not_truncated(h)
        except DicomReadError as exc:
            unreadable.append(str(exc))
            log.warning("skipped file %s", exc)
            continue
        by_series[h.series_uid or f"<no SeriesInstanceUID in {path.parent}>"].append(h)
    if not by_series:
        raise InputNotFoundError(root, "no DICOM files found" + (f" ({len(unreadable)} unreadable)" if unreadable else ""))
    plans, skipped = [], []
    for series_uid in sorted(by_series):
        headers = by_series[series_uid]
        try:
            plans.append(plan_series(series_uid, headers))
        except SeriesError as exc:
            folder = os.path.commonpath([str(h.path.parent) for h in headers])
            skipped.append(SkippedSeries(series_uid, folder, len(headers), exc.problem, error=bool(getattr(exc, "is_error", True))))
            log.warning("skipped series %s in %s: %s", series_uid, folder, exc.problem)
    return plans, skipped, unreadable


class _NotWanted(SeriesError):
    """A series we skip on purpose (not CT, scout, dose report): logged, not an error."""

    is_error = False


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def _stray_reason(h: DicomHeader, orientation, size) -> str | None:
    """Why one image is not part of its series' axial stack (``orientation`` / ``size``: the stack's), or None."""
    if any(w in h.image_type for w in SCOUT_WORDS):
        return "localizer, ImageType " + "\\".join(h.image_type)
    if h.sop_class_uid.startswith(SECONDARY_CAPTURE_PREFIX) or any(w in t for t in h.image_type for w in DOSE_WORDS):
        return "secondary capture / dose report"
    if h.orientation is None or np.abs(np.asarray(h.orientation) - orientation).max() > 1e-4:
        return "other orientation"
    if (h.rows, h.columns) != size:
        return f"other size {h.rows}x{h.columns}"
    return None


def _drop_strays(folder: Path, headers: list[DicomHeader]) -> tuple[list[DicomHeader], str | None]:
    """Localizers, secondary captures and images of another orientation or size that share the series UID
    of an axial stack (some PACS exports do this) -> (the stack, one warning naming the dropped files).
    Unchanged when the strays are not a clear minority: then the whole series is judged as it is."""
    voters = [h for h in headers if h.orientation is not None and not any(w in h.image_type for w in SCOUT_WORDS)]
    if not voters:
        return headers, None
    votes = [(tuple(np.round(h.orientation, 3)), (h.rows, h.columns)) for h in voters]
    stack = voters[votes.index(max(set(votes), key=votes.count))]
    reasons = {id(h): _stray_reason(h, np.asarray(stack.orientation), (stack.rows, stack.columns)) for h in headers}
    kept = [h for h in headers if reasons[id(h)] is None]
    if len(kept) == len(headers) or len(kept) < max(MIN_SLICES, len(headers) // 2 + 1):
        return headers, None
    dropped = [f"{h.path.name} ({reasons[id(h)]})" for h in headers if reasons[id(h)] is not None]
    message = (f"dropped {len(dropped)} image(s) that are not part of the axial stack of {len(kept)}: "
               + ", ".join(dropped[:5]) + (f" and {len(dropped) - 5} more" if len(dropped) > 5 else ""))
    log.warning("%s: %s", folder, message)
    return kept, message


def plan_series(series_uid: str, headers: list[DicomHeader]) -> SeriesPlan:
    """Select, sort and check one series. Raises SeriesError (or its skip subclass) with the reason."""
    folder = Path(os.path.commonpath([str(h.path.parent) for h in headers]))
    headers, stray_warning = _drop_strays(folder, headers)
    first = headers[0]
    modalities = sorted({h.modality for h in headers})
    if modalities != ["CT"]:
        raise _NotWanted(folder, f"modality {'/'.join(m or '?' for m in modalities)}, not CT")
    image_types = {w for h in headers for w in h.image_type}
    if any(w in image_types for w in SCOUT_WORDS):
        raise _NotWanted(folder, "scout / localizer images (ImageType " + "\\".join(first.image_type) + ")")
    if any(w in t for t in image_types for w in DOSE_WORDS) or first.sop_class_uid.startswith(SECONDARY_CAPTURE_PREFIX):
        raise _NotWanted(folder, "dose report / secondary capture, not an image series")
    if first.sop_class_uid == ENHANCED_CT_IMAGE_STORAGE or any(h.n_frames > 1 for h in headers):
        raise SeriesError(folder, "multi-frame (Enhanced CT) series are not supported; export as classic single-frame CT")
    if any(h.samples_per_pixel != 1 for h in headers):
        raise SeriesError(folder, "colour (RGB) pixel data, not a CT image")
    missing = [h.path.name for h in headers if h.position is None or h.orientation is None or h.pixel_spacing is None]
    if missing:
        raise SeriesError(folder, f"{len(missing)} file(s) lack ImagePositionPatient/ImageOrientationPatient/PixelSpacing "
                                  f"(e.g. {missing[0]})")
    if len(headers) < MIN_SLICES:
        raise _NotWanted(folder, f"only {len(headers)} image(s): not a volume (scout or key image?)")

    iop = np.array([h.orientation for h in headers])
    if np.abs(iop - iop[0]).max() > 1e-4:
        raise SeriesError(folder, "slices with different ImageOrientationPatient (mixed or reformatted series)")
    row_dir, col_dir = _unit(iop[0][:3]), _unit(iop[0][3:])
    normal = np.cross(row_dir, col_dir)
    angle = np.degrees(np.arccos(min(1.0, abs(normal[2]))))
    if angle > MAX_AXIAL_ANGLE_DEG:
        raise _NotWanted(folder, f"not axial (slice normal {angle:.0f} deg from the body axis: coronal/sagittal)")
    ps = np.array([h.pixel_spacing for h in headers])
    if np.abs(ps - ps[0]).max() > 1e-4:
        raise SeriesError(folder, f"inconsistent PixelSpacing inside the series ({ps.min():.4g} to {ps.max():.4g} mm)")
    sizes = {(h.rows, h.columns) for h in headers}
    if len(sizes) > 1:
        raise SeriesError(folder, f"slices of different sizes {sorted(sizes)}")

    warnings: list[str] = [stray_warning] if stray_warning else []
    pos = np.array([h.position for h in headers])
    d = pos @ normal
    order = np.argsort(d, kind="stable")
    headers = [headers[i] for i in order]
    pos, d = pos[order], d[order]

    # Duplicates: the same position twice.
    keep = [0]
    for n in range(1, len(headers)):
        if abs(d[n] - d[keep[-1]]) > POSITION_TOL_MM:
            keep.append(n)
            continue
        a, b = headers[keep[-1]], headers[n]
        if a.sop_instance_uid == b.sop_instance_uid or _same_pixels(a.path, b.path):
            warnings.append(f"duplicate slice at {d[n]:.2f} mm ({b.path.name} repeats {a.path.name}): dropped")
            continue
        raise SeriesError(folder, f"two different slices at the same position {d[n]:.2f} mm ({a.path.name}, {b.path.name}):"
                                  " several acquisitions mixed in one series")
    if len(keep) != len(headers):
        headers, pos, d = [headers[i] for i in keep], pos[keep], d[keep]
        log.warning("%s: %s", folder, "; ".join(warnings))

    steps = np.diff(d)
    spacing_z = float(np.median(steps))
    if spacing_z <= 0:
        raise SeriesError(folder, "slices do not advance along the normal")
    gaps = np.nonzero(steps > spacing_z * 1.5)[0]
    if gaps.size:
        g = gaps[0]
        raise SeriesError(folder, f"missing slice(s): gap of {steps[g]:.2f} mm between {headers[g].path.name} and "
                                  f"{headers[g + 1].path.name} (slice spacing {spacing_z:.2f} mm)")
    if np.abs(steps - spacing_z).max() > SPACING_REL_TOL * spacing_z:
        raise SeriesError(folder, f"irregular slice spacing ({steps.min():.3f} to {steps.max():.3f} mm)")

    # Gantry tilt: slice origins drift in-plane along the stack.
    inplane = (pos - pos[0]) - np.outer(d - d[0], normal)
    drift = np.linalg.norm(inplane[-1]) if len(pos) > 1 else 0.0
    tilt_deg = float(np.degrees(np.arctan2(drift, d[-1] - d[0])))
    tilt_offsets = None
    if tilt_deg > TILT_TOL_DEG or abs(first.gantry_tilt_deg) > TILT_TOL_DEG:
        tilt_offsets = np.stack([inplane @ row_dir, inplane @ col_dir], axis=1)
        warnings.append(f"gantry tilt {max(tilt_deg, abs(first.gantry_tilt_deg)):.1f} deg: slices resampled onto an "
                        "orthogonal grid")
        log.warning("%s: %s", folder, warnings[-1])

    col_spacing, row_spacing = float(ps[0][1]), float(ps[0][0])
    geometry = Geometry(
        origin=tuple(float(v) for v in pos[0]),
        spacing=(col_spacing, row_spacing, spacing_z),
        direction=tuple(float(v) for v in np.stack([row_dir, col_dir, normal], axis=1).ravel()),
        shape=(first.columns, first.rows, len(headers)),
    )
    return SeriesPlan(series_uid=series_uid, study_uid=first.study_uid, patient_id=first.patient_id,
                      case_id=case_id_for(first.patient_id, series_uid), files=[h.path for h in headers],
                      headers=headers, geometry=geometry, tilt_offsets_mm=tilt_offsets, warnings=warnings)


def _same_pixels(a: Path, b: Path) -> bool:
    try:
        return bool(np.array_equal(pydicom.dcmread(a).pixel_array, pydicom.dcmread(b).pixel_array))
    except Exception:  # noqa: BLE001 - undecodable: treat as different
        return False


def read_series_hu(plan: SeriesPlan) -> np.ndarray:
    """Decode the sorted files of ``plan`` -> (z, y, x) int16 HU, padding clipped to -1024 (air).

    Gantry tilt, if any, is undone by shifting each slice in-plane (linear interpolation).
    RLE Lossless series are decoded by pydicom, every other syntax by SimpleITK's GDCM. Raises DicomReadError
    naming the series folder (and, for RLE, the file) if the pixels cannot be decoded.
    """
    if all(h.transfer_syntax == RLE_LOSSLESS for h in plan.headers):
        image, arr = None, _read_rle_series(plan)
    else:
        image, arr = _read_series_sitk(plan)     # arr is a view into image: keep both alive
    if arr.shape != plan.geometry.shape_zyx:
        raise DicomReadError(plan.folder, f"decoded shape {arr.shape} does not match the headers {plan.geometry.shape_zyx}")
    out = np.empty(arr.shape, dtype=np.int16)
    np.clip(arr, HU_AIR, HU_MAX, out=out, casting="unsafe")
    if plan.tilt_offsets_mm is not None:
        out = _untilt(out, plan.tilt_offsets_mm, plan.geometry.spacing)
    return out


def _read_rle_series(plan: SeriesPlan) -> np.ndarray:
    """RLE Lossless files -> (z, y, x) HU (stored value x RescaleSlope + RescaleIntercept, per file), as
    SimpleITK gives them (tested equal), with pydicom's RLE decoder (pylibjpeg-rle's when installed)."""
    from pydicom.pixels import pixel_array
    from pydicom.pixels.decoders import RLELosslessDecoder

    plugin = "pylibjpeg" if "pylibjpeg" in RLELosslessDecoder.available_plugins else ""
    g = plan.geometry
    slices = []
    for path in plan.files:
        try:
            ds = pydicom.dcmread(path)
            stored = pixel_array(ds, decoding_plugin=plugin)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is the file's problem
            raise DicomReadError(plan.folder, f"cannot decode pixel data of {Path(path).name} (RLE Lossless): {exc}") from None
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        if stored.shape != (g.shape_zyx[1], g.shape_zyx[2]):
            raise DicomReadError(plan.folder, f"{Path(path).name}: decoded shape {stored.shape} does not match the headers")
        if slope == 1 and intercept == round(intercept):
            slices.append(stored.astype(np.int32) + int(intercept))
        else:
            slices.append(stored.astype(np.float32) * np.float32(slope) + np.float32(intercept))
    return np.stack(slices)


def _read_series_sitk(plan: SeriesPlan):
    """Any syntax SimpleITK's GDCM decodes -> (the SimpleITK image, its (z, y, x) HU array view); GDCM applies
    the rescale."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in plan.files])
    reader.SetMetaDataDictionaryArrayUpdate(False)
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        syntaxes = sorted({h.transfer_syntax for h in plan.headers} - UNCOMPRESSED_SYNTAXES)
        hint = f" (compressed transfer syntax {', '.join(syntaxes)}: SimpleITK's GDCM could not decode it)" if syntaxes else ""
        msg = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else "decode failed"
        raise DicomReadError(plan.folder, f"cannot decode pixel data{hint}: {msg}") from None
    return image, sitk.GetArrayViewFromImage(image)


def _untilt(hu_zyx: np.ndarray, offsets_mm: np.ndarray, spacing) -> np.ndarray:
    """Shift slice k by its in-plane drift so that all slices share the first slice's (i, j) grid."""
    from scipy.ndimage import shift

    out = np.empty_like(hu_zyx)
    for k in range(hu_zyx.shape[0]):
        di, dj = offsets_mm[k, 0] / spacing[0], offsets_mm[k, 1] / spacing[1]
        # voxel (i, j) of slice k sits at world origin_k + (i, j); on the common grid it is at (i + di, j + dj)
        out[k] = shift(hu_zyx[k].astype(np.float32), (dj, di), order=1, mode="constant", cval=HU_AIR).round().astype(np.int16)
    return out
