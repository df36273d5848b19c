"""The two-stage product: CT (DICOM folder or NIfTI) in, nodule report out.

Stages, each through the bundles' own configs (what ``python -m monai.bundle run inference`` runs):

1. **inputs**: NIfTI as is; a DICOM folder is converted by data_prep (every check, int16 HU); ``lungnod detect``
   converts it in a forked process while it imports torch and MONAI (:mod:`lungnod_ext.apps.detect_inputs`).
2. **segment**: ``lung_nodule_ct_segmentation/configs/inference.json`` -> per case a mask on the
   original grid and the candidate list (LPS mm).
3. **classify**: ``lung_nodule_ct_classification/configs/inference.json`` scores every candidate
   (``probability`` of nodule); skipped with ``use_classifier=False`` (stage 1 alone).
4. **report**: candidates with probability >= ``probability_threshold`` are the nodules:
   ``<out>/<case>/<case>_nodules.json`` / ``.csv``, overlay PNGs with the probability written on them, the
   classifier's evidence map per nodule (occlusion sensitivity, ``<case>_candNNN_evidence.png``), optionally a DICOM SEG,
   the segmentation outputs, and ``<out>/report.html`` (one page, all cases) + ``<out>/summary.json``
   (cases, counts, seconds per stage, peak memory).

Every case folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import gc
import html
import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_prep.coords import Geometry
from data_prep.errors import DataPrepError
from data_prep.nifti_io import read_nifti, write_text_atomic
from data_prep.slice_profile import is_thicker
from lungnod_ext.apps.detect_inputs import DetectInputs
from lungnod_ext.apps.process_memory import peak_rss_mb
from lungnod_ext.data.bundle_paths import REPO_ROOT
from lungnod_ext.inference.candidates import write_candidates
from lungnod_ext.inference.overlays import write_candidate_overlays
from lungnod_ext.inference.report import replace_dir

log = logging.getLogger(__name__)

MAX_EXPLAINED = 10
"""Evidence maps are drawn for the most probable nodules of a case only (about 1 s each on a CPU)."""
SEG_BUNDLE = REPO_ROOT / "bundles" / "lung_nodule_ct_segmentation"
CLS_BUNDLE = REPO_ROOT / "bundles" / "lung_nodule_ct_classification"
FAST_OVERLAY = "configs/inference_fast.json"


@dataclass
class PipelineConfig:
    """What :func:`detect` runs. Overrides are bundle config ids -> values (as ``--key value`` on the CLI)."""

    seg_bundle: Path = SEG_BUNDLE
    cls_bundle: Path = CLS_BUNDLE
    seg_ckpt: Path | None = None          # default: the configs' ckpt_path (<seg_bundle>/models/model.pt)
    cls_ckpt: Path | None = None          # default: the configs' ckpt_path (<cls_bundle>/models/model.pt)
    seg_config: list[str] = field(default_factory=lambda: ["configs/inference.json"])
    cls_config: list[str] = field(default_factory=lambda: ["configs/inference.json"])
    seg_overrides: dict = field(default_factory=dict)
    cls_overrides: dict = field(default_factory=dict)
    use_classifier: bool = True
    probability_threshold: float = 0.5
    overlays: bool = True
    dicom_seg: bool = False
    dicom_sr: bool = False       # with dicom_seg: a TID 1500 measurement report on the SEG's segments
    explain: bool = True                  # classifier evidence map (occlusion sensitivity) per reported nodule
    assume_hu: bool = False               # let images whose values do not look like HU through (--assume-hu)

    def use_fast_models(self) -> "PipelineConfig":
        """Both bundles' ``configs/inference_fast.json`` overlays: the shipped fast pair (``models/model_fast.pt``,
        a segmentation decoder of half the width and the classifier trained on its candidates). Returns self."""
        self.seg_config = [*self.seg_config, FAST_OVERLAY]
        self.cls_config = [*self.cls_config, FAST_OVERLAY]
        return self


def run_bundle_inference(bundle: Path, config_files: list[str], datalist: list[dict], output_dir: Path,
                         ckpt: Path | None, overrides: dict) -> None:
    """Run a bundle's inference workflow in this process (MONAI ConfigWorkflow, run id ``run``) on ``datalist``;
    ``ckpt`` None: the configs' ``ckpt_path``."""
    from monai.bundle import ConfigWorkflow

    bundle = Path(bundle)
    files = [str(bundle / c) for c in config_files]
    args = {"bundle_root": str(bundle), "output_dir": str(output_dir), "datalist": datalist, **overrides}
    if ckpt is not None:
        args["ckpt_path"] = str(ckpt)
    workflow = ConfigWorkflow(config_file=files, meta_file=str(bundle / "configs" / "metadata.json"),
                              logging_file=False, workflow_type=None, **args)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    # the engine's state (last batch: the CT and the maps on its full grid, 1.8 GB for 500 thin slices) sits in
    # reference cycles that the cyclic collector, which counts objects and not bytes, may not visit for a while
    del workflow
    gc.collect()


def _classifier(cfg: PipelineConfig):
    """The classification bundle's network (checkpoint loaded, eval mode) and its patch settings."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(Path(cfg.cls_bundle) / c) for c in cfg.cls_config])
    parser.update({"bundle_root": str(cfg.cls_bundle), **cfg.cls_overrides,
                   **({"ckpt_path": str(cfg.cls_ckpt)} if cfg.cls_ckpt else {})})   # the network fits its checkpoint
    net = parser.get_parsed_content("network_def")
    ckpt = parser.get_parsed_content("ckpt_path")
    net.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["model"])
    settings = {k: parser.get_parsed_content(k) for k in ("spatial_dims", "patch_size", "spacing_mm", "hu_window")}
    for key in ("slab_mm", "fine_spacing_mm"):
        settings[key] = parser.get_parsed_content(key) if key in parser else None
    return net.eval(), settings


def _write_evidence(hu: np.ndarray, geometry, nodules: list[dict], folder: Path, case: str, classifier) -> list[Path]:
    """Evidence PNG (occlusion sensitivity) per nodule (``overlays/<case>_candNNN_evidence.png``); ``hu`` is the
    case's (z, y, x) HU volume on ``geometry``."""
    import torch

    from lungnod_ext.inference.explain import evidence_maps, write_evidence_png
    from lungnod_ext.transforms.hu_window import HUWindow
    from lungnod_ext.inference.patches import extract_patches, patch_channels

    net, st = classifier
    patches = extract_patches(hu, geometry, [n["centre_lps"] for n in nodules], st["patch_size"], st["spacing_mm"],
                              st["spatial_dims"], st["slab_mm"], st["fine_spacing_mm"])
    window = HUWindow(preset=st["hu_window"])
    x = torch.stack([torch.as_tensor(window(torch.from_numpy(p))) for p in patches])
    maps = evidence_maps(net, x)
    # a 2.5D patch's centre plane (the only plane of a 2-D patch, the cube of a 3-D one); with a finer second
    # sampling, the centre plane of the first (the planes at spacing_mm come first)
    centre = patch_channels(st["slab_mm"]) // 2
    return [write_evidence_png(p[centre], m, folder / "overlays" / f"{case}_cand{int(n['id']):03d}_evidence.png",
                               f"cand {n['id']} p={n['probability']:.2f}")
            for p, m, n in zip(patches, maps, nodules)]


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _case_of(image: str) -> str:
    name = Path(image).name
    for suffix in (".nii.gz", ".nii", ".mhd", ".nrrd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _write_case(case: str, image: str, seg_dir: Path, candidates: list[dict], nodules: list[dict], out_dir: Path,
                cfg: PipelineConfig, source_dicom: str | None, series_uid: str | None, classifier=None,
                reconstruction: dict | None = None) -> dict:
    final = out_dir / case
    tmp = out_dir / f".{case}.part-{uuid.uuid4().hex[:8]}"
    shutil.copytree(seg_dir, tmp)
    try:
        meta = {"case": case, "source": image, "probability_threshold": cfg.probability_threshold,
                "classifier": cfg.use_classifier, "n_candidates": len(candidates)}
        write_candidates(nodules, tmp / f"{case}_nodules.json", tmp / f"{case}_nodules.csv", meta)
        write_candidates(candidates, tmp / f"{case}_candidates.json", tmp / f"{case}_candidates.csv", meta)
        overlays = []
        seg_wanted = bool(cfg.dicom_seg and source_dicom and nodules)
        if cfg.overlays or seg_wanted:
            labels, label_geometry = read_nifti(tmp / f"{case}_labels.nii.gz")
            # candidate label -> its nodule's number in the report (1..n), 0 = not reported; a lookup, not
            # np.isin (whose temporaries take 1 GB at 500 thin slices)
            report_number = np.zeros(int(labels.max()) + 1, dtype=np.uint16)
            report_number[[int(n["id"]) for n in nodules]] = np.arange(1, len(nodules) + 1)
        if cfg.overlays:
            shutil.rmtree(tmp / "overlays", ignore_errors=True)
            hu, geometry = read_nifti(image)
            keep = (report_number > 0)[labels]
            overlays = write_candidate_overlays(hu, keep, nodules, geometry, tmp / "overlays", case)
            if classifier is not None and nodules:
                overlays += _write_evidence(hu, geometry, nodules[:MAX_EXPLAINED], tmp, case, classifier)
        if seg_wanted:
            from lungnod_ext.inference.dicom_seg import write_dicom_seg

            write_dicom_seg(report_number[labels], label_geometry, source_dicom, nodules, tmp / f"{case}_seg.dcm",
                            series_uid=series_uid)
            if cfg.dicom_sr:
                from lungnod_ext.inference.dicom_sr import write_measurement_report

                write_measurement_report(tmp / f"{case}_seg.dcm", nodules, tmp / f"{case}_sr.dcm")
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"case": case, "source": image, "n_candidates": len(candidates), "n_nodules": len(nodules),
            "nodules": nodules, "folder": case, **_scan_and_notes(image, reconstruction),
            "overlays": [str(Path(case) / "overlays" / p.name) for p in overlays]}


THICK_SLICE_MM = 3.0


def scan_geometry(image) -> dict:
    """The case's grid from its NIfTI header: ``shape`` (voxels along its i, j, k axes; k = slices) and
    ``spacing_mm`` along them (mm, :class:`data_prep.coords.Geometry`'s)."""
    import nibabel as nib

    img = nib.load(str(image))
    spacing = Geometry.from_affine_ras(img.affine, img.shape[:3]).spacing
    return {"shape": [int(v) for v in img.shape[:3]], "spacing_mm": [round(float(v), 3) for v in spacing]}


def scan_notes(scan: dict) -> list[str]:
    """What the reader of a case's results should know about the scan itself (one sentence each), from
    :func:`scan_geometry` (+ ``reconstruction``, :func:`data_prep.convert.reconstruction_of`, for a DICOM
    series): slices more than ``THICK_SLICE_MM`` apart or thick (DICOM SliceThickness, where it is more than the
    spacing: an overlapping reconstruction); a sharp reconstruction kernel."""
    notes = []
    step = scan["spacing_mm"][2]
    recon = scan.get("reconstruction") or {}
    thickness = _thicker_than_spacing(recon, step)
    if max(step, thickness or 0.0) > THICK_SLICE_MM:
        slices = f"{thickness:.1f} mm thick ({step:.1f} mm apart)" if thickness else f"{step:.1f} mm apart"
        notes.append(f"slices {slices}: nodules under about 6 mm may be missed and false positives are "
                     f"more likely (a 5 mm slab version of LIDC-IDRI-0006, a training scan of the models, lost two "
                     f"of its four nodules, of 5.2 and 6.5 mm, and gave 6 false positives; "
                     f"tests/benchmarks/bench_slice_thickness.py); use the study's thin-slice series (<= 2.5 mm) if "
                     f"it has one")
    if recon.get("sharp_kernel"):
        kernel = " ".join(v for v in (recon.get("manufacturer"), recon.get("convolution_kernel")) if v)
        notes.append(f"reconstructed with a sharp kernel ({kernel}): "
                     f"the models learned soft-kernel scans (GE STANDARD); through a sharper kernel, copies of the "
                     f"unseen LIDC-IDRI-0001 with inserted nodules gave 0.1 to 0.9 more false positives per scan "
                     f"(whole scan / lung crop), the three real scans none (tests/benchmarks/bench_models.py, "
                     f"bench_dose.py --sharpen 2); use the study's soft-kernel (standard, body) series if it has one")
    return notes


def _thicker_than_spacing(reconstruction: dict, spacing_mm: float) -> float | None:
    """The DICOM series' slice thickness (mm) where it is more than 5 % over the slice spacing (an overlapping
    reconstruction), else None (equal, thinner, or not known)."""
    thickness = reconstruction.get("slice_thickness_mm")
    return float(thickness) if thickness and is_thicker(float(thickness), spacing_mm) else None


def scan_text(scan: dict) -> str:
    """"512 x 512 x 133 voxels of 0.70 x 0.70 x 2.50 mm", plus ", slices 2.50 mm thick" for an overlapping
    reconstruction (DICOM SliceThickness over the spacing) and ", kernel STANDARD (GE MEDICAL SYSTEMS)" when the
    DICOM series named its reconstruction kernel."""
    text = (" x ".join(str(v) for v in scan["shape"]) + " voxels of "
            + " x ".join(f"{v:.2f}" for v in scan["spacing_mm"]) + " mm")
    recon = scan.get("reconstruction") or {}
    thickness = _thicker_than_spacing(recon, scan["spacing_mm"][2])
    if thickness:
        text += f", slices {thickness:.2f} mm thick"
    if recon.get("convolution_kernel"):
        maker = f" ({recon['manufacturer']})" if recon.get("manufacturer") else ""
        text += f", kernel {recon['convolution_kernel']}{maker}"
    return text


def _scan_and_notes(image, reconstruction: dict | None = None) -> dict:
    scan = scan_geometry(image)
    if reconstruction:
        scan["reconstruction"] = dict(reconstruction)
    return {"scan": scan, "notes": scan_notes(scan)}


def axes_text(nodule: dict) -> str:
    """"12.3 x 8.1 (10.2)": long x short axis on its axial slice and their mean, mm; "-" when not measured."""
    if nodule.get("long_axis_mm") is None:
        return "-"
    return f"{nodule['long_axis_mm']:.1f} x {nodule['short_axis_mm']:.1f} ({nodule['mean_axial_diameter_mm']:.1f})"


def attenuation_text(nodule: dict) -> str:
    """"solid", "ground-glass" or "part-solid (solid part 4.2 mm)" (the solid component's mean axial diameter,
    :mod:`lungnod_ext.inference.attenuation`); "-" when not measured."""
    kind = nodule.get("attenuation")
    if kind is None:
        return "-"
    solid_mm = nodule.get("solid_mean_axial_diameter_mm")
    return f"{kind} (solid part {solid_mm:.1f} mm)" if kind == "part-solid" and solid_mm is not None else kind


def _html_report(summary: dict) -> str:
    rows = []
    for c in summary["cases"]:
        nod_rows = "".join(
            f"<tr><td>{n['id']}</td><td>{n.get('probability', float('nan')):.2f}</td><td>{axes_text(n)}</td>"
            f"<td>{html.escape(attenuation_text(n))}</td><td>{n.get('image_number', '-')}</td>"
            f"<td>{n['diameter_mm']:.1f}</td><td>{n['volume_mm3']:.0f}</td><td>({n['centre_lps'][0]:.1f}, "
            f"{n['centre_lps'][1]:.1f}, {n['centre_lps'][2]:.1f})</td></tr>" for n in c["nodules"])
        table = (f"<table><tr><th>id</th><th>probability</th><th>long x short axis mm (mean)</th><th>attenuation</th><th>image</th>"
                 f"<th>equivalent diameter mm</th><th>volume mm&sup3;</th><th>centre LPS mm</th></tr>{nod_rows}"
                 f"</table>" if c["nodules"] else "<p>No nodule found.</p>")
        pics = "".join(f'<a href="{html.escape(p)}"><img src="{html.escape(p)}" alt="{html.escape(Path(p).name)}"></a>'
                       for p in c["overlays"])
        notes = "".join(f"<p class='note'>Note: {html.escape(n)}</p>" for n in c.get("notes", []))
        rows.append(f"<section><h2>{html.escape(c['case'])}</h2><p>{c['n_nodules']} nodule(s) from "
                    f"{c['n_candidates']} candidate(s); source {html.escape(c['source'])}"
                    f"{'; ' + scan_text(c['scan']) if c.get('scan') else ''}</p>{notes}{table}"
                    f"<div class='pics'>{pics}</div></section>")
    timing = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.2f}</td></tr>" for k, v in summary["seconds"].items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>lungnod report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} img{{max-width:560px;margin:4px;border:1px solid #333}}
.note{{color:#a00}}</style></head><body>
<h1>lungnod nodule report</h1>
<p class="note">Research software, not a medical device: not for clinical decisions.</p>
<p>{len(summary['cases'])} case(s), {sum(c['n_nodules'] for c in summary['cases'])} nodule(s) at probability
&ge; {summary['probability_threshold']} ({'segmentation + classifier' if summary['classifier'] else 'segmentation only'}).
Coordinates are LPS millimetres (DICOM patient space).</p>
{''.join(rows)}
<h2>Run</h2><table><tr><th>stage</th><th>seconds</th></tr>{timing}</table>
<p>Peak memory {summary['peak_rss_mb']:.0f} MB.</p></body></html>
"""


def detect(input_path, out_dir, cfg: PipelineConfig | None = None, inputs: DetectInputs | None = None) -> dict:
    """Run the pipeline (module doc) on ``input_path`` into ``out_dir``; returns the summary dict. ``inputs``: the
    same input and folder already started by the CLI (:class:`~lungnod_ext.apps.detect_inputs.DetectInputs`,
    converting beside MONAI's import); None converts here."""
    cfg = cfg or PipelineConfig()
    if inputs is None:
        inputs = DetectInputs(input_path, out_dir, assume_hu=cfg.assume_hu)
    elif (Path(str(inputs.input_path)), inputs.out.resolve(), inputs.assume_hu) != (
            Path(str(input_path)), Path(out_dir).resolve(), cfg.assume_hu):
        raise ValueError("detect(): inputs were started for another input, output folder or assume_hu")
    out = inputs.out
    work = out / f".work-{uuid.uuid4().hex[:8]}"
    try:
        return _detect(input_path, out, work, cfg, inputs)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        inputs.abandon()  # a run that failed leaves nothing it wrote (a user's existing folder is kept)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


NOT_DICOM_FOR_SEG = ("--dicom-seg / --dicom-sr need a DICOM folder as input (a DICOM SEG references the source "
                     "CT images): this is not one")


def add_image_numbers(candidates: list[dict], slice_instance_numbers: list | None) -> None:
    """In place: each candidate's ``image_number``, the DICOM InstanceNumber of the source image through it (the
    axial slice where it is longest, ``axes_slice_k``, else its centre's), the number a PACS viewer shows, from
    data_prep's provenance (``slice_instance_numbers``, index = slice k); nothing where that is unknown."""
    if not slice_instance_numbers:
        return
    for c in candidates:
        k = c.get("axes_slice_k")
        if k is None:
            k = int(round(float(c["centre_voxel"][2])))
        if 0 <= int(k) < len(slice_instance_numbers) and slice_instance_numbers[int(k)] is not None:
            c["image_number"] = int(slice_instance_numbers[int(k)])


def _provenance(converted: Path, case: str) -> dict:
    """The case's data_prep provenance record (series UID, reconstruction, ...); {} for an input not converted
    from DICOM here."""
    prov = converted / "provenance" / f"{case}.json"
    return _read_json(prov) if prov.is_file() else {}


def _detect(input_path, out: Path, work: Path, cfg: PipelineConfig, inputs: DetectInputs) -> dict:
    seconds: dict[str, float] = {}
    converted = inputs.converted
    if cfg.dicom_seg and not Path(input_path).is_dir():
        raise DataPrepError(input_path, NOT_DICOM_FOR_SEG)
    datalist = inputs.datalist()
    if cfg.dicom_seg and not converted.is_dir():   # a folder of NIfTI files
        raise DataPrepError(input_path, NOT_DICOM_FOR_SEG)
    seconds["inputs"] = inputs.seconds   # the conversion's own time (beside MONAI's import when the CLI started it)

    t0 = time.perf_counter()
    seg_out = work / "segmentation"
    # the report draws the reported nodules itself: the bundle's overlay of every candidate would be thrown away
    run_bundle_inference(cfg.seg_bundle, cfg.seg_config, datalist, seg_out, cfg.seg_ckpt,
                         {"write_overlays": False, **cfg.seg_overrides})
    seconds["segment"] = time.perf_counter() - t0

    per_case = {}
    for item in datalist:
        case = _case_of(item["image"])
        doc = _read_json(seg_out / case / f"{case}_candidates.json")
        per_case[case] = (item["image"], doc["candidates"])

    t0 = time.perf_counter()
    if cfg.use_classifier and any(c for _, c in per_case.values()):
        cls_out = work / "classification"
        cls_list = [{"image": img, "candidates": str(seg_out / case / f"{case}_candidates.json")}
                    for case, (img, cands) in per_case.items() if cands]
        run_bundle_inference(cfg.cls_bundle, cfg.cls_config, cls_list, cls_out, cfg.cls_ckpt, cfg.cls_overrides)
        for case, (img, cands) in per_case.items():
            if not cands:
                continue
            scored = {int(c["id"]): c for c in _read_json(cls_out / f"{case}_classified.json")["candidates"]}
            for c in cands:
                c["probability"] = float(scored[int(c["id"])]["probability"])
                c["cls_prob"] = c["probability"]
    else:
        for _, cands in per_case.values():
            for c in cands:
                c["probability"] = float(c["max_prob"])
    seconds["classify"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    source_dicom = str(input_path) if Path(input_path).is_dir() and converted.is_dir() else None
    cases = []
    explain = cfg.explain and cfg.use_classifier and cfg.overlays and any(
        c["probability"] >= cfg.probability_threshold for _, cands in per_case.values() for c in cands)
    classifier = _classifier(cfg) if explain else None
    for case, (img, cands) in per_case.items():
        nodules = sorted((c for c in cands if c["probability"] >= cfg.probability_threshold),
                         key=lambda c: -c["probability"])
        # converted from DICOM by this run (a folder or an archive): its provenance
        prov = _provenance(converted, case) if Path(img).resolve().is_relative_to(converted.resolve()) else {}
        add_image_numbers(cands, prov.get("slice_instance_numbers"))      # the nodules are these same dicts
        cases.append(_write_case(case, img, seg_out / case, cands, nodules, out, cfg, source_dicom,
                                 prov.get("series_uid"), classifier, prov.get("reconstruction")))
    summary = {"input": str(input_path), "output": str(out.resolve()), "probability_threshold": cfg.probability_threshold,
               "classifier": cfg.use_classifier, "coordinate_system": "LPS", "units": "mm", "cases": cases,
               "seconds": seconds}
    seconds["report"] = time.perf_counter() - t0
    seconds["total"] = sum(v for k, v in seconds.items() if k != "total")
    # this process's peak, or the conversion child's where that was larger (they overlap only during the import)
    summary["peak_rss_mb"] = max(peak_rss_mb(), inputs.child_peak_rss_mb or 0.0)
    write_text_atomic(out / "report.html", _html_report(summary))
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    return summary
