"""Patches for the stage-2 classifier, cut in world space so every patch has the same physical size.

A patch is sampled (trilinear) on a grid centred on an LPS point, with ``spacing_mm`` between samples
along the image's own axes (its direction cosines), whatever the scan's voxel size: 3D patches are
``(D, H, W)`` = (slice, row, column) cubes, 2D patches ``(H, W)`` the axial plane through the centre.
Values are HU; outside the scan is air (-1024 HU).

:func:`build_patch_dataset` makes the training set from a data_prep ``convert`` folder:

* positives: every reference nodule (``nodules.csv``), ``positive_copies`` times with a random shift of
  up to ``jitter_mm``, plus every stage-1 candidate that hits a nodule (LUNA16 rule);
* hard negatives: the segmentation bundle's false-positive candidates (the most useful negatives);
* random negatives: points in the lung (classic lung mask) away from every nodule, and as many again on
  vessels (lung voxels of -300..200 HU: cross-sections, crossings and branch points, what a 2-D segmenter
  mistakes for nodules).

Cases keep the split of the folder's ``datalist.json`` (training / validation / testing), so patients
never cross splits. Output: ``<out_dir>/patches/<case>_<kind>_<n>.npy`` (float32 HU) and
``<out_dir>/datalist.json`` with ``{"image", "label": [0|1], "case", "kind"}`` entries.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from data_prep.errors import InputNotFoundError
from data_prep.nifti_io import read_nifti, write_text_atomic
from data_prep.coords import Geometry
from lungnod_ext.lung_mask import compute_lung_mask
from lungnod_ext.metrics import match_detections

AIR_HU = -1024.0
DEFAULTS = {2: {"patch_size": (64, 64), "spacing_mm": 1.0}, 3: {"patch_size": (32, 32, 32), "spacing_mm": 1.25}}
"""Default patch size (voxels) and sample spacing (mm) per ``spatial_dims``: 64 mm squares, 40 mm cubes."""
DEFAULT_SLAB_MM = (-5.0, -2.5, 0.0, 2.5, 5.0)
"""The classification bundle's default planes (mm along the slice axis) for 2-D patches (``slab_mm``)."""


def patch_offsets_mm(patch_size: Sequence[int], spacing_mm: float, spatial_dims: int) -> np.ndarray:
    """Offsets (i, j, k) in mm from the patch centre for every sample: (*patch_size, 3)."""
    size = [int(s) for s in patch_size]
    if len(size) != spatial_dims:
        raise ValueError(f"patch_size {patch_size} does not have {spatial_dims} dimensions")
    axes = [(np.arange(n) - (n - 1) / 2.0) * float(spacing_mm) for n in size]
    if spatial_dims == 3:
        dk, dj, di = np.meshgrid(*axes, indexing="ij")
    else:
        dj, di = np.meshgrid(*axes, indexing="ij")
        dk = np.zeros_like(di)
    return np.stack([di, dj, dk], axis=-1)


def patch_channels(slab_mm: Sequence[float] | None) -> int:
    """Input channels of a classifier fed patches cut with ``slab_mm`` (1 without a slab)."""
    return 1 if not slab_mm else len(slab_mm)


def extract_patches(hu_zyx: np.ndarray, geometry: Geometry, centres_lps, patch_size: Sequence[int] | None = None,
                    spacing_mm: float | None = None, spatial_dims: int = 3,
                    slab_mm: Sequence[float] | None = None) -> np.ndarray:
    """Patches around LPS centres (mm) of a (z, y, x) HU volume -> float32 (N, C, *patch_size).

    C = 1, or for 2-D patches with ``slab_mm`` (offsets in mm along the image's slice axis, e.g.
    ``[-5, -2.5, 0, 2.5, 5]``) one axial plane per offset, as channels (2.5D: a vessel runs on through the
    planes, a nodule ends)."""
    d = DEFAULTS[spatial_dims]
    patch_size = tuple(patch_size or d["patch_size"])
    spacing_mm = float(spacing_mm or d["spacing_mm"])
    if slab_mm and spatial_dims != 2:
        raise ValueError("slab_mm (planes as channels) is for 2-D patches")
    planes = [float(v) for v in slab_mm] if slab_mm else [0.0]
    centres = np.asarray(centres_lps, dtype=float).reshape(-1, 3)
    out = np.empty((len(centres), len(planes), *patch_size), dtype=np.float32)
    if not len(centres):
        return out
    offsets = patch_offsets_mm(patch_size, spacing_mm, spatial_dims).reshape(-1, 3)
    direction = geometry.direction_matrix
    vol = np.asarray(hu_zyx, dtype=np.float32)
    for n, c in enumerate(centres):
        for ch, dk in enumerate(planes):
            ijk = geometry.world_to_voxel(c[None, :] + (offsets + np.array([0.0, 0.0, dk])) @ direction.T)
            coords = np.stack([ijk[:, 2], ijk[:, 1], ijk[:, 0]])  # (z, y, x) order of the array
            out[n, ch] = ndi.map_coordinates(vol, coords, order=1, mode="constant", cval=AIR_HU,
                                             prefilter=False).reshape(patch_size)
    return out


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


def balance_weights(data: Sequence[dict], pos_fraction: float = 0.5) -> list[float]:
    """Per-item sampling weights so a draw is a positive (``label`` [1]) with probability ``pos_fraction``."""
    labels = np.array([int(np.ravel(d["label"])[0]) for d in data])
    n_pos, n_neg = int(labels.sum()), int((1 - labels).sum())
    if n_pos == 0 or n_neg == 0:
        return [1.0] * len(labels)
    return np.where(labels == 1, pos_fraction / n_pos, (1.0 - pos_fraction) / n_neg).tolist()


def balanced_sampler(data: Sequence[dict], pos_fraction: float = 0.5, num_samples: int | None = None,
                     seed: int = 0) -> torch.utils.data.WeightedRandomSampler:
    """A sampler drawing positives with probability ``pos_fraction`` per draw (class balancing), with
    replacement, ``num_samples`` (default ``len(data)``) draws per epoch."""
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(torch.as_tensor(balance_weights(data, pos_fraction), dtype=torch.double),
                                                  num_samples or len(data), replacement=True, generator=g)


def build_patch_dataset(converted_dir, out_dir, candidates_dir=None, spatial_dims: int = 2,
                        patch_size: Sequence[int] | None = None, spacing_mm: float | None = None,
                        positive_copies: int = 4, jitter_mm: float = 2.0, random_negatives_per_case: int = 8,
                        seed: int = 0, slab_mm: Sequence[float] | None = DEFAULT_SLAB_MM, ignore_radius_mm: float = 5.0,
                        vessel_negatives_per_case: int | None = None) -> Path:
    """Write the patch dataset (module doc) and return the path of its ``datalist.json``.

    ``slab_mm``: 2-D patches with these planes as channels (see :func:`extract_patches`), saved (C, H, W);
    the default is the classification bundle's; ``None`` gives single-plane (H, W) patches; 3-D ignores it.
    Candidates within ``ignore_radius_mm`` of a LIDC small mark (``small_marks.csv``) are left out.
    ``vessel_negatives_per_case`` defaults to ``random_negatives_per_case``."""
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
                    "training": [], "validation": [], "testing": []}
    for split in ("training", "validation", "testing"):
        for entry in splits.get(split, []):
            image = converted / entry["image"]
            case = image.name[:-7] if image.name.endswith(".nii.gz") else image.stem
            hu, geometry = read_nifti(image)
            refs = refs_all.get(case, [])
            points: list[tuple[str, int, np.ndarray]] = []
            for r in refs:
                c = np.asarray(r["centre_lps"])
                points.append(("nodule", 1, c))
                for _ in range(max(positive_copies - 1, 0)):
                    shift = rng.normal(size=3)
                    shift *= rng.uniform(0, jitter_mm) / max(np.linalg.norm(shift), 1e-9)
                    points.append(("nodule", 1, c + shift))
            cands = _candidates(cand_dir, case)
            if cands:
                fp = set(match_detections([{**c, "score": c.get("max_prob", 1.0)} for c in cands], refs).fp)
                marks = ignored_all.get(case, np.zeros((0, 3)))
                for i, c in enumerate(cands):
                    if len(marks) and np.linalg.norm(marks - np.asarray(c["centre_lps"]), axis=1).min() <= ignore_radius_mm:
                        continue
                    points.append(("hard_negative", 0, np.asarray(c["centre_lps"])) if i in fp
                                  else ("candidate_hit", 1, np.asarray(c["centre_lps"])))
            lung = compute_lung_mask(hu, tuple(float(v) for v in geometry.spacing[::-1]))
            for p in _random_lung_points(hu, geometry, refs, random_negatives_per_case, rng, lung):
                points.append(("lung", 0, p))
            for p in _random_lung_points(hu, geometry, refs, n_vessel, rng, lung, hu_range=(-300.0, 200.0)):
                points.append(("vessel", 0, p))
            if not points:
                continue
            patches = extract_patches(hu, geometry, [p[2] for p in points], patch_size, spacing_mm, spatial_dims, slab_mm)
            for n, ((kind, label, _), patch) in enumerate(zip(points, patches)):
                rel = f"patches/{case}_{kind}_{n:03d}.npy"
                np.save(out / rel, patch if slab_mm else patch[0])
                result[split].append({"image": rel, "label": [label], "case": case, "kind": kind})
    final = out / "datalist.json"
    write_text_atomic(final, json.dumps(result, indent=1) + "\n")
    return final
