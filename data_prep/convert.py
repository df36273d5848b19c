"""Convert a folder of DICOM series (with LIDC XML reads beside them) or LUNA16 .mhd files into

    <out>/images/<case>.nii.gz      int16 HU, LPS geometry written as a RAS NIfTI affine
    <out>/labels/<case>.nii.gz      uint8 consensus nodule mask (1 = nodule), when annotations exist
    <out>/instances/<case>.nii.gz   uint16 nodule id per voxel (ids = nodule_id in nodules.csv)
    <out>/provenance/<case>.json    source files, series UID, geometry, warnings, nodules; written last
    <out>/nodules.csv               one row per nodule, all cases (centres in LPS mm)
    <out>/small_marks.csv           < 3 mm point nodules and non-nodule marks
    <out>/conversion_report.json    converted / skipped (with reasons) / failed

Resumable: a case whose provenance says ``complete`` (for the same source files and settings) is
skipped; every file is written under a temporary name and renamed, so a killed run leaves no half
file. Inputs are only read.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import multiprocessing as mp
import numpy as np

from data_prep import __version__
from data_prep.annotations import SliceIndex, build_case_annotations
from data_prep.archives import unpacked
from data_prep.dicom_series import SeriesPlan, discover_series, read_series_hu
from data_prep.errors import DataPrepError, InputNotFoundError, OutputError
from data_prep.lidc_xml import parse_lidc_xml, read_series_uid
from data_prep.nifti_io import write_nifti, write_text_atomic
from data_prep.recon_kernels import is_sharp_kernel

log = logging.getLogger(__name__)

NODULE_COLUMNS = [
    "case_id", "patient_id", "series_uid", "nodule_id", "source",
    "centre_x_lps_mm", "centre_y_lps_mm", "centre_z_lps_mm", "centre_i", "centre_j", "centre_k",
    "diameter_mm", "volume_mm3", "mean_hu", "bbox_i0", "bbox_j0", "bbox_k0", "bbox_i1", "bbox_j1", "bbox_k1",
    "n_readers", "readers", "consensus_threshold", "malignancy_median", "malignancy_ratings",
    "subtlety_median", "internalStructure_median", "calcification_median", "sphericity_median", "margin_median",
    "lobulation_median", "spiculation_median", "texture_median", "diameter_mm_annotated",
]
SMALL_MARK_COLUMNS = ["case_id", "patient_id", "series_uid", "kind", "centre_x_lps_mm", "centre_y_lps_mm",
                      "centre_z_lps_mm", "centre_i", "centre_j", "centre_k", "n_readers", "readers"]


@dataclass
class ConvertOptions:
    consensus: float = 0.5
    workers: int = 1
    force: bool = False
    progress: bool = True


@dataclass
class ConversionReport:
    out_dir: Path
    converted: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)     # not wanted (non-CT, scout, ...)
    failed: list[dict] = field(default_factory=list)      # CT series / files we could not convert
    warnings: list[str] = field(default_factory=list)
    n_nodules: int = 0

    def as_dict(self) -> dict:
        return {"out_dir": str(self.out_dir), "converted": self.converted, "reused": self.reused,
                "skipped": self.skipped, "failed": self.failed, "warnings": self.warnings,
                "n_nodules": self.n_nodules}


# -------------------------------------------------------------------------------------------------
# One DICOM case
# -------------------------------------------------------------------------------------------------

def _signature(files, xmls, consensus) -> str:
    h = hashlib.sha1()
    for f in list(files) + list(xmls):
        st = os.stat(f)
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(f"consensus={consensus}|v={__version__}".encode())
    return h.hexdigest()


def case_paths(out_dir: Path, case_id: str) -> dict[str, Path]:
    return {"image": out_dir / "images" / f"{case_id}.nii.gz", "label": out_dir / "labels" / f"{case_id}.nii.gz",
            "instances": out_dir / "instances" / f"{case_id}.nii.gz",
            "provenance": out_dir / "provenance" / f"{case_id}.json"}


def is_complete(out_dir: Path, case_id: str, signature: str) -> bool:
    paths = case_paths(out_dir, case_id)
    try:
        prov = json.loads(paths["provenance"].read_text())
    except (OSError, ValueError):
        return False
    if prov.get("status") != "complete" or prov.get("signature") != signature:
        return False
    return all((out_dir / rel).exists() for rel in (prov.get("image"), prov.get("label"), prov.get("instances")) if rel)


def write_case(out_dir: Path, case: dict, hu_zyx: np.ndarray, geometry, instance_mask: np.ndarray | None) -> dict:
    """Write image (+ label, instances) then the provenance record (the 'done' marker) of one case."""
    paths = case_paths(out_dir, case["case_id"])
    write_nifti(paths["image"], hu_zyx, geometry)
    rel = lambda p: p.relative_to(out_dir).as_posix()  # noqa: E731
    prov = {**case, "status": "complete", "image": rel(paths["image"]), "label": None, "instances": None}
    if instance_mask is not None:
        write_nifti(paths["label"], (instance_mask > 0).astype(np.uint8), geometry)
        write_nifti(paths["instances"], instance_mask, geometry)
        prov["label"], prov["instances"] = rel(paths["label"]), rel(paths["instances"])
    prov["geometry"] = {"shape_ijk": list(geometry.shape), "spacing_mm": list(geometry.spacing),
                        "origin_lps_mm": list(geometry.origin), "direction_lps": list(geometry.direction)}
    prov["hu_range"] = [int(hu_zyx.min()), int(hu_zyx.max())]
    prov["data_prep_version"] = __version__
    write_text_atomic(paths["provenance"], json.dumps(prov, indent=1, default=_json_default))
    return prov


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def convert_dicom_case(plan: SeriesPlan, xml_paths: list[Path], out_dir: Path, consensus: float = 0.5) -> dict:
    """Read, annotate and write one planned DICOM series. Returns its provenance record."""
    hu = read_series_hu(plan)
    reads = [parse_lidc_xml(p) for p in xml_paths]
    warnings = list(plan.warnings)
    instance = None
    nodules, small = [], []
    if reads:
        slices = SliceIndex({h.sop_instance_uid: k for k, h in enumerate(plan.headers)},
                            np.array([h.position[2] for h in plan.headers]), 0.25 * plan.geometry.spacing[2])
        ann = build_case_annotations(reads, plan.geometry, slices, hu, consensus)
        instance, nodules, small = ann.instance_mask, ann.nodules, ann.small_marks
        warnings += ann.warnings
        for w in ann.warnings:
            log.warning("%s: %s", plan.case_id, w)
    case = {
        "case_id": plan.case_id, "patient_id": plan.patient_id, "study_uid": plan.study_uid,
        "series_uid": plan.series_uid, "source": "dicom", "source_dir": str(plan.folder),
        "source_files": [f.name if f.parent == plan.folder else str(f.relative_to(plan.folder)) for f in plan.files],
        "annotation_files": [str(p) for p in xml_paths], "annotation_source": "lidc_xml" if reads else None,
        "signature": _signature(plan.files, xml_paths, consensus), "warnings": warnings,
        "n_nodules": len(nodules), "nodules": nodules, "small_marks": small,
        "reconstruction": reconstruction_of(plan.headers),
        "slice_instance_numbers": slice_instance_numbers(plan),
    }
    return write_case(out_dir, case, hu, plan.geometry, instance)


def slice_instance_numbers(plan: SeriesPlan) -> list[int | None] | None:
    """The DICOM InstanceNumber (the image number a PACS viewer shows) of each converted slice k (list index =
    k, the NIfTI's third axis); None where a file has none, and no list at all where the volume's slices are
    not one file each (a multi-frame series)."""
    if len(plan.headers) != plan.geometry.shape_zyx[0]:
        return None
    return [h.instance_number for h in plan.headers]


def reconstruction_of(headers) -> dict:
    """The series' scanner maker and reconstruction kernel(s) (DICOM Manufacturer, ConvolutionKernel; several
    kernels joined by " / " in file order, "" where the files do not say), whether it is a sharp kernel
    (:func:`data_prep.recon_kernels.is_sharp_kernel`, any of them) and its slice thickness
    (``slice_thickness_mm``: the median of the files' SliceThickness, mm, 0.01 mm; None where none says; an
    overlapping reconstruction's is larger than its slice spacing)."""
    manufacturer = next((h.manufacturer for h in headers if h.manufacturer), "")
    kernels = list(dict.fromkeys(h.convolution_kernel for h in headers if h.convolution_kernel))
    thicknesses = [h.slice_thickness_mm for h in headers if h.slice_thickness_mm]
    return {"manufacturer": manufacturer, "convolution_kernel": " / ".join(kernels),
            "sharp_kernel": any(is_sharp_kernel(k, manufacturer) for k in kernels),
            "slice_thickness_mm": round(float(np.median(thicknesses)), 2) if thicknesses else None}


# -------------------------------------------------------------------------------------------------
# A whole folder
# -------------------------------------------------------------------------------------------------

def index_lidc_xml(root: Path) -> dict[str, list[Path]]:
    """SeriesInstanceUid -> LIDC XML files anywhere under ``root`` (CXR reads and non-LIDC XML ignored)."""
    out: dict[str, list[Path]] = {}
    if root.is_file():
        root = root.parent
    for p in sorted(root.rglob("*.xml")):
        uid = read_series_uid(p)
        if uid:
            out.setdefault(uid, []).append(p)
    return out


def _convert_task(args):
    plan, xmls, out_dir, consensus = args
    try:
        return plan.case_id, convert_dicom_case(plan, xmls, out_dir, consensus), None
    except DataPrepError as exc:
        return plan.case_id, None, str(exc)


def check_output_dir(out_dir) -> Path:
    """Create ``out_dir`` (and parents) and check it is writable; OutputError (one line) if not."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(out_dir, f"output folder is not writable ({exc.strerror or exc})") from None
    return out_dir


def convert_dicom_root(input_root, out_dir, options: ConvertOptions | None = None) -> ConversionReport:
    """Convert every usable CT series under ``input_root`` (a folder, or a .zip / .tar / .tar.gz of one:
    :mod:`data_prep.archives`) into ``out_dir`` (see module doc)."""
    options = options or ConvertOptions()
    input_root, out_dir = Path(input_root), Path(out_dir)
    if not input_root.exists():
        raise InputNotFoundError(input_root, "no such file or folder")
    check_output_dir(out_dir)
    with unpacked(input_root, out_dir) as root:
        return _convert_root(root, out_dir, options)


def _convert_root(input_root: Path, out_dir: Path, options: ConvertOptions) -> ConversionReport:
    plans, skipped, unreadable = discover_series(input_root)
    xml_index = index_lidc_xml(input_root)
    report = ConversionReport(out_dir)
    for s in skipped:
        (report.failed if s.error else report.skipped).append(
            {"series_uid": s.series_uid, "folder": s.folder, "n_files": s.n_files, "reason": s.reason})
    for msg in unreadable:
        report.failed.append({"file": msg.split(": ", 1)[0], "reason": msg.split(": ", 1)[-1]})
    known = {p.series_uid for p in plans} | {s.series_uid for s in skipped}
    for uid, paths in xml_index.items():
        if uid not in known:
            for p in paths:
                report.warnings.append(f"{p}: annotations for series {uid}, not found under {input_root}: ignored")
                log.warning("%s", report.warnings[-1])
    todo = []
    for plan in plans:
        xmls = xml_index.get(plan.series_uid, [])
        if not options.force and is_complete(out_dir, plan.case_id, _signature(plan.files, xmls, options.consensus)):
            report.reused.append(plan.case_id)
            continue
        todo.append((plan, xmls, out_dir, options.consensus))
    _run_tasks(todo, options, report)
    finalize_tables(out_dir, report)
    return report


def _run_tasks(todo, options: ConvertOptions, report: ConversionReport, task=_convert_task) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="convert", unit="case", disable=not options.progress or not todo, leave=False)
    def done(case_id, prov, err, folder):
        bar.update(1)
        if err:
            report.failed.append({"case_id": case_id, "folder": folder, "reason": err})
            log.error("%s", err)
        else:
            report.converted.append(case_id)
    if options.workers <= 1 or len(todo) <= 1:
        for t in todo:
            done(*task(t), str(getattr(t[0], "folder", "")))
    else:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=options.workers, mp_context=ctx) as pool:
            futs = {pool.submit(task, t): t for t in todo}
            for fut in as_completed(futs):
                done(*fut.result(), str(getattr(futs[fut][0], "folder", "")))
    bar.close()


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if np.isnan(v) else f"{v:.4f}".rstrip("0").rstrip(".")
    if isinstance(v, (list, tuple)):
        return ";".join(str(x) for x in v)
    return str(v)


def _csv_text(columns, rows) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in columns})
    return buf.getvalue()


def _flatten(case: dict, row: dict) -> dict:
    out = {"case_id": case["case_id"], "patient_id": case["patient_id"], "series_uid": case["series_uid"],
           "source": case.get("annotation_source") or case.get("source"), **row}
    for axis, v in zip("xyz", row.get("centre_lps", [None] * 3)):
        out[f"centre_{axis}_lps_mm"] = v
    for axis, v in zip("ijk", row.get("centre_voxel", [None] * 3)):
        out[f"centre_{axis}"] = v
    for name, v in zip(("bbox_i0", "bbox_j0", "bbox_k0", "bbox_i1", "bbox_j1", "bbox_k1"), row.get("bbox_voxel", [])):
        out[name] = v
    return out


def finalize_tables(out_dir: Path, report: ConversionReport) -> None:
    """Rebuild nodules.csv / small_marks.csv from every complete provenance record, and the report."""
    nodules, small = [], []
    for p in sorted((out_dir / "provenance").glob("*.json")):
        try:
            case = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if case.get("status") != "complete":
            continue
        nodules += [_flatten(case, r) for r in case.get("nodules", [])]
        small += [_flatten(case, r) for r in case.get("small_marks", [])]
    report.n_nodules = len(nodules)
    write_text_atomic(out_dir / "nodules.csv", _csv_text(NODULE_COLUMNS, nodules))
    write_text_atomic(out_dir / "small_marks.csv", _csv_text(SMALL_MARK_COLUMNS, small))
    write_text_atomic(out_dir / "conversion_report.json", json.dumps(report.as_dict(), indent=1, default=_json_default))


# -------------------------------------------------------------------------------------------------
# LUNA16: .mhd/.raw volumes + annotations.csv
# -------------------------------------------------------------------------------------------------

def convert_luna16_root(input_root, out_dir, annotations_csv, options: ConvertOptions | None = None) -> ConversionReport:
    """Convert LUNA16 ``.mhd`` volumes under ``input_root``; nodule masks are spheres of the annotated
    diameter at the annotated world (LPS) centre."""
    from data_prep import luna16

    options = options or ConvertOptions()
    input_root, out_dir = Path(input_root), Path(out_dir)
    if not input_root.exists():
        raise InputNotFoundError(input_root, "no such file or folder")
    check_output_dir(out_dir)
    report = ConversionReport(out_dir)
    annotations = luna16.read_annotations(annotations_csv)
    mhds = luna16.find_mhd_files(input_root)
    if not mhds:
        raise InputNotFoundError(input_root, "no .mhd files found")
    for uid in luna16.unmatched_annotations(annotations, mhds):
        report.warnings.append(f"{annotations_csv}: annotations for series {uid}, no {uid}.mhd under {input_root}: ignored")
    todo = []
    for mhd in mhds:
        case_id = luna16.luna16_case_id(mhd.stem)
        sig = _signature([mhd, mhd.with_suffix(".raw")] if mhd.with_suffix(".raw").exists() else [mhd], [annotations_csv],
                         options.consensus)
        if not options.force and is_complete(out_dir, case_id, sig):
            report.reused.append(case_id)
        else:
            todo.append((mhd, sig))
    from tqdm import tqdm

    for mhd, sig in tqdm(todo, desc="convert", unit="case", disable=not options.progress or not todo, leave=False):
        try:
            case = luna16.load_luna16_case(mhd, annotations)
            hu, geometry, mask = case.pop("hu_zyx"), case.pop("geometry"), case.pop("instance_mask")
            records = case.pop("records")
            meta = {**case, "study_uid": None, "source_dir": str(mhd.parent), "annotation_files": [str(annotations_csv)],
                    "annotation_source": "luna16", "signature": sig, "nodules": records, "small_marks": []}
            write_case(out_dir, meta, hu, geometry, mask)
            report.converted.append(case["case_id"])
        except DataPrepError as exc:
            report.failed.append({"case_id": luna16.luna16_case_id(mhd.stem), "folder": str(mhd.parent), "reason": str(exc)})
            log.error("%s", exc)
    finalize_tables(out_dir, report)
    return report
