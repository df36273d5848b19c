"""DICOM Segmentation (SEG) output that a PACS, OHIF or 3D Slicer opens on top of the source CT series.

:func:`write_dicom_seg` encodes a nodule instance mask (on data_prep's converted grid) as a BINARY SEG
object (highdicom): same Frame of Reference as the CT, each frame referencing the CT slice it lies on
(matched by ImagePositionPatient, never by file name or instance number), one segment per nodule
("nodule <id>", SNOMED "Morphologically Abnormal Structure" / "Nodule", algorithm lungnod, Artificial
Intelligence). Empty frames are omitted. A mask with no nodule has nothing to encode: the function
raises ``ValueError`` and the pipeline writes no SEG for that case (its JSON report says 0 nodules).

Grid: the converted volume is (z, y, x) = (slice sorted by position, DICOM row, DICOM column), so frame
``k`` of the mask is the CT slice at world position ``geometry.voxel_to_world((0, 0, k))``. A series that
data_prep resampled (gantry tilt) has no source slice per frame: refused with ValueError.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom

from lungnod_ext.coords import Geometry

POSITION_TOLERANCE_MM = 0.05


def _series_datasets(source_dicom_dir, series_uid: str | None) -> list[pydicom.Dataset]:
    """Every CT image of the series (pixel data included) under ``source_dicom_dir``."""
    out = []
    for root, _, files in os.walk(source_dicom_dir):
        for name in files:
            path = os.path.join(root, name)
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:
                continue
            if "ImagePositionPatient" not in ds or (series_uid and ds.get("SeriesInstanceUID") != series_uid):
                continue
            out.append(path)
    if not out:
        raise ValueError(f"{source_dicom_dir}: no CT slices of series {series_uid or '(any)'} found")
    datasets = [pydicom.dcmread(p) for p in out]
    uids = {d.SeriesInstanceUID for d in datasets}
    if len(uids) > 1:
        raise ValueError(f"{source_dicom_dir}: several series ({len(uids)}); give series_uid")
    return datasets


def _slice_sources(datasets: list[pydicom.Dataset], geometry: Geometry) -> list[pydicom.Dataset]:
    """The source dataset of each mask slice k (matched by ImagePositionPatient)."""
    positions = np.array([[float(v) for v in d.ImagePositionPatient] for d in datasets])
    sources = []
    for k in range(geometry.shape[2]):
        world = geometry.voxel_to_world((0.0, 0.0, float(k)))
        dist = np.linalg.norm(positions - world, axis=1)
        best = int(np.argmin(dist))
        if dist[best] > POSITION_TOLERANCE_MM:
            raise ValueError(f"mask slice {k} (LPS {np.round(world, 2).tolist()}) lies on no source CT slice "
                             f"(nearest {dist[best]:.2f} mm away): resampled (tilted) series cannot be referenced")
        ds = datasets[best]
        if (int(ds.Rows), int(ds.Columns)) != (geometry.shape[1], geometry.shape[0]):
            raise ValueError(f"source slice {ds.SOPInstanceUID} is {ds.Rows}x{ds.Columns}, mask slice is "
                             f"{geometry.shape[1]}x{geometry.shape[0]}")
        sources.append(ds)
    return sources


def write_dicom_seg(instance_mask_zyx: np.ndarray, geometry: Geometry, source_dicom_dir, segments: Sequence[Mapping],
                    out_path, series_uid: str | None = None, series_number: int = 901) -> Path:
    """Write the SEG (module doc) atomically and return its path.

    instance_mask_zyx: (z, y, x) integers, value ``n`` (1..len(segments)) = segment n, 0 = background.
    segments: one dict per segment (e.g. the nodule dicts of the report: ``id``, ``probability``,
    ``diameter_mm``); segment n is described by ``segments[n-1]``.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    mask = np.asarray(instance_mask_zyx)
    if mask.shape != geometry.shape_zyx:
        raise ValueError(f"mask shape {mask.shape} does not match the geometry (z, y, x) {geometry.shape_zyx}")
    if not segments or not mask.any():
        raise ValueError("no nodule to encode: a DICOM SEG needs at least one non-empty segment")
    if int(mask.max()) > len(segments):
        raise ValueError(f"mask holds label {int(mask.max())} but only {len(segments)} segments are described")
    sources = _slice_sources(_series_datasets(source_dicom_dir, series_uid), geometry)
    algorithm = hd.AlgorithmIdentificationSequence(name="lungnod", version=_version(),
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for n, seg in enumerate(segments, start=1):
        label = f"nodule {seg.get('id', n)}"
        if "probability" in seg:
            label += f" p={float(seg['probability']):.2f}"
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=n, segment_label=label[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Nodule,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm))
    # highdicom: a (frames, rows, cols) label map whose frames follow source_images
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask.astype(np.uint16),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="lungnod", manufacturer_model_name="lung_nodule_ct_segmentation + classification",
        software_versions=_version(), device_serial_number="0", content_description="lung nodules (lungnod)",
        series_description="lungnod nodules")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part-{uuid.uuid4().hex[:8]}")
    try:
        seg.save_as(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def read_dicom_seg(path, geometry: Geometry) -> np.ndarray:
    """A SEG written by :func:`write_dicom_seg` -> (z, y, x) uint16 segment numbers on ``geometry``'s grid
    (frames placed by their ImagePositionPatient)."""
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.reshape(-1, int(ds.Rows), int(ds.Columns))
    out = np.zeros(geometry.shape_zyx, dtype=np.uint16)
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ipp = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        k = int(round(float(geometry.world_to_voxel(ipp)[2])))
        ident = item if "SegmentIdentificationSequence" in item else shared  # one segment: shared group
        segment = int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        out[k][frames[f] > 0] = segment
    return out


def _version() -> str:
    from lungnod_ext import __version__

    return __version__
