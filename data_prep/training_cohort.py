"""Training cohort from real CT backgrounds: simulated nodules imaged into real series, scanner variety.

Real nodule data are scarce; real lungs are not. Each converted real series (a ``data-prep convert``
folder: ``images/``, ``labels/``, ``small_marks.csv``) becomes ``copies`` training volumes:

1. the volume cropped to its lungs plus ``margin_mm`` (what the bundles' inference looks at);
2. 3-30 mm nodules inserted with :func:`data_prep.insert.insert_nodules` in its ``psf`` style (solid,
   part-solid, ground-glass, juxta-pleural, juxta-vascular; smooth, lobulated, spiculated; blurred by the
   scanner's point spread on top of the scan's own noise), away from the scan's own nodules;
3. with ``dependent_density_share`` (0 by default), posterior subpleural ground-glass density in that share of the
   copies, as background (:mod:`data_prep.dependent_density`);
4. scanner variety for the whole volume (nodules included): a softer or sharper reconstruction kernel,
   added correlated noise, thicker slices (z blur, up to 5 mm).

Labels (uint8): 0 background, 1 nodule (the readers' consensus of the real nodules + the inserted ones),
255 ignore (:data:`IGNORE_LABEL`, which the loss and metrics skip): a sphere around every LIDC small mark (< 3 mm, a
real finding with no outline), never taught as background. Copy 0 of each series is the real scan
itself (cropped, no insertion, no augmentation).

Output ``out_dir``: ``images/<case>_c<NN>.nii.gz`` (int16 HU), ``labels/<case>_c<NN>.nii.gz``,
``instances/<case>_c<NN>.nii.gz`` (uint16: real nodule ids as converted, inserted ones 100 + n),
``nodules/<case>_c<NN>.json`` (what was inserted and done), ``nodules.csv`` (real and inserted nodules,
LPS mm: the columns ``lungnod evaluate`` and the patch builder read), ``small_marks.csv`` (the LIDC
point marks: < 3 mm nodules and non-nodules), ``datalist.json`` (MONAI lists: "training" = all copies of the training series;
"validation" = ``val_copies`` extra copies of them).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from data_prep.convert import _csv_text as csv_text
from data_prep.dependent_density import add_dependent_density
from data_prep.errors import DataPrepError, InputNotFoundError
from data_prep.insert import find_lung_mask, insert_nodules
from data_prep.masks import bounding_box
from data_prep.nifti_io import read_nifti, write_nifti, write_text_atomic
from data_prep.slice_profile import slice_profile_sigma
from data_prep.synth.nodules import GROUND_GLASS_HU, NODULE_TYPES, SHAPES
from data_prep.coords import Geometry

log = logging.getLogger(__name__)

INSERTED_ID_OFFSET = 100               # instance id of inserted nodule n: 100 + n (real nodules keep theirs)
DEPENDENT_DENSITY_STREAM = 7           # random stream of a copy's dependent density (its own: see CohortOptions)
IGNORE_LABEL = 255                      # label of voxels left out of training (lungnod_ext.networks.losses uses it)
SMALL_MARK_RADIUS_MM = 4.0
TYPE_WEIGHTS = {"solid": 0.3, "part_solid": 0.12, "ground_glass": 0.13, "juxta_pleural": 0.22, "juxta_vascular": 0.23}
SIZE_BANDS_MM = ((3.0, 6.0, 0.4), (6.0, 15.0, 0.4), (15.0, 30.0, 0.2))   # (low, high, share), log-uniform within


@dataclass(frozen=True)
class CohortOptions:
    copies: int = 8                 # volumes per training series (copy 0 = the real scan as it is)
    val_copies: int = 1             # extra copies per series for the "validation" list
    nodules: tuple[int, int] = (5, 9)
    margin_mm: float = 15.0         # lung crop margin
    augment: bool = True            # scanner variety (kernel, noise, slice thickness)
    seed: int = 0
    workers: int = 2
    size_bands: tuple = SIZE_BANDS_MM   # inserted diameters: (low mm, high mm, share), log-uniform within
    type_weights: tuple = tuple(TYPE_WEIGHTS.items())   # (nodule type, share) of the inserted nodules
    ground_glass_hu: tuple = GROUND_GLASS_HU   # (low, high) HU of inserted ground glass (part-solid halos from low)
    diaphragm_share: float = 0.0       # chance that a juxta-pleural nodule sits on the diaphragm's dome
    dependent_density_share: float = 0.0   # chance that a copy gets posterior subpleural density (background;
    #                                        data_prep.dependent_density), drawn from a random stream of its own


def crop_to_lungs(hu_zyx: np.ndarray, geometry: Geometry, lung_zyx: np.ndarray, margin_mm: float):
    """(z, y, x) crop of a volume to its lungs + ``margin_mm`` -> (slices, cropped Geometry)."""
    margin = [int(np.ceil(margin_mm / s)) for s in (geometry.spacing[2], geometry.spacing[1], geometry.spacing[0])]
    box = bounding_box(lung_zyx, margin)
    if box is None:
        raise ValueError("no lungs found")
    origin = geometry.voxel_to_world(np.array([box[2].start, box[1].start, box[0].start], dtype=float))
    shape = (box[2].stop - box[2].start, box[1].stop - box[1].start, box[0].stop - box[0].start)
    return box, replace(geometry, origin=tuple(float(v) for v in origin), shape=shape)


def small_mark_mask(rows: list[dict], geometry: Geometry, shape_zyx, radius_mm: float = SMALL_MARK_RADIUS_MM,
                    offset_zyx=(0, 0, 0)) -> np.ndarray:
    """Bool (z, y, x) spheres around small-mark voxel centres (``centre_i/j/k`` of ``small_marks.csv``,
    in the uncropped grid; ``offset_zyx`` = the crop's start)."""
    out = np.zeros(shape_zyx, dtype=bool)
    sx, sy, sz = geometry.spacing
    r = [int(np.ceil(radius_mm / s)) for s in (sz, sy, sx)]
    kk, jj, ii = np.meshgrid(*[np.arange(-n, n + 1) for n in r], indexing="ij")
    ball = (kk * sz) ** 2 + (jj * sy) ** 2 + (ii * sx) ** 2 <= radius_mm ** 2
    for row in rows:
        c = np.rint([float(row["centre_k"]) - offset_zyx[0], float(row["centre_j"]) - offset_zyx[1],
                     float(row["centre_i"]) - offset_zyx[2]]).astype(int)
        lo = c - r
        hi = c + np.array(r) + 1
        src = tuple(slice(max(0, -a), b - a - max(0, b - n)) for a, b, n in zip(lo, hi, shape_zyx))
        dst = tuple(slice(max(0, a), min(b, n)) for a, b, n in zip(lo, hi, shape_zyx))
        if all(d.stop > d.start for d in dst):
            out[dst] |= ball[src]
    return out


def _correlated_noise(shape, rng, sd: float, sigma_vox) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=sigma_vox)
    return n * (sd / max(float(n.std()), 1e-6))


def augment_scanner(hu_zyx: np.ndarray, geometry: Geometry, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Scanner variety for a whole (z, y, x) HU volume -> (float32 HU, what was done).

    Each independently: a softer kernel (in-plane Gaussian, sigma 0.3-0.8 mm) or a sharper one (unsharp
    mask, amount 0.3-1.0); thicker slices (z Gaussian to a 2.5-5 mm slice profile, when thicker than the
    scan's); added noise (correlated, 5-30 HU)."""
    x = hu_zyx.astype(np.float32)
    sx, sy, sz = (float(v) for v in geometry.spacing)
    done: dict = {}
    u = rng.uniform()
    if u < 0.3:
        s = float(rng.uniform(0.3, 0.8))
        x = ndimage.gaussian_filter(x, sigma=(0, s / sy, s / sx))
        done["soft_kernel_sigma_mm"] = round(s, 3)
    elif u < 0.6:
        a = float(rng.uniform(0.3, 1.0))
        x = x + a * (x - ndimage.gaussian_filter(x, sigma=(0, 0.8 / sy, 0.8 / sx)))
        done["sharp_kernel_amount"] = round(a, 3)
    if rng.uniform() < 0.35:
        target = float(rng.uniform(2.5, 5.0))
        sigma = slice_profile_sigma(sz, target)
        if sigma is not None:
            x = ndimage.gaussian_filter1d(x, sigma=sigma, axis=0)
            done["slice_thickness_mm"] = round(target, 2)
    if rng.uniform() < 0.5:
        sd = float(rng.uniform(5.0, 30.0))
        x = x + _correlated_noise(x.shape, rng, sd, (0.0, 0.6, 0.6))
        done["added_noise_hu"] = round(sd, 1)
    return x, done


def _random_count_specs(rng: np.random.Generator, n: int, size_bands=SIZE_BANDS_MM,
                        type_weights=tuple(TYPE_WEIGHTS.items())) -> list[dict]:
    types, weights = [t for t, _ in type_weights], np.array([w for _, w in type_weights], dtype=float)
    bands = np.array([b[2] for b in size_bands], dtype=float)
    out = []
    for _ in range(n):
        lo, hi, _share = size_bands[rng.choice(len(size_bands), p=bands / bands.sum())]
        out.append({"type": str(rng.choice(types, p=weights / weights.sum())),
                    "diameter_mm": float(np.exp(rng.uniform(np.log(lo), np.log(hi)))),
                    "shape": str(rng.choice(SHAPES, p=[0.4, 0.3, 0.3]))})
    return out


def _read_rows(path: Path, kind: str | None = None) -> dict[str, list[dict]]:
    """Rows of a convert table (``nodules.csv``, ``small_marks.csv``) by case id, only ``kind`` if given."""
    out: dict[str, list[dict]] = {}
    if path.is_file():
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if kind is None or row.get("kind") == kind:
                    out.setdefault(row["case_id"], []).append(row)
    return out


TABLE_COLUMNS = ("case_id", "source", "nodule_id", "type", "shape", "centre_x_lps_mm", "centre_y_lps_mm",
                 "centre_z_lps_mm", "diameter_mm")
MARK_COLUMNS = ("case_id", "kind", "centre_x_lps_mm", "centre_y_lps_mm", "centre_z_lps_mm")


def _table_rows(rec: dict, real: list[dict], marks: list[dict]) -> tuple[list[dict], list[dict]]:
    """nodules.csv / small_marks.csv rows of one copy: the real nodules, then the inserted ones."""
    rows = [{"case_id": rec["name"], "source": "lidc_xml", "nodule_id": r["nodule_id"], "type": "real", "shape": "",
             **{f"centre_{a}_lps_mm": r[f"centre_{a}_lps_mm"] for a in "xyz"}, "diameter_mm": r["diameter_mm"]}
            for r in real]
    for n in rec["inserted"]:
        rows.append({"case_id": rec["name"], "source": "inserted", "nodule_id": INSERTED_ID_OFFSET + int(n["id"]), "type": n["type"],
                     "shape": n["shape"], **{f"centre_{a}_lps_mm": round(float(v), 4) for a, v in zip("xyz", n["centre_lps"])},
                     "diameter_mm": round(float(n["mask_diameter_mm"]), 4)})
    mark_rows = [{"case_id": rec["name"], "kind": m["kind"], **{f"centre_{a}_lps_mm": m[f"centre_{a}_lps_mm"] for a in "xyz"}}
                 for m in marks]
    return rows, mark_rows


def write_tables(out_dir, records: list[dict]) -> None:
    """``nodules.csv`` and ``small_marks.csv`` of the copies in ``records`` (from :func:`make_copies`)."""
    out = Path(out_dir)
    write_text_atomic(out / "nodules.csv", csv_text(TABLE_COLUMNS, [r for rec in records for r in rec["table"]]))
    write_text_atomic(out / "small_marks.csv", csv_text(MARK_COLUMNS, [m for rec in records for m in rec["marks"]]))


def write_copy_marks(converted_dir, case: str, out_dir, names: list[str]) -> Path:
    """``<out_dir>/small_marks.csv`` for copies ``names`` of converted ``case``: every LIDC point mark of the case
    on each (a copy keeps its series' grid, so the LPS centres hold) -> the table's path."""
    marks = _read_rows(Path(converted_dir) / "small_marks.csv").get(case, [])
    path = Path(out_dir) / "small_marks.csv"
    write_text_atomic(path, csv_text(MARK_COLUMNS, [m for name in names for m in _table_rows(
        {"name": name, "inserted": []}, [], marks)[1]]))
    return path


def copy_name(case: str, index: int) -> str:
    """The case name of copy ``index`` of a converted case in a cohort (copy 0 = the real scan)."""
    return f"{case}_c{index:02d}"


def _stored_hu(hu_zyx: np.ndarray) -> np.ndarray:
    """Float HU as a copy's image stores them: rounded, clipped to -1024..3071, int16."""
    return np.clip(np.rint(hu_zyx), -1024, 3071).astype(np.int16)


def make_copies(converted_dir, case: str, out_dir, indices, options: CohortOptions) -> list[dict]:
    """Write copies ``indices`` of one converted case into ``out_dir`` -> one record per copy."""
    converted, out = Path(converted_dir), Path(out_dir)
    for sub in ("images", "labels", "instances", "nodules"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    image_path, label_path = converted / "images" / f"{case}.nii.gz", converted / "labels" / f"{case}.nii.gz"
    if not image_path.is_file():
        raise InputNotFoundError(image_path, "no such converted image")
    hu, geometry = read_nifti(image_path)
    inst_path = converted / "instances" / f"{case}.nii.gz"
    real_instance = (read_nifti(inst_path)[0].astype(np.uint16) if inst_path.is_file()
                     else np.zeros(hu.shape, dtype=np.uint16))
    label = read_nifti(label_path)[0] > 0 if label_path.is_file() else real_instance > 0
    lung = find_lung_mask(hu)
    try:
        box, cgeo = crop_to_lungs(hu, geometry, lung, options.margin_mm)
    except ValueError:
        raise DataPrepError(image_path, "no lungs found (no air below -400 HU enclosed by the body)") from None
    hu, label, lung, real_instance = hu[box].astype(np.int16), label[box], lung[box], real_instance[box]
    # every point mark goes to the copies' table (scoring ignores hits on them, LUNA16); only the < 3 mm nodules
    # are kept free of inserted nodules and out of the loss
    all_marks = _read_rows(converted / "small_marks.csv").get(case, [])
    marks = [m for m in all_marks if m.get("kind") == "small_nodule"]
    real = _read_rows(converted / "nodules.csv").get(case, [])
    ignore = small_mark_mask(marks, geometry, hu.shape,
                             offset_zyx=(box[0].start, box[1].start, box[2].start)) & ~label
    forbidden = ndimage.binary_dilation(label | ignore, iterations=2)
    records = []
    for idx in indices:
        copy_key = [options.seed, int(idx), sum(map(ord, case))]   # the copy's random streams are drawn from it
        rng = np.random.default_rng(copy_key)
        name = copy_name(case, idx)
        if idx == 0:
            new, inserted, done = hu, [], {}
            nodule_mask, instances = label, real_instance
        else:
            n = int(rng.integers(options.nodules[0], options.nodules[1] + 1))
            specs = _random_count_specs(rng, n, options.size_bands, options.type_weights)
            new, instance, inserted = insert_nodules(hu, cgeo, specs, rng, lung, style="psf", forbidden_zyx=forbidden,
                                                     ground_glass_hu=options.ground_glass_hu,
                                                     diaphragm_share=options.diaphragm_share)
            done = {}
            nodule_mask = label | (instance > 0)
            if options.dependent_density_share > 0:   # its own stream: the copy's other draws stay as without it
                drng = np.random.default_rng(copy_key + [DEPENDENT_DENSITY_STREAM])
                if drng.uniform() < options.dependent_density_share:
                    dense, drawn = add_dependent_density(new, lung, cgeo, drng, avoid_zyx=nodule_mask | ignore)
                    new = _stored_hu(dense)
                    done.update(drawn)
            if options.augment:
                aug, scanner = augment_scanner(new, cgeo, rng)
                new = _stored_hu(aug)
                done.update(scanner)
            instances = np.where(instance > 0, instance.astype(np.uint16) + INSERTED_ID_OFFSET, real_instance)
        lab = np.where(ignore, IGNORE_LABEL, nodule_mask.astype(np.uint8)).astype(np.uint8)
        write_nifti(out / "images" / f"{name}.nii.gz", new, cgeo)
        write_nifti(out / "labels" / f"{name}.nii.gz", lab, cgeo)
        write_nifti(out / "instances" / f"{name}.nii.gz", instances.astype(np.uint16), cgeo)
        rec = {"name": name, "source_case": case, "copy": int(idx), "augmentation": done,
               "inserted": inserted, "n_ignore_voxels": int(ignore.sum())}
        rec["table"], rec["marks"] = _table_rows(rec, real, all_marks)
        write_text_atomic(out / "nodules" / f"{name}.json", json.dumps(rec, indent=1, default=float) + "\n")
        records.append(rec)
        log.info("%s: %d nodule(s) inserted, %s", name, len(inserted), done or "no augmentation")
    return records


def _task(args):
    return make_copies(*args)


def build_training_cohort(converted_dir, out_dir, train_cases: list[str], options: CohortOptions | None = None) -> Path:
    """Copies of every case in ``train_cases`` (converted ids) -> ``out_dir`` with ``datalist.json``.

    Returns the datalist path. Validation copies are numbered after the training ones.
    """
    options = options or CohortOptions()
    out = Path(out_dir)
    jobs = [(converted_dir, case, out, list(range(options.copies + options.val_copies)), options) for case in train_cases]
    if options.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(options.workers, len(jobs))) as pool:
            results = list(pool.map(_task, jobs))
    else:
        results = [_task(j) for j in jobs]
    training, validation = [], []
    for recs in results:
        for r in recs:
            entry = {"image": f"images/{r['name']}.nii.gz", "label": f"labels/{r['name']}.nii.gz",
                     "case": r["name"], "source_case": r["source_case"]}
            (training if r["copy"] < options.copies else validation).append(entry)
    datalist = {"description": "real CT backgrounds with simulated nodules (data_prep.training_cohort)",
                "source_cases": list(train_cases), "training": training, "validation": validation}
    write_tables(out, [r for recs in results for r in recs])
    path = out / "datalist.json"
    write_text_atomic(path, json.dumps(datalist, indent=1) + "\n")
    return path


MASS_SIZE_BANDS_MM = ((3.0, 6.0, 0.2), (6.0, 15.0, 0.2), (15.0, 30.0, 0.2), (30.0, 50.0, 0.4))
MASS_TYPE_WEIGHTS = (("solid", 0.25), ("part_solid", 0.1), ("ground_glass", 0.1), ("juxta_pleural", 0.35),
                     ("juxta_vascular", 0.2))
MASS_DIAPHRAGM_SHARE = 0.0     # of the mass copies' juxta-pleural lesions, on the diaphragm's dome


def add_mass_copies(cohort_dir, train_cases: list[str], converted_dir, copies: int,
                    options: CohortOptions | None = None, diaphragm_share: float | None = None) -> Path:
    """Append ``copies`` more training volumes per case to a cohort built by :func:`build_training_cohort`,
    with masses: 40 % of the inserted lesions 30-50 mm (lung cancers larger than LIDC's 3-30 mm nodules), juxta-pleural
    ones more often, ``MASS_DIAPHRAGM_SHARE`` of those on the diaphragm (``MASS_SIZE_BANDS_MM``,
    ``MASS_TYPE_WEIGHTS``; 4-7 per volume). They are numbered after the
    cohort's copies (``options.copies + options.val_copies`` on) and go to its ``datalist.json`` "training" list
    and its tables; calling it again writes the same copies and lists them once (with another
    ``diaphragm_share``, 0-1, it redraws them in place: the recipe's classifier copies). Returns the datalist path."""
    base = options or CohortOptions()
    opts = replace(base, size_bands=MASS_SIZE_BANDS_MM, type_weights=MASS_TYPE_WEIGHTS, nodules=(4, 7),
                   diaphragm_share=MASS_DIAPHRAGM_SHARE if diaphragm_share is None else diaphragm_share)
    return _append_copies(cohort_dir, train_cases, converted_dir, base.copies + base.val_copies, copies, opts)


SMALL_SIZE_BANDS_MM = ((3.0, 6.0, 1.0),)
SMALL_TYPE_WEIGHTS = (("solid", 0.1), ("part_solid", 0.25), ("ground_glass", 0.3), ("juxta_pleural", 0.25),
                      ("juxta_vascular", 0.1))


def parse_type_shares(text: str) -> tuple[tuple[str, float], ...]:
    """``"juxta_vascular=0.7,solid=0.3"`` -> ``(("juxta_vascular", 0.7), ("solid", 0.3))``: inserted nodule types
    (``data_prep.synth.nodules.NODULE_TYPES``) with their shares (>= 0, any scale, not all 0; a type listed once).
    ValueError naming the part that is wrong."""
    shares: dict[str, float] = {}
    for part in (p.strip() for p in str(text).split(",")):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in NODULE_TYPES or name in shares:
            raise ValueError(f"{part!r}: TYPE=SHARE expected, each TYPE once, one of {', '.join(NODULE_TYPES)}")
        try:
            share = float(value)
        except ValueError:
            share = math.nan
        if not (math.isfinite(share) and share >= 0):
            raise ValueError(f"{part!r}: the share must be a number >= 0")
        shares[name] = share
    if sum(shares.values()) <= 0:
        raise ValueError(f"{text!r}: the shares must not all be 0")
    return tuple(shares.items())


def _first_small_copy(options: CohortOptions, mass_copies: int) -> int:
    """Index of the first small-nodule copy: after the cohort's training, validation and mass copies."""
    return options.copies + options.val_copies + mass_copies


def small_copy_names(train_cases: list[str], options: CohortOptions, mass_copies: int, copies: int) -> list[str]:
    """Case names of the copies :func:`add_small_copies` writes (after the cohort's and the mass copies)."""
    first = _first_small_copy(options, mass_copies)
    return [copy_name(case, idx) for case in train_cases for idx in range(first, first + copies)]


def add_small_copies(cohort_dir, train_cases: list[str], converted_dir, copies: int, mass_copies: int,
                     options: CohortOptions | None = None, type_weights=None) -> Path:
    """Append ``copies`` more training volumes per case with 10-16 nodules of 3-6 mm each, for the classifier
    only (the recipe's ``classifier_small`` stage: the segmenter is trained before they exist). Their types:
    ``type_weights`` ((type, share) pairs; None: ``SMALL_TYPE_WEIGHTS``, mostly the kinds the detectors reach
    worst: ground-glass 30 %, part-solid and juxta-pleural 25 % each). Numbered after the cohort's and its
    ``mass_copies`` mass copies; the same bookkeeping as :func:`add_mass_copies`. Returns the datalist path."""
    base = options or CohortOptions()
    weights = SMALL_TYPE_WEIGHTS if type_weights is None else tuple((str(t), float(w)) for t, w in type_weights)
    opts = replace(base, size_bands=SMALL_SIZE_BANDS_MM, type_weights=weights, nodules=(10, 16))
    return _append_copies(cohort_dir, train_cases, converted_dir, _first_small_copy(base, mass_copies), copies, opts)


def _append_copies(cohort_dir, train_cases: list[str], converted_dir, first: int, copies: int,
                   opts: CohortOptions) -> Path:
    """Write copies ``first`` .. ``first + copies - 1`` of every case with ``opts`` into a cohort, list them once
    in its ``datalist.json`` "training" list (replacing earlier entries of the same names) and rewrite its
    tables from every copy's record. Returns the datalist path."""
    out = Path(cohort_dir)
    indices = list(range(first, first + copies))
    jobs = [(converted_dir, case, out, indices, opts) for case in train_cases]
    if opts.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(opts.workers, len(jobs))) as pool:
            results = list(pool.map(_task, jobs))
    else:
        results = [_task(j) for j in jobs]
    path = out / "datalist.json"
    datalist = json.loads(path.read_text())
    added = {r["name"] for recs in results for r in recs}
    datalist["training"] = [e for e in datalist["training"] if e["case"] not in added] + [
        {"image": f"images/{r['name']}.nii.gz", "label": f"labels/{r['name']}.nii.gz", "case": r["name"],
         "source_case": r["source_case"]} for recs in results for r in recs]
    records = [json.loads(p.read_text()) for p in sorted((out / "nodules").glob("*.json"))]
    write_tables(out, records)
    write_text_atomic(path, json.dumps(datalist, indent=1) + "\n")
    return path
