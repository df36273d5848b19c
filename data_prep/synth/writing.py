"""Writing a synthetic cohort: DICOM series, LIDC XML reads, ground truth, resumable.

Layout written by :func:`write_cohort` (TCIA's LIDC layout for the images)::

    out_dir/dicom/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/*.dcm + one NNN.xml (LIDC reads)
    out_dir/ground_truth/<SeriesInstanceUID>.json              nodules, readers, marks, geometry
    out_dir/ground_truth/<SeriesInstanceUID>_truth.nii.gz      uint16 instance mask of the true nodules
    out_dir/ground_truth/<SeriesInstanceUID>_consensus.nii.gz  uint16 instance mask, >= 50 % of readers

The series is axial, ImageOrientationPatient [1, 0, 0, 0, 1, 0] (column -> patient left, row ->
posterior; LPS mm), stored = HU + 1024 in 12 bits. DICOM InstanceNumber counts from the top (superior)
slice down, as in LIDC, while the case's slice k = 0 is the most inferior one. XML contours are (column,
row) pixels; the JSON is in LPS mm, voxel (i, j, k), HU and mm^3.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from data_prep.coords import Geometry
from data_prep.errors import OutputError
from data_prep.masks import equivalent_diameter_mm, nodule_stats
from data_prep.nifti_io import write_nifti, write_text_atomic
from data_prep.synth.cohort import (GENERATOR_NAME, SYNTH_VERSION, CohortConfig, PointMark, SyntheticCase,
                                    SyntheticNodule, case_rng, case_uids, generate_case, patient_id_for)
from data_prep.synth.readers import dice, mask_contours

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
LIDC_NAMESPACE = "http://www.nih.gov"
RESCALE_INTERCEPT = -1024


def _ds(v: float) -> str:
    s = f"{v:.6f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


def write_dicom_series(folder: Path, case: SyntheticCase, file_order_rng: np.random.Generator) -> list[Path]:
    """Write the case as CT Image Storage files (explicit VR little endian, 12-bit unsigned, stored =
    HU + 1024) named in a shuffled order. InstanceNumber 1 is the top (most superior) slice."""
    folder.mkdir(parents=True, exist_ok=True)
    g = case.geometry
    nx, ny, nz = g.shape
    names = file_order_rng.permutation(nz) + 1
    paths = []
    for k in range(nz):
        z = case.z_of(k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = case.sop_uids[k]
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = f"LUNGNOD_SYNTH_{SYNTH_VERSION}"
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = case.sop_uids[k]
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20000101"
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = GENERATOR_NAME
        ds.ManufacturerModelName = f"synthetic chest v{SYNTH_VERSION}"
        ds.ReferringPhysicianName = ""
        ds.PatientName = case.patient_id.replace("-", "^")
        ds.PatientID = case.patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = _ds(g.spacing[2])
        ds.KVP = "120"
        ds.PatientPosition = "FFS"
        ds.StudyInstanceUID = case.study_uid
        ds.SeriesInstanceUID = case.series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.SeriesDescription = "Synthetic chest CT, lung nodules (lungnod-synth)"
        ds.InstanceNumber = nz - k
        ds.ImagePositionPatient = [_ds(g.origin[0]), _ds(g.origin[1]), _ds(z)]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.FrameOfReferenceUID = case.uids["frame"]
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(z)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.PixelSpacing = [_ds(g.spacing[1]), _ds(g.spacing[0])]     # row spacing, column spacing
        ds.SpacingBetweenSlices = _ds(g.spacing[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.WindowCenter, ds.WindowWidth = "-600", "1600"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = str(RESCALE_INTERCEPT), "1", "HU"
        stored = np.clip(case.hu_zyx[k].astype(np.int32) - RESCALE_INTERCEPT, 0, 4095).astype("<u2")
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OW"
        path = folder / f"{names[k]:06d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def _xml_points(tag: str, pts, indent: str) -> list[str]:
    out = []
    for x, y in pts:
        out += [f"{indent}<{tag}>", f"{indent}  <xCoord>{int(x)}</xCoord>", f"{indent}  <yCoord>{int(y)}</yCoord>",
                f"{indent}</{tag}>"]
    return out


def lidc_xml_text(case: SyntheticCase) -> str:
    """The case's reads as an LIDC-IDRI XML document (LidcReadMessage, namespace http://www.nih.gov)."""
    L = ['<?xml version="1.0" encoding="UTF-8"?>',
         f'<LidcReadMessage uid="{case.uids["message"]}" xmlns="{LIDC_NAMESPACE}" '
         'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
         'xsi:schemaLocation="http://www.nih.gov http://troll.rad.med.umich.edu/lidc/LidcReadMessage.xsd">',
         "<ResponseHeader>", "<Version>1.8.1</Version>",
         f"<MessageId>{int(hashlib.sha256(case.series_uid.encode()).hexdigest()[:7], 16)}</MessageId>",
         "<DateRequest>2000-01-01</DateRequest>", "<TimeRequest>12:00:00</TimeRequest>",
         "<RequestingSite>removed</RequestingSite>", "<ServicingSite>removed</ServicingSite>",
         "<TaskDescription>Second unblinded read</TaskDescription>", "<CtImageFile>removed</CtImageFile>",
         f"<SeriesInstanceUid>{case.series_uid}</SeriesInstanceUid>",
         "<DateService>2000-01-01</DateService>", "<TimeService>12:00:00</TimeService>",
         "<ResponseDescription>1 - Reading complete</ResponseDescription>",
         f"<StudyInstanceUID>{case.study_uid}</StudyInstanceUID></ResponseHeader>"]

    def roi_lines(k: int, inclusion: bool, pts, ind: str) -> list[str]:
        return ([f"{ind}<roi>", f"{ind}  <imageZposition>{case.z_of(k):.6f}</imageZposition>",
                 f"{ind}  <imageSOP_UID>{case.sop_uids[k]}</imageSOP_UID>",
                 f"{ind}  <inclusion>{'TRUE' if inclusion else 'FALSE'}</inclusion>"]
                + _xml_points("edgeMap", pts, ind + "  ") + [f"{ind}</roi>"])

    for reader in case.readers:
        L += ["<readingSession>", "    <annotationVersion>3.12</annotationVersion>",
              f"    <servicingRadiologistID>{reader}</servicingRadiologistID>"]
        marks = [(n.reader_nodule_ids[reader], n) for n in case.nodules if reader in n.reader_masks]
        marks += [(s.reader_mark_ids[reader], s) for s in case.small_nodules if reader in s.points]
        for mark_id, m in sorted(marks, key=lambda t: t[0]):
            L += ["    <unblindedReadNodule>", f"      <noduleID>{mark_id}</noduleID>"]
            if isinstance(m, SyntheticNodule):
                L.append("      <characteristics>")
                L += [f"        <{c}>{v}</{c}>" for c, v in m.characteristics[reader].items()]
                L.append("      </characteristics>")
                rm = m.reader_masks[reader]
                for dz in range(rm.array.shape[0]):
                    k = rm.offset_zyx[0] + dz
                    for inclusion, pts in mask_contours(rm.array[dz]):
                        pts = pts + np.array([rm.offset_zyx[2], rm.offset_zyx[1]])
                        L += roi_lines(k, inclusion, pts, "      ")
            else:
                i, j, k = m.points[reader]
                L += roi_lines(k, True, [(i, j)], "      ")
            L.append("    </unblindedReadNodule>")
        for s in case.non_nodules:
            if reader in s.points:
                i, j, k = s.points[reader]
                L += ["    <nonNodule>", f"      <nonNoduleID>{s.reader_mark_ids[reader]}</nonNoduleID>",
                      f"      <imageZposition>{case.z_of(k):.6f}</imageZposition>",
                      f"      <imageSOP_UID>{case.sop_uids[k]}</imageSOP_UID>"]
                L += _xml_points("locus", [(i, j)], "      ") + ["    </nonNodule>"]
        L.append("  </readingSession>")
    L.append("</LidcReadMessage>")
    return "\n".join(L) + "\n"


def xml_name_for(case: SyntheticCase) -> str:
    """A three-digit LIDC-style name (``069.xml``), fixed by the series UID."""
    return f"{int(hashlib.sha256(case.series_uid.encode()).hexdigest()[:6], 16) % 1000:03d}.xml"


def _geometry_dict(g: Geometry) -> dict:
    return {"origin_lps": [float(v) for v in g.origin], "spacing": [float(v) for v in g.spacing],
            "direction": [float(v) for v in g.direction], "shape": [int(v) for v in g.shape]}


def _point_dict(case: SyntheticCase, m: PointMark) -> dict:
    return {"centre_lps": [float(v) for v in m.centre_lps], "diameter_mm": float(m.diameter_mm),
            "n_readers": len(m.points), "reader_ids": sorted(m.points),
            "reader_mark_ids": dict(m.reader_mark_ids),
            "reader_points": {r: {"column": p[0], "row": p[1], "slice": p[2], "z_mm": case.z_of(p[2]),
                                  "sop_uid": case.sop_uids[p[2]]} for r, p in m.points.items()}}


def ground_truth_dict(case: SyntheticCase, config: CohortConfig, paths: dict[str, str]) -> dict:
    """JSON-ready ground truth of a case (LPS mm, voxel (i, j, k), HU, mm^3)."""
    g = case.geometry
    nodules = []
    for n in case.nodules:
        full_truth = n.truth
        st = nodule_stats(full_truth.array, g)
        centre_vox = np.array(st["centre_voxel"]) + np.array(full_truth.offset_zyx[::-1])
        cons_vox = int(n.consensus.array.sum())
        lo = np.minimum(n.truth.bounds()[0], n.consensus.bounds()[0])
        hi = np.maximum(n.truth.bounds()[1], n.consensus.bounds()[1])
        nodules.append({
            "id": n.id, "type": n.spec.type, "diameter_mm": round(n.spec.diameter_mm, 4),
            "mask_diameter_mm": round(equivalent_diameter_mm(st["volume_mm3"]), 4),
            "centre_lps": [float(v) for v in g.voxel_to_world(centre_vox)],
            "centre_voxel": [float(v) for v in centre_vox],
            "design_centre_lps": [float(v) for v in n.design_centre_lps],
            "volume_mm3": float(st["n_voxels"] * g.voxel_volume_mm3), "n_voxels": st["n_voxels"],
            "consensus_volume_mm3": float(cons_vox * g.voxel_volume_mm3),
            "dice_consensus_truth": round(dice(n.truth.paste(lo, hi), n.consensus.paste(lo, hi)), 6),
            "n_readers": len(n.reader_masks), "reader_ids": sorted(n.reader_masks),
            "reader_nodule_ids": dict(n.reader_nodule_ids),
            "malignancy": {r: c["malignancy"] for r, c in n.characteristics.items()},
            "median_malignancy": float(np.median([c["malignancy"] for c in n.characteristics.values()])),
            "characteristics": n.characteristics,
            "design": n.spec.as_dict(),
        })
    return {
        "generator": {"name": GENERATOR_NAME, "version": SYNTH_VERSION, "fingerprint": case.fingerprint,
                      "index": case.index, "config": asdict(config)},
        "patient_id": case.patient_id, "study_uid": case.study_uid, "series_uid": case.series_uid,
        "frame_of_reference_uid": case.uids["frame"], **paths,
        "geometry": _geometry_dict(g), "readers": list(case.readers),
        "n_nodules": len(nodules), "nodules": nodules,
        "small_nodules": [_point_dict(case, m) for m in case.small_nodules],
        "non_nodules": [_point_dict(case, m) for m in case.non_nodules],
    }


def _case_paths(out_dir: Path, config: CohortConfig, index: int) -> dict[str, Path]:
    uids = case_uids(config, index)
    pid = patient_id_for(config, index)
    gt = out_dir / "ground_truth"
    return {"patient_dir": out_dir / "dicom" / pid,
            "series_dir": out_dir / "dicom" / pid / uids["study"] / uids["series"],
            "json": gt / f"{uids['series']}.json", "truth": gt / f"{uids['series']}_truth.nii.gz",
            "consensus": gt / f"{uids['series']}_consensus.nii.gz"}


def _load_if_complete(out_dir: Path, config: CohortConfig, index: int) -> dict | None:
    p = _case_paths(out_dir, config, index)
    try:
        gt = json.loads(p["json"].read_text())
    except (OSError, ValueError):
        return None
    gen = gt.get("generator", {})
    if (gen.get("fingerprint"), gen.get("version"), gen.get("index")) != (config.fingerprint(), SYNTH_VERSION, index):
        return None
    if not (p["truth"].is_file() and p["consensus"].is_file() and p["series_dir"].is_dir()):
        return None
    files = list(p["series_dir"].iterdir())
    if sum(f.suffix == ".dcm" for f in files) != config.n_slices or sum(f.suffix == ".xml" for f in files) != 1:
        return None
    return gt


def _remove_previous(out_dir: Path, patient_id: str) -> None:
    """Delete an earlier version of a patient's case (its DICOM folder and ground-truth files)."""
    shutil.rmtree(out_dir / "dicom" / patient_id, ignore_errors=True)
    gt_dir = out_dir / "ground_truth"
    if not gt_dir.is_dir():
        return
    for j in gt_dir.glob("*.json"):
        try:
            if json.loads(j.read_text()).get("patient_id") != patient_id:
                continue
        except (OSError, ValueError):
            continue
        series = j.name[:-len(".json")]
        for f in (j, gt_dir / f"{series}_truth.nii.gz", gt_dir / f"{series}_consensus.nii.gz"):
            f.unlink(missing_ok=True)


def write_case(out_dir, config: CohortConfig, index: int) -> dict:
    """Generate and write case ``index``; returns its ground-truth dict.

    The DICOM tree is built in a hidden staging folder (``out_dir/.synth_tmp``) and renamed into
    ``out_dir/dicom/<PatientID>`` in one step; the NIfTI masks and then the JSON follow, each written
    atomically. The JSON is last: a case without it is incomplete and is redone by the next run.
    """
    out_dir = Path(out_dir)
    case = generate_case(config, index, case_rng(config, index))
    paths = _case_paths(out_dir, config, index)
    xml_name = xml_name_for(case)
    rel = {"dicom_dir": str(paths["series_dir"].relative_to(out_dir)),
           "xml_path": str((paths["series_dir"] / xml_name).relative_to(out_dir)),
           "truth_mask": str(paths["truth"].relative_to(out_dir)),
           "consensus_mask": str(paths["consensus"].relative_to(out_dir))}
    staging_root = out_dir / ".synth_tmp"
    staging_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{case.patient_id}.", suffix=".part", dir=staging_root))
    try:
        series = staging / case.patient_id / case.study_uid / case.series_uid
        write_dicom_series(series, case, np.random.default_rng([int(config.seed), int(index), 3]))
        (series / xml_name).write_text(lidc_xml_text(case))
        _remove_previous(out_dir, case.patient_id)
        paths["patient_dir"].parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / case.patient_id, paths["patient_dir"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_nifti(paths["truth"], case.truth_instance_mask(), case.geometry)
    write_nifti(paths["consensus"], case.consensus_instance_mask(), case.geometry)
    text = json.dumps(ground_truth_dict(case, config, rel), indent=1)
    write_text_atomic(paths["json"], text)
    return json.loads(text)              # exactly what a resumed run reads back


def _write_case_task(args):
    return write_case(*args)


def write_cohort(out_dir, config: CohortConfig | None = None, workers: int = 1, resume: bool = True) -> list[dict]:
    """Write a synthetic cohort under ``out_dir`` (layout in the module doc); returns the ground-truth
    dicts in case order.

    resume: keep cases already complete on disk for this exact config (their JSON is returned);
    workers > 1 generates cases in that many processes. Raises OutputError if ``out_dir`` cannot be
    written.
    """
    config = config or CohortConfig()
    config.validate()
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "dicom").mkdir(exist_ok=True)
        (out_dir / "ground_truth").mkdir(exist_ok=True)
    except OSError as exc:
        raise OutputError(out_dir, f"cannot create the output folder ({exc.strerror})") from None
    if not os.access(out_dir, os.W_OK):
        raise OutputError(out_dir, "output folder is not writable")
    staging_root = out_dir / ".synth_tmp"
    if staging_root.is_dir():                       # left by a killed run
        for stale in staging_root.glob("*.part"):
            shutil.rmtree(stale, ignore_errors=True)
    results: dict[int, dict] = {}
    todo = []
    for i in range(config.n_cases):
        done = _load_if_complete(out_dir, config, i) if resume else None
        if done is not None:
            results[i] = done
        else:
            todo.append(i)
    if workers > 1 and len(todo) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(workers, len(todo))) as pool:
            for i, gt in zip(todo, pool.map(_write_case_task, [(out_dir, config, i) for i in todo])):
                results[i] = gt
    else:
        for i in todo:
            results[i] = write_case(out_dir, config, i)
    try:
        staging_root.rmdir()
    except OSError:
        pass
    return [results[i] for i in range(config.n_cases)]
