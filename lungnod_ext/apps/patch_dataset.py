"""The stage-2 classifier's training set, built from a data_prep ``convert`` folder (:func:`build_patch_dataset`):

* positives: every reference nodule (``nodules.csv``), ``positive_copies`` times (``small_positive_copies``
  times below ``small_nodule_mm``) with a random shift of up to ``jitter_mm`` or ``jitter_fraction`` of its
  diameter, whichever is larger (a large nodule's candidate centre can sit well off its centre, e.g. one
  merged with the pleura), plus every stage-1 candidate that hits a nodule (LUNA16 rule);
* hard negatives: the segmentation bundle's false-positive candidates (the most useful negatives); its
  dot-filter candidates (``detector`` "blob") are kinds ``blob_hit`` / ``blob_negative`` and the pleural caps
  (``detector`` "pleural") ``pleural_hit`` / ``pleural_negative``, so each detector's share of nodules
  (:func:`detector_prior`) can be read back;
* random negatives: points in the lung (classic lung mask) away from every nodule, and as many again on
  vessels (lung voxels of -300..200 HU: cross-sections, crossings and branch points, what a 2-D segmenter
  mistakes for nodules).

Cases keep the split of the folder's ``datalist.json`` (training / validation / testing), so patients
never cross splits. Output: ``<out_dir>/patches/<case>_<kind>_<n>.npy`` (float32 HU, cut by
:func:`lungnod_ext.inference.patches.extract_patches`) and ``<out_dir>/datalist.json`` with
``{"image", "label": [0|1], "case", "kind"}`` entries. Positions are LPS mm.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from data_prep.coords import Geometry
from data_prep.errors import InputNotFoundError
from data_prep.nifti_io import read_nifti, write_text_atomic
from lungnod_ext.inference.patches import DEFAULT_SLAB_MM, DEFAULTS, extract_patches
from lungnod_ext.metrics.detection import match_detections
from lungnod_ext.transforms.lung_mask import compute_lung_mask


def _reference_nodules(converted: Path) -> dict[str, list[dict]]:
    refs: dict[str, list[dict]] = {}
    table = converted / "nodules.csv"
    if table.is_file():
        with open(table, newline="") as f:
            for row in csv.DictReader(f):
                refs.setdefault(row["case_id"], []).append(
                    {"centre_lps": [float(row[f"centre_{a}_lps_mm"]) for a in "xyz"],
                     "diameter_mm": float(row["diameter_mm"])})
    return refs


def _ignored_marks(converted: Path) -> dict[str, np.ndarray]:
    """LIDC small marks (< 3 mm nodules, ``small_marks.csv``): LPS centres per case. Real findings without an
    outline: a candidate there is neither a positive nor a hard negative."""
    out: dict[str, list] = {}
    table = converted / "small_marks.csv"
    if table.is_file():
        with open(table, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("kind") == "small_nodule":
                    out.setdefault(row["case_id"], []).append([float(row[f"centre_{a}_lps_mm"]) for a in "xyz"])
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


PRIOR_DETECTORS = ("blob", "faint", "pleural")
"""Candidate detectors whose patches get kinds of their own (``<detector>_hit`` / ``<detector>_negative``)."""
PATCH_GEOMETRY_KEYS = ("spatial_dims", "patch_size", "spacing_mm", "slab_mm", "fine_spacing_mm")
"""Arguments of :func:`build_patch_dataset` that fix how a patch is cut, named as the classification bundle's
config ids: a classifier must be trained and run with the values its patches were cut with."""


def detector_prior(datalist_path, split: str = "training", max_rank: int | None = None,
                   detector: str = "blob", skip_cases=()) -> float | None:
    """The fraction of nodules among one detector's candidates in a patch datalist's ``split``
    (``<detector>_hit`` / (hits + ``<detector>_negative``)); for the dot filter only those of ``blob_rank`` <
    ``max_rank`` when given (inference keeping fewer peaks than training saw); None without any. The
    classification bundle's ``detector_priors`` {detector: ...} turns the balanced classifier's probability
    into a posterior with it. ``skip_cases``: case names left out (copies enriched with nodules on purpose).
    No hit among n candidates (or only hits) gives the Jeffreys estimate 0.5 / (n + 1) (or (n + 0.5) / (n + 1))
    instead of 0 (or 1): a prior must lie strictly between 0 and 1, and none seen is not impossible (the
    LIDC-IDRI-0006 fold's training volumes held no faint dot-filter hit, and its prior 0 broke the config)."""
    skip = set(skip_cases)
    items = [e for e in json.loads(Path(datalist_path).read_text()).get(split, [])
             if (detector != "blob" or max_rank is None or e.get("blob_rank", -1) < max_rank)
             and e.get("case") not in skip]
    hits = sum(e.get("kind") == f"{detector}_hit" for e in items)
    total = hits + sum(e.get("kind") == f"{detector}_negative" for e in items)
    if not total:
        return None
    return hits / total if 0 < hits < total else (hits + 0.5) / (total + 1)


def _candidates(candidates_dir: Path | None, case: str) -> list[dict]:
    if candidates_dir is None:
        return []
    for p in (candidates_dir / case / f"{case}_candidates.json", candidates_dir / f"{case}_candidates.json"):
        if p.is_file():
            return json.loads(p.read_text())["candidates"]
    return []


def _random_lung_points(hu_zyx: np.ndarray, geometry: Geometry, refs: list[dict], n: int,
                        rng: np.random.Generator, lung: np.ndarray | None = None,
                        hu_range: tuple[float, float] | None = None) -> np.ndarray:
    """Up to ``n`` LPS points in the lungs (``hu_range``: only voxels within it, e.g. vessels), each more
    than 10 mm beyond every reference nodule's radius."""
    if n <= 0:
        return np.zeros((0, 3))
    if lung is None:
        lung = compute_lung_mask(hu_zyx, tuple(float(s) for s in geometry.spacing[::-1]))
    if hu_range is not None:
        lung = lung & (hu_zyx >= hu_range[0]) & (hu_zyx <= hu_range[1])
    zyx = np.argwhere(lung)
    if not len(zyx):
        zyx = np.argwhere(np.ones(hu_zyx.shape, bool))
    picks = zyx[rng.choice(len(zyx), size=min(len(zyx), n * 20), replace=False)]
    world = geometry.voxel_to_world(picks[:, ::-1].astype(float))
    keep = np.ones(len(world), bool)
    for r in refs:
        keep &= np.linalg.norm(world - np.asarray(r["centre_lps"]), axis=1) > r["diameter_mm"] / 2 + 10.0
    return world[keep][:n]


def build_patch_dataset(converted_dir, out_dir, candidates_dir=None, spatial_dims: int = 2,
                        patch_size: Sequence[int] | None = None, spacing_mm: float | None = None,
                        positive_copies: int = 4, jitter_mm: float = 2.0, random_negatives_per_case: int = 8,
                        seed: int = 0, slab_mm: Sequence[float] | None = DEFAULT_SLAB_MM, ignore_radius_mm: float = 5.0,
                        vessel_negatives_per_case: int | None = None, jitter_fraction: float = 0.0,
                        small_positive_copies: int | None = None, small_nodule_mm: float = 6.0,
                        fine_spacing_mm: float | None = None) -> Path:
    """Write the patch dataset (module doc) and return the path of its ``datalist.json``.

    ``slab_mm``: 2-D patches with these planes as channels (see :func:`extract_patches`), saved (C, H, W);
    the default is the classification bundle's; ``None`` gives single-plane (H, W) patches; 3-D ignores it.
    ``fine_spacing_mm``: the planes again at that finer sample spacing, as more channels (2-D only).
    Candidates within ``ignore_radius_mm`` of a LIDC small mark (``small_marks.csv``) are left out.
    ``vessel_negatives_per_case`` defaults to ``random_negatives_per_case``; ``small_positive_copies`` (copies of
    each nodule under ``small_nodule_mm`` diameter) to ``positive_copies``."""
    n_vessel = random_negatives_per_case if vessel_negatives_per_case is None else vessel_negatives_per_case
    slab_mm = [float(v) for v in slab_mm] if slab_mm and spatial_dims == 2 else None
    converted, out = Path(converted_dir), Path(out_dir)
    datalist_path = converted / "datalist.json"
    if not datalist_path.is_file():
        raise InputNotFoundError(datalist_path, "no datalist: run `data-prep datalist` on the converted folder first")
    splits = json.loads(datalist_path.read_text())
    cand_dir = Path(candidates_dir) if candidates_dir else None
    refs_all = _reference_nodules(converted)
    ignored_all = _ignored_marks(converted)
    rng = np.random.default_rng(seed)
    (out / "patches").mkdir(parents=True, exist_ok=True)
    result: dict = {"description": "lungnod classification patches (HU, float32 .npy)", "spatial_dims": spatial_dims,
                    "patch_size": list(patch_size or DEFAULTS[spatial_dims]["patch_size"]),
                    "spacing_mm": float(spacing_mm or DEFAULTS[spatial_dims]["spacing_mm"]),
                    "slab_mm": [float(v) for v in slab_mm] if slab_mm else None,
                    "fine_spacing_mm": float(fine_spacing_mm) if fine_spacing_mm else None,
                    "training": [], "validation": [], "testing": []}
    for split in ("training", "validation", "testing"):
        for entry in splits.get(split, []):
            image = converted / entry["image"]
            case = image.name[:-7] if image.name.endswith(".nii.gz") else image.stem
            hu, geometry = read_nifti(image)
            refs = refs_all.get(case, [])
            points: list[tuple[str, int, np.ndarray]] = []
            ranks: dict[int, int] = {}          # point index -> blob_rank of a dot-filter candidate
            for r in refs:
                c = np.asarray(r["centre_lps"])
                points.append(("nodule", 1, c))
                small = small_positive_copies is not None and r["diameter_mm"] < small_nodule_mm
                jitter = max(jitter_mm, jitter_fraction * r["diameter_mm"])
                for _ in range(max((small_positive_copies if small else positive_copies) - 1, 0)):
                    shift = rng.normal(size=3)
                    shift *= rng.uniform(0, jitter) / max(np.linalg.norm(shift), 1e-9)
                    points.append(("nodule", 1, c + shift))
            cands = _candidates(cand_dir, case)
            if cands:
                fp = set(match_detections([{**c, "score": c.get("max_prob", 1.0)} for c in cands], refs).fp)
                marks = ignored_all.get(case, np.zeros((0, 3)))
                for i, c in enumerate(cands):
                    if len(marks) and np.linalg.norm(marks - np.asarray(c["centre_lps"]), axis=1).min() <= ignore_radius_mm:
                        continue
                    detector = c.get("detector")
                    if detector == "blob":
                        ranks[len(points)] = int(c.get("blob_rank", 0))
                    own = detector in PRIOR_DETECTORS
                    if i in fp:
                        kind, label = (f"{detector}_negative" if own else "hard_negative"), 0
                    else:
                        kind, label = (f"{detector}_hit" if own else "candidate_hit"), 1
                    points.append((kind, label, np.asarray(c["centre_lps"])))
            lung = compute_lung_mask(hu, tuple(float(v) for v in geometry.spacing[::-1]))
            for p in _random_lung_points(hu, geometry, refs, random_negatives_per_case, rng, lung):
                points.append(("lung", 0, p))
            for p in _random_lung_points(hu, geometry, refs, n_vessel, rng, lung, hu_range=(-300.0, 200.0)):
                points.append(("vessel", 0, p))
            if not points:
                continue
            patches = extract_patches(hu, geometry, [p[2] for p in points], patch_size, spacing_mm, spatial_dims, slab_mm,
                                      fine_spacing_mm)
            for n, ((kind, label, _), patch) in enumerate(zip(points, patches)):
                rel = f"patches/{case}_{kind}_{n:03d}.npy"
                np.save(out / rel, patch if slab_mm or fine_spacing_mm else patch[0])
                # every entry carries blob_rank (-1: not a dot-filter candidate): a training batch needs one set of keys
                result[split].append({"image": rel, "label": [label], "case": case, "kind": kind,
                                      "blob_rank": ranks.get(n, -1)})
    final = out / "datalist.json"
    write_text_atomic(final, json.dumps(result, indent=1) + "\n")
    return final


def _crop_2d(image: np.ndarray, centre_rc, size: int) -> np.ndarray:
    """(H, W) -> (size, size) square centred on ``centre_rc`` (row, column); outside the image is 0."""
    r0, c0 = int(round(centre_rc[0])) - size // 2, int(round(centre_rc[1])) - size // 2
    out = np.zeros((size, size), np.float32)
    rs, cs = slice(max(r0, 0), min(r0 + size, image.shape[0])), slice(max(c0, 0), min(c0 + size, image.shape[1]))
    out[rs.start - r0:rs.stop - r0, cs.start - c0:cs.stop - c0] = image[rs, cs]
    return out


def build_patch_dataset_2d(images2d_dir, out_dir, patch_size: int = 64, positive_copies: int = 4,
                           jitter_px: float = 3.0, negatives_per_image: int = 4, seed: int = 0) -> Path:
    """The classifier's patches from a 2D image + mask dataset (``data-prep images2d`` output, its
    ``datalist.json`` splits kept): ``patch_size`` squares in image pixels, values in [0, 1] (the grey image
    divided by its type's maximum), float32 (H, W) ``.npy``. Positives: every mask component's centre,
    ``positive_copies`` times shifted by up to ``jitter_px``; negatives: ``negatives_per_image`` random
    points inside the body (grey above 10 % of the maximum) at least ``patch_size / 2`` from every mask
    pixel. Returns the path of ``<out_dir>/datalist.json`` (entries ``{"image", "label": [0|1], "case", "kind"}``)."""
    from data_prep.images2d import read_image, to_grey

    src, out = Path(images2d_dir), Path(out_dir)
    datalist_path = src / "datalist.json"
    if not datalist_path.is_file():
        raise InputNotFoundError(datalist_path, "no datalist: run `data-prep images2d` first")
    splits = json.loads(datalist_path.read_text())
    rng = np.random.default_rng(seed)
    (out / "patches").mkdir(parents=True, exist_ok=True)
    result: dict = {"description": "lungnod classification patches from 2D slice images ([0, 1], float32 .npy)",
                    "spatial_dims": 2, "patch_size": [patch_size, patch_size], "slab_mm": None,
                    "training": [], "validation": [], "testing": []}
    for split in ("training", "validation", "testing"):
        for entry in splits.get(split, []):
            raw = to_grey(read_image(src / entry["image"]))
            image = raw.astype(np.float32) / float(np.iinfo(raw.dtype).max)
            mask = read_image(src / entry["label"]) > 0
            mask = mask if mask.ndim == 2 else mask.any(axis=-1)
            case = Path(entry["image"]).stem
            points: list[tuple[str, int, np.ndarray]] = []
            components, n = ndi.label(mask)
            for centre in ndi.center_of_mass(mask, components, range(1, n + 1)) if n else []:
                for copy in range(max(positive_copies, 1)):
                    shift = rng.uniform(-jitter_px, jitter_px, 2) if copy else np.zeros(2)
                    points.append(("nodule", 1, np.asarray(centre) + shift))
            far = ndi.distance_transform_edt(~mask) >= patch_size / 2 if mask.any() else np.ones(mask.shape, bool)
            allowed = np.argwhere(far & (image > 0.1))
            if len(allowed):
                for rc in allowed[rng.choice(len(allowed), size=min(len(allowed), negatives_per_image), replace=False)]:
                    points.append(("background", 0, rc.astype(float)))
            for k, (kind, label, centre) in enumerate(points):
                rel = f"patches/{case}_{kind}_{k:03d}.npy"
                np.save(out / rel, _crop_2d(image, centre, patch_size))
                result[split].append({"image": rel, "label": [label], "case": case, "kind": kind})
    final = out / "datalist.json"
    write_text_atomic(final, json.dumps(result, indent=1) + "\n")
    return final
