"""DICOM Segmentation (SEG) output that a PACS, OHIF or 3D Slicer opens on top of the source CT series.

:func:`write_dicom_seg` encodes a nodule instance mask (on data_prep's converted grid) as a BINARY SEG
object (highdicom): same Study and Frame of Reference as the CT, each frame referencing the CT slice it
lies on (matched by ImagePositionPatient, never by file name or instance number), one segment per nodule
(label ``"nodule <id>"``, plus ``" p=<probability>"`` when known; SNOMED CT "Morphologically Abnormal
Structure" / "Nodule"; algorithm lungnod, family "Artificial Intelligence"). Frames without any nodule
voxel are omitted, as the standard allows. :func:`read_dicom_seg` turns such a SEG back into the
(z, y, x) instance mask.

Grid. data_prep builds the volume from the DICOM slices without any flip or transpose: array axes
(z, y, x) = (slice sorted along the normal ``row_dir x col_dir``, DICOM row, DICOM column), geometry
direction columns = (ImageOrientationPatient row direction, column direction, normal), origin = the
first slice's ImagePositionPatient (LPS mm). So mask slice ``k`` is, pixel for pixel, the CT image whose
ImagePositionPatient is ``geometry.voxel_to_world((0, 0, k))``. The source series is selected and
sorted by data_prep's own series planner (:func:`data_prep.dicom_series.plan_series`), only the files of
the requested SeriesInstanceUID are used, and every mask slice is matched to its source image by
position (within a quarter of the slice spacing along the normal and half a pixel in plane).

Nothing to encode. A SEG must hold at least one segment with at least one frame, so a mask without
any nodule raises :class:`NoNoduleToEncodeError` and no file is written: a PACS user then sees no SEG
series for that study rather than an empty or invalid object, and the caller records "0 nodules" in
its report (the lungnod pipeline writes no SEG for such a case). A gantry-tilted series, which
data_prep resampled onto an orthogonal grid, has no source image per mask slice: refused with
:class:`data_prep.errors.SeriesError`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom

from data_prep.dicom_series import DicomHeader, SeriesPlan, iter_files, plan_series, read_header
from data_prep.errors import DicomReadError, InputNotFoundError, SeriesError
from data_prep.nifti_io import atomic_path
from data_prep.coords import Geometry

log = logging.getLogger(__name__)

ALONG_NORMAL_TOLERANCE = 0.25   # fraction of the slice spacing a mask slice may sit from its CT slice
IN_PLANE_TOLERANCE = 0.5        # fraction of the smaller pixel spacing, in plane
ORIENTATION_TOLERANCE = 1e-3    # direction cosines
SEG_SERIES_DESCRIPTION = "lungnod nodules"


class NoNoduleToEncodeError(ValueError):
    """The instance mask holds no nodule voxel: no DICOM SEG is written (module doc)."""


def find_source_series(source_dicom_dir, series_uid: str | None = None) -> SeriesPlan:
    """The CT series under ``source_dicom_dir`` (any nesting), sorted and checked as data_prep's convert does.

    Only CT images count (a SEG or other object in the same folder is ignored). With ``series_uid`` only
    that series is used; without it the folder must hold exactly one CT series.
    Raises InputNotFoundError (no folder / no such series) or SeriesError (several series, unusable series).
    """
    root = Path(source_dicom_dir)
    if not root.exists():
        raise InputNotFoundError(root, "no such file or folder (source DICOM series of the SEG)")
    by_series: dict[str, list[DicomHeader]] = defaultdict(list)
    for path in iter_files(root):
        try:
            header = read_header(path)
        except DicomReadError as exc:
            log.warning("DICOM SEG source scan: skipped %s", exc)
            continue
        if header is None or header.modality != "CT":
            continue
        if series_uid and header.series_uid != series_uid:
            continue
        by_series[header.series_uid].append(header)
    if not by_series:
        wanted = f"series {series_uid}" if series_uid else "any series"
        raise InputNotFoundError(root, f"no CT image of {wanted} found (source of the DICOM SEG)")
    if len(by_series) > 1:
        raise SeriesError(root, f"{len(by_series)} CT series ({', '.join(sorted(by_series))}): "
                                "give series_uid to say which one the mask belongs to")
    uid, headers = next(iter(by_series.items()))
    return plan_series(uid, headers)


def source_slice_headers(plan: SeriesPlan, geometry: Geometry) -> list[DicomHeader]:
    """The source CT header of each mask slice ``k`` (list index = k), matched by ImagePositionPatient.

    Checks that the source images have the mask's in-plane grid (rows, columns, pixel spacing,
    orientation); raises SeriesError when a mask slice lies on no source slice (tilt, other grid).
    """
    if plan.tilt_offsets_mm is not None:
        raise SeriesError(plan.folder, "gantry-tilted series: data_prep resampled its slices, so the mask slices "
                                       "lie on no source CT image and a DICOM SEG cannot reference them")
    first = plan.headers[0]
    ni, nj, nk = geometry.shape
    if (first.rows, first.columns) != (nj, ni):
        raise SeriesError(plan.folder, f"source images are {first.rows}x{first.columns} (rows x columns), the mask "
                                       f"slices {nj}x{ni}: the mask is not on this series' grid")
    direction = geometry.direction_matrix
    orientation = np.asarray(first.orientation, dtype=float)
    row_dir, col_dir = orientation[:3], orientation[3:]
    if (np.abs(row_dir / np.linalg.norm(row_dir) - direction[:, 0]).max() > ORIENTATION_TOLERANCE
            or np.abs(col_dir / np.linalg.norm(col_dir) - direction[:, 1]).max() > ORIENTATION_TOLERANCE):
        raise SeriesError(plan.folder, f"source ImageOrientationPatient {np.round(orientation, 4).tolist()} differs "
                                       "from the mask grid's row/column directions")
    row_spacing, col_spacing = first.pixel_spacing
    if not np.allclose((col_spacing, row_spacing), geometry.spacing[:2], rtol=1e-3):
        raise SeriesError(plan.folder, f"source PixelSpacing {[row_spacing, col_spacing]} differs from the mask grid's "
                                       f"{[float(geometry.spacing[1]), float(geometry.spacing[0])]} mm")
    positions = np.array([h.position for h in plan.headers], dtype=float)            # (n_files, 3) LPS mm
    slices = geometry.voxel_to_world(np.stack([np.zeros(nk), np.zeros(nk), np.arange(nk)], axis=1))  # (nk, 3)
    normal = direction[:, 2]
    delta = positions[None, :, :] - slices[:, None, :]                                 # (nk, n_files, 3)
    along = delta @ normal
    in_plane = np.linalg.norm(delta - along[..., None] * normal, axis=-1)
    best = np.argmin(np.abs(along), axis=1)
    k = np.arange(nk)
    along_err, in_plane_err = np.abs(along[k, best]), in_plane[k, best]
    bad = np.nonzero((along_err > ALONG_NORMAL_TOLERANCE * float(geometry.spacing[2]))
                     | (in_plane_err > IN_PLANE_TOLERANCE * float(min(geometry.spacing[:2]))))[0]
    if bad.size:
        b = int(bad[0])
        raise SeriesError(plan.folder, f"mask slice {b} (LPS {np.round(slices[b], 2).tolist()}) lies on no source CT "
                                       f"image (nearest: {along_err[b]:.2f} mm along the normal, {in_plane_err[b]:.2f} "
                                       f"mm in plane; {len(bad)} slice(s) off): the mask is not on this series' grid")
    return [plan.headers[i] for i in best]


def segment_label(segment: Mapping, number: int) -> str:
    """``"nodule <id>"`` (``id`` of the candidate dict, else the segment number), plus ``" p=0.87"`` when the
    dict has a ``probability``; at most 64 characters (DICOM LO)."""
    label = f"nodule {segment.get('id', number)}"
    if segment.get("probability") is not None:
        label += f" p={float(segment['probability']):.2f}"
    return label[:64]


def _check_mask(mask: np.ndarray, geometry: Geometry, n_segments: int) -> np.ndarray:
    if mask.shape != geometry.shape_zyx:
        raise ValueError(f"mask shape {mask.shape} does not match the geometry (z, y, x) {geometry.shape_zyx}")
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    if not np.issubdtype(mask.dtype, np.integer):
        if not np.array_equal(mask, np.round(mask)):
            raise ValueError("instance mask must hold integer segment numbers")
        mask = mask.astype(np.int64)
    if not mask.any():
        raise NoNoduleToEncodeError("no nodule voxel in the mask: a DICOM SEG needs at least one non-empty segment, "
                                    "so none is written")
    lo, hi = int(mask.min()), int(mask.max())
    if lo < 0:
        raise ValueError(f"instance mask holds a negative value ({lo})")
    if hi > n_segments:
        raise ValueError(f"mask holds segment number {hi} but only {n_segments} segments are described")
    present = np.zeros(n_segments + 1, bool)
    present[np.unique(mask)] = True
    absent = [n for n in range(1, n_segments + 1) if not present[n]]
    if absent:
        raise ValueError(f"segment(s) {absent} are described but have no voxel in the mask (an empty segment "
                         "would show as a nodule without outline)")
    return mask.astype(np.uint16 if hi > 255 else np.uint8)


def write_dicom_seg(instance_mask_zyx: np.ndarray, geometry: Geometry, source_dicom_dir, segments: Sequence[Mapping],
                    out_path, series_uid: str | None = None, series_number: int = 901,
                    series_description: str = SEG_SERIES_DESCRIPTION) -> Path:
    """Write a BINARY DICOM SEG of ``instance_mask_zyx`` referencing its source CT (module doc), atomically.

    instance_mask_zyx: (z, y, x) integers on ``geometry`` (data_prep's converted grid, LPS): ``n`` in
        1..len(segments) = segment n, 0 = background.
    geometry: the converted image's grid (:class:`data_prep.coords.Geometry`).
    source_dicom_dir: folder holding the source CT series (any nesting; other series may be there too).
    segments: one dict per segment, e.g. the candidate / nodule dicts (``id``, optional ``probability``);
        segment n is described by ``segments[n - 1]``, and each must have at least one voxel.
    series_uid: SeriesInstanceUID of the source CT; needed when the folder holds several CT series.
    Returns the written path. Raises NoNoduleToEncodeError (empty mask, no file written), ValueError
    (mask / segments mismatch), InputNotFoundError / SeriesError (source series missing or not the mask's).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    mask = _check_mask(np.asarray(instance_mask_zyx), geometry, len(segments))
    plan = find_source_series(source_dicom_dir, series_uid)
    headers = source_slice_headers(plan, geometry)
    # highdicom needs the source headers only (patient, study, frame of reference, plane geometry)
    source_images = [pydicom.dcmread(h.path, stop_before_pixels=True) for h in headers]
    version = _version()
    algorithm = hd.AlgorithmIdentificationSequence(name="lungnod", version=version,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=segment_label(seg, n),
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Nodule,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            tracking_id=f"nodule {seg.get('id', n)}", tracking_uid=hd.UID())
        for n, seg in enumerate(segments, start=1)]
    # frame k of the label map <-> source_images[k]; highdicom takes each frame's position from its source
    seg = hd.seg.Segmentation(
        source_images=source_images, pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="lungnod", manufacturer_model_name="lung_nodule_ct_segmentation + classification",
        software_versions=version, device_serial_number="0", content_description="lung nodules (lungnod)",
        content_label="NODULES", series_description=series_description)
    with atomic_path(out_path) as tmp:
        seg.save_as(tmp)
    return Path(out_path)


def read_dicom_seg(path, geometry: Geometry) -> np.ndarray:
    """A BINARY DICOM SEG (e.g. from :func:`write_dicom_seg`) -> (z, y, x) uint16 segment numbers on ``geometry``.

    Each frame is placed by its ImagePositionPatient (LPS) on the grid; frames must share the grid's row/column
    orientation and lie on one of its slices. Where segments overlap, the higher segment number wins.
    Raises ValueError for a SEG that is not BINARY or does not fit the grid.
    """
    ds = pydicom.dcmread(path)
    if ds.get("Modality") != "SEG" or ds.get("SegmentationType") != "BINARY":
        raise ValueError(f"{path}: not a BINARY DICOM SEG (Modality {ds.get('Modality')}, "
                         f"SegmentationType {ds.get('SegmentationType')})")
    ni, nj, nk = geometry.shape
    if (int(ds.Rows), int(ds.Columns)) != (nj, ni):
        raise ValueError(f"{path}: frames are {ds.Rows}x{ds.Columns}, the grid's slices {nj}x{ni} (rows x columns)")
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    frames = ds.pixel_array.reshape(-1, nj, ni)
    out = np.zeros(geometry.shape_zyx, dtype=np.uint16)
    direction = geometry.direction_matrix
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        orientation_group = item if "PlaneOrientationSequence" in item else shared
        iop = np.array([float(v) for v in orientation_group.PlaneOrientationSequence[0].ImageOrientationPatient])
        if np.abs(np.concatenate([direction[:, 0], direction[:, 1]]) - iop).max() > ORIENTATION_TOLERANCE:
            raise ValueError(f"{path}: frame {f} orientation {iop.tolist()} is not the grid's")
        ipp = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        ijk = geometry.world_to_voxel(ipp)
        k = int(round(float(ijk[2])))
        if (abs(ijk[2] - k) > ALONG_NORMAL_TOLERANCE or np.abs(ijk[:2]).max() > IN_PLANE_TOLERANCE
                or not 0 <= k < nk):
            raise ValueError(f"{path}: frame {f} at LPS {ipp.tolist()} lies on no slice of the grid (voxel "
                             f"{np.round(ijk, 2).tolist()})")
        ident = item if "SegmentIdentificationSequence" in item else shared
        segment = int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        target = out[k]
        target[(frames[f] > 0) & (target < segment)] = segment
    return out


def _version() -> str:
    from lungnod_ext import __version__

    return __version__
