"""A synthetic case in memory: the cohort's :class:`CohortConfig` (mm, HU), per-case random generators
and DICOM UIDs, and :func:`generate_case` (anatomy + nodules + readers -> :class:`SyntheticCase`).

Volumes are (z, y, x) = (slice k, row j, column i); slice k = 0 is the most inferior one (ascending
position along the slice normal, as ``data_prep convert`` orders them). World coordinates are LPS mm;
the grid is axial with direction identity (column -> patient left, row -> posterior), so the right lung
is on the image's left. Masks of nodules are :class:`~data_prep.masks.SparseMask` crops of that grid.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field

import numpy as np
from pydicom.uid import generate_uid
from scipy import ndimage

from data_prep.coords import Geometry
from data_prep.masks import SparseMask, consensus_mask
from data_prep.synth.anatomy import build_anatomy
from data_prep.synth.nodules import (NODULE_TYPES, NodulePlacer, NoduleSpec, blend_nodule, edge_step_mm,
                                     random_nodule_spec)
from data_prep.synth.readers import draw_ratings, draw_reader_ids, is_contourable, simulate_reader_masks

log = logging.getLogger(__name__)

SYNTH_VERSION = 1
GENERATOR_NAME = "lungnod-synth"
HU_STORED_MIN, HU_STORED_MAX = -1024, 3071          # stored value = HU + 1024 in 12 bits
SMALL_NODULE_MM = 3.0


@dataclass
class CohortConfig:
    """What :func:`write_cohort` generates. Lengths in mm, intensities in HU, ranges inclusive."""

    n_cases: int = 6
    seed: int = 0
    size_xy: int = 192                       # rows = columns
    pixel_spacing_mm: float = 1.6
    slice_spacing_mm: float = 2.0            # also SliceThickness
    n_slices: int = 80
    nodules_per_case: tuple[int, int] = (0, 4)
    diameter_mm: tuple[float, float] = (3.0, 30.0)   # nodules >= 3 mm (contoured); drawn log-uniform
    nodule_types: tuple[str, ...] = NODULE_TYPES
    readers_per_nodule: tuple[int, int] = (1, 4)     # the upper bound is also the readers per case
    small_nodules_per_case: tuple[int, int] = (0, 2)  # < 3 mm, point marks only, not in the truth masks
    non_nodules_per_case: tuple[int, int] = (0, 3)
    cavitary_fraction: float = 0.15          # share of solid nodules >= 10 mm given an air cavity
    noise_sd_hu: float = 18.0                # scanner noise added everywhere
    patient_prefix: str = "SYN"

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        def rng_ok(name, lo_min):
            lo, hi = getattr(self, name)
            if not (lo_min <= lo <= hi):
                raise ValueError(f"CohortConfig.{name} = {getattr(self, name)}: need {lo_min} <= low <= high")
        if not 0.0 <= self.cavitary_fraction <= 1.0:
            raise ValueError("CohortConfig.cavitary_fraction must be within 0-1")
        if self.n_cases < 0:
            raise ValueError("CohortConfig.n_cases must be >= 0")
        if self.size_xy < 48 or self.n_slices < 16:
            raise ValueError("CohortConfig: need size_xy >= 48 and n_slices >= 16 for a chest to fit")
        if self.pixel_spacing_mm <= 0 or self.slice_spacing_mm <= 0:
            raise ValueError("CohortConfig: spacings must be > 0 mm")
        rng_ok("nodules_per_case", 0)
        rng_ok("readers_per_nodule", 1)
        rng_ok("small_nodules_per_case", 0)
        rng_ok("non_nodules_per_case", 0)
        rng_ok("diameter_mm", SMALL_NODULE_MM)
        unknown = set(self.nodule_types) - set(NODULE_TYPES)
        if unknown or not self.nodule_types:
            raise ValueError(f"CohortConfig.nodule_types: unknown {sorted(unknown)}; choose from {NODULE_TYPES}")

    def fingerprint(self) -> str:
        """Hash of every field but ``n_cases``: case i is the same in a cohort of 6 and one of 60."""
        d = asdict(self)
        d.pop("n_cases")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]


def case_rng(config: CohortConfig, index: int) -> np.random.Generator:
    """The random generator :func:`write_cohort` uses for case ``index`` (independent per case)."""
    return np.random.default_rng([int(config.seed), int(index), 0x5EED])


def patient_id_for(config: CohortConfig, index: int) -> str:
    return f"{config.patient_prefix}-{index + 1:04d}"


def planned_nodule_count(config: CohortConfig, index: int) -> int:
    """Nodules (>= 3 mm) asked of case ``index``: drawn from ``nodules_per_case``, except that among the
    first three cases one has none and one has at least two (when the range allows it)."""
    lo, hi = config.nodules_per_case
    n = int(np.random.default_rng([int(config.seed), int(index), 1]).integers(lo, hi + 1))
    special = np.random.default_rng([int(config.seed), 2]).permutation(3)
    if index == special[0] and lo == 0:
        n = 0
    elif index == special[1] and hi >= 2:
        n = max(n, 2)
    return n


def case_uids(config: CohortConfig, index: int) -> dict[str, str]:
    """Deterministic DICOM UIDs of case ``index`` (study, series, frame of reference, XML message)."""
    base = f"{GENERATOR_NAME}/{SYNTH_VERSION}/{config.fingerprint()}/{index}"
    return {name: str(generate_uid(entropy_srcs=[base, name])) for name in ("study", "series", "frame", "message")}


def sop_uid_for(config: CohortConfig, index: int, k: int) -> str:
    """SOPInstanceUID of slice k (k = 0 is the most inferior slice)."""
    base = f"{GENERATOR_NAME}/{SYNTH_VERSION}/{config.fingerprint()}/{index}"
    return str(generate_uid(entropy_srcs=[base, "sop", str(k)]))


@dataclass
class SyntheticNodule:
    """One true nodule (>= 3 mm) with its readers. Masks are crops on the case grid (z, y, x)."""

    id: int
    spec: NoduleSpec
    design_centre_lps: np.ndarray
    truth: SparseMask
    reader_masks: dict[str, SparseMask]
    consensus: SparseMask
    characteristics: dict[str, dict[str, int]]
    reader_nodule_ids: dict[str, str] = field(default_factory=dict)


@dataclass
class PointMark:
    """A point-only mark: a nodule < 3 mm (drawn in the image) or a non-nodule (nothing drawn).
    ``points`` maps reader -> (column, row, slice k)."""

    kind: str
    centre_lps: np.ndarray
    diameter_mm: float
    points: dict[str, tuple[int, int, int]]
    reader_mark_ids: dict[str, str] = field(default_factory=dict)


@dataclass
class SyntheticCase:
    index: int
    patient_id: str
    uids: dict[str, str]
    sop_uids: list[str]                     # by slice k (k = 0 most inferior)
    hu_zyx: np.ndarray                      # int16 HU
    geometry: Geometry
    lung_mask_zyx: np.ndarray               # bool
    readers: list[str]
    nodules: list[SyntheticNodule]
    small_nodules: list[PointMark]
    non_nodules: list[PointMark]
    fingerprint: str

    @property
    def series_uid(self) -> str:
        return self.uids["series"]

    @property
    def study_uid(self) -> str:
        return self.uids["study"]

    def _instance(self, which: str) -> np.ndarray:
        out = np.zeros(self.hu_zyx.shape, dtype=np.uint16)
        for n in self.nodules:
            m = getattr(n, which)
            lo, hi = m.bounds()
            view = out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            view[m.array] = n.id
        return out

    def truth_instance_mask(self) -> np.ndarray:
        """(z, y, x) uint16, nodule id on its true voxels."""
        return self._instance("truth")

    def consensus_instance_mask(self) -> np.ndarray:
        """(z, y, x) uint16, nodule id where >= 50 % of its readers marked the voxel."""
        return self._instance("consensus")

    def z_of(self, k: int) -> float:
        return float(self.geometry.voxel_to_world([0, 0, k])[2])


def _case_geometry(config: CohortConfig, rng) -> Geometry:
    n, ps, ss, nz = config.size_xy, config.pixel_spacing_mm, config.slice_spacing_mm, config.n_slices
    ox = float(f"{-(n - 1) / 2 * ps + rng.uniform(-8, 8):.4f}")
    oy = float(f"{-(n - 1) / 2 * ps + rng.uniform(-20, 0):.4f}")
    top = round(rng.uniform(-60, -5) * 2) / 2
    oz = float(f"{top - (nz - 1) * ss:.4f}")
    return Geometry((ox, oy, oz), (float(ps), float(ps), float(ss)), shape=(n, n, nz))


def _point_of(geometry: Geometry, centre_lps, rng, jitter: int) -> tuple[int, int, int]:
    i, j, k = np.round(geometry.world_to_voxel(centre_lps)).astype(int)
    di, dj = rng.integers(-jitter, jitter + 1, 2)
    ni, nj, _ = geometry.shape
    return int(np.clip(i + di, 0, ni - 1)), int(np.clip(j + dj, 0, nj - 1)), int(k)


def generate_case(config: CohortConfig, index: int, rng: np.random.Generator) -> SyntheticCase:
    """Make case ``index`` of a cohort in memory (HU volume, truth, readers); nothing is written.

    Determinism: the same (config, index, rng seed) gives the same case; UIDs depend only on
    (config, index).
    """
    config.validate()
    geometry = _case_geometry(config, rng)
    anatomy = build_anatomy(geometry, rng)
    hu = anatomy.hu
    step = edge_step_mm(geometry)
    margin = max(3.0, 2.0 * max(geometry.spacing))
    forbidden = ndimage.binary_dilation(anatomy.airway, iterations=2)
    placer = NodulePlacer(hu, anatomy.lung, geometry, anatomy.vessel, forbidden, margin_mm=margin)
    d_lo, d_hi = config.diameter_mm
    n_case_readers = config.readers_per_nodule[1]
    readers = draw_reader_ids(rng, n_case_readers)

    nodules: list[SyntheticNodule] = []
    for _ in range(planned_nodule_count(config, index)):
        ntype = str(rng.choice(list(config.nodule_types)))
        d = float(np.exp(rng.uniform(np.log(d_lo), np.log(d_hi))))
        cavitary = ntype == "solid" and d >= 10 and rng.random() < config.cavitary_fraction
        cavity = rng.uniform(0.3, 0.5) if cavitary else 0.0
        p = None
        for attempt_type in (ntype, ntype, ntype, "solid"):
            spec = random_nodule_spec(rng, attempt_type, d, cavity if attempt_type == ntype else 0.0)
            p = placer.place_shrinking(spec, rng, d_lo)
            if p is not None and is_contourable(p.mask):
                break
            p = None
        if p is None:
            log.warning("case %d: no room for a %.1f mm %s nodule; left out", index, d, ntype)
            continue
        placer.commit(p)
        hu[p.slices] = blend_nodule(hu[p.slices], p, rng, step)
        mask = p.mask
        # Readers work on a crop padded by 1 slice and 2 pixels (room for their edits).
        lo = np.maximum(np.array(p.box[0]) - (1, 2, 2), 0)
        hi = np.minimum(np.array(p.box[1]) + (1, 2, 2), hu.shape)
        truth = np.zeros(tuple(hi - lo), dtype=bool)
        off = np.array(p.box[0]) - lo
        truth[off[0]:off[0] + mask.shape[0], off[1]:off[1] + mask.shape[1], off[2]:off[2] + mask.shape[2]] = mask
        n_r = int(rng.integers(config.readers_per_nodule[0], config.readers_per_nodule[1] + 1))
        who = sorted(rng.choice(n_case_readers, size=n_r, replace=False).tolist())
        rmasks = simulate_reader_masks(truth, n_r, rng)
        lo_t = tuple(int(v) for v in lo)
        sparse = {readers[w]: SparseMask(lo_t, m) for w, m in zip(who, rmasks)}
        cons, _ = consensus_mask(list(sparse.values()), 0.5)
        ratings = draw_ratings(rng, p.spec, n_r)
        nodules.append(SyntheticNodule(len(nodules) + 1, p.spec, p.centre_lps, SparseMask(lo_t, truth), sparse, cons,
                                       {readers[w]: r for w, r in zip(who, ratings)}))

    small: list[PointMark] = []
    for _ in range(int(rng.integers(config.small_nodules_per_case[0], config.small_nodules_per_case[1] + 1))):
        p = placer.place(random_nodule_spec(rng, "solid", rng.uniform(1.6, 2.9)), rng)
        if p is None:
            continue
        placer.commit(p)
        hu[p.slices] = blend_nodule(hu[p.slices], p, rng, step)
        n_r = int(rng.integers(1, n_case_readers + 1))
        who = sorted(rng.choice(n_case_readers, size=n_r, replace=False).tolist())
        small.append(PointMark("small_nodule", p.centre_lps, p.spec.diameter_mm,
                               {readers[w]: _point_of(geometry, p.centre_lps, rng, 1) for w in who}))

    non: list[PointMark] = []
    vessel_idx = np.flatnonzero(anatomy.vessel & ~placer.occupied)
    for _ in range(int(rng.integers(config.non_nodules_per_case[0], config.non_nodules_per_case[1] + 1))):
        if vessel_idx.size == 0:
            break
        z, y, x = np.unravel_index(int(vessel_idx[rng.integers(vessel_idx.size)]), hu.shape)
        centre = geometry.voxel_to_world([x, y, z])
        n_r = int(rng.integers(1, min(2, n_case_readers) + 1))
        who = sorted(rng.choice(n_case_readers, size=n_r, replace=False).tolist())
        non.append(PointMark("non_nodule", centre, 0.0, {readers[w]: _point_of(geometry, centre, rng, 1) for w in who}))

    hu += rng.normal(0.0, config.noise_sd_hu, hu.shape).astype(np.float32)
    hu_i16 = np.clip(np.rint(hu), HU_STORED_MIN, HU_STORED_MAX).astype(np.int16)
    _assign_mark_ids(rng, readers, nodules, small, non)
    return SyntheticCase(
        index=index, patient_id=patient_id_for(config, index), uids=case_uids(config, index),
        sop_uids=[sop_uid_for(config, index, k) for k in range(geometry.shape[2])],
        hu_zyx=hu_i16, geometry=geometry, lung_mask_zyx=anatomy.lung, readers=readers, nodules=nodules,
        small_nodules=small, non_nodules=non, fingerprint=config.fingerprint())


_ID_STYLES = (lambda n, r: f"Nodule {n:03d}", lambda n, r: f"IL057_{int(r.integers(100000, 999999))}",
              lambda n, r: str(n), lambda n, r: f"MI014_{int(r.integers(10000, 99999))}")


def _assign_mark_ids(rng, readers, nodules, small, non) -> None:
    """Each reader numbers its own marks, in its own style and its own order (as in LIDC); styles differ
    between readers, so two readers never give one nodule the same ID."""
    styles = rng.permutation(len(_ID_STYLES))
    for ri, reader in enumerate(readers):
        base_style = _ID_STYLES[int(styles[ri % len(_ID_STYLES)])]
        suffix = f"-{ri // len(_ID_STYLES)}" if ri >= len(_ID_STYLES) else ""

        def style(n, r, base_style=base_style, suffix=suffix):
            return base_style(n, r) + suffix
        marks = [m for m in nodules if reader in m.reader_masks] + [m for m in small if reader in m.points]
        used: set[str] = set()
        for n, pos in enumerate(rng.permutation(len(marks)), start=1):
            mid = style(n, rng)
            while mid in used:
                mid = f"{mid}_{n}"
            used.add(mid)
            target = marks[int(pos)]
            (target.reader_nodule_ids if isinstance(target, SyntheticNodule) else target.reader_mark_ids)[reader] = mid
        for n, m in enumerate([m for m in non if reader in m.points], start=1):
            m.reader_mark_ids[reader] = f"_Non-nodule {n:03d}"
