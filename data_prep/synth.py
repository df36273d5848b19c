"""Synthetic chest CT cohort: procedural anatomy and nodules in HU, written as real DICOM series with
LIDC-style XML reads and the ground truth they were made from.

Layout written by :func:`write_cohort` (TCIA's LIDC layout for the images)::

    out_dir/dicom/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/*.dcm + one NNN.xml (LIDC reads)
    out_dir/ground_truth/<SeriesInstanceUID>.json              nodules, readers, marks, geometry
    out_dir/ground_truth/<SeriesInstanceUID>_truth.nii.gz      uint16 instance mask of the true nodules
    out_dir/ground_truth/<SeriesInstanceUID>_consensus.nii.gz  uint16 instance mask, >= 50 % of readers

Volumes in memory are (z, y, x) = (slice k, row j, column i); slice k = 0 is the most inferior one
(ascending position along the slice normal, as ``data_prep convert`` orders them) while DICOM
InstanceNumber counts from the top (superior) slice down, as in LIDC. World coordinates are LPS mm;
the series is axial with ImageOrientationPatient [1, 0, 0, 0, 1, 0] (column -> patient left, row ->
posterior), so the right lung is on the image's left.

The nodule model (:class:`NoduleSpec`, :class:`NodulePlacer`, :func:`blend_nodule`) is shared with
:mod:`data_prep.insert`, which puts the same nodules into real CT volumes.

Reader simulation: each nodule is contoured by 1-4 of the case's readers. A reader's mask is the true
mask with local edits on some slices (a boundary arc grown or shrunk by one pixel, one slice more or
less at an end). Edits are budgeted per voxel so that the >= 50 % consensus reproduces the truth:
a voxel outside the truth is added by fewer readers than the consensus needs, a voxel inside is
removed by no more readers than the consensus can spare. Only big nodules get, in addition,
unbudgeted edits (each at most 2 % of their voxels), so the consensus is close to, not always equal
to, the truth. Cavitary nodules (an air cavity, not part of the mask) give hole contours
(``inclusion FALSE``), as in LIDC.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from data_prep.errors import OutputError
from data_prep.masks import SparseMask, consensus_mask, equivalent_diameter_mm, nodule_stats
from data_prep.nifti_io import write_nifti, write_text_atomic
from data_prep.coords import Geometry

log = logging.getLogger(__name__)

SYNTH_VERSION = 1
GENERATOR_NAME = "lungnod-synth"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
LIDC_NAMESPACE = "http://www.nih.gov"

NODULE_TYPES = ("solid", "part_solid", "ground_glass", "juxta_pleural", "juxta_vascular")
SOLID_HU = (0.0, 50.0)
GROUND_GLASS_HU = (-600.0, -400.0)
HU_AIR, HU_FAT, HU_SOFT, HU_LUNG, HU_VESSEL = -1000.0, -100.0, 40.0, -860.0, 40.0
HU_STORED_MIN, HU_STORED_MAX = -1024, 3071          # stored value = HU + 1024 in 12 bits
RESCALE_INTERCEPT = -1024
AIR_CHECK_HU = -960.0      # a nodule site with many voxels below this is an airway, not parenchyma
SMALL_NODULE_MM = 3.0


# =================================================================================================
# Configuration
# =================================================================================================

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


# =================================================================================================
# Nodule model (shared with data_prep.insert)
# =================================================================================================

def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5 ** 0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)


_SPHERE_DIRS = _fibonacci_sphere(2000)


@dataclass(frozen=True)
class NoduleSpec:
    """Shape and intensity of one simulated nodule.

    In the nodule frame ``q = (p @ rotation) / axes`` (p: LPS mm offset from the centre; rotation
    columns are the principal axes; axes multiply to 1) the surface is
    ``|q| = radius_mm * (1 + sum_n amp_n cos(2 pi freq_n (u . dir_n) + phase_n))``, ``u = q / |q|``: an
    ellipsoid with a smooth low-frequency radial perturbation whose volume is that of a sphere of
    ``diameter_mm``. Intensities in HU: ``hu`` is the solid HU (solid types, part-solid core) or the
    ground-glass HU; ``halo_hu`` the ground-glass halo of a part-solid nodule, whose core is the same
    shape scaled by ``core_fraction``. A cavitary nodule (``cavity_fraction`` > 0) has an air cavity,
    the same shape scaled by that fraction, which is not part of the nodule's mask (LIDC readers
    exclude it with an ``inclusion FALSE`` contour).
    """

    type: str
    diameter_mm: float
    radius_mm: float
    hu: float
    halo_hu: float | None
    core_fraction: float
    texture_sd_hu: float
    axes: tuple[float, float, float]
    rotation: tuple[float, ...]
    perturb_dirs: tuple[tuple[float, float, float], ...]
    perturb_amp: tuple[float, ...]
    perturb_freq: tuple[float, ...]
    perturb_phase: tuple[float, ...]
    cavity_fraction: float = 0.0

    def surface_scale(self, u: np.ndarray) -> np.ndarray:
        """(..., 3) unit vectors in the nodule frame -> 1 + radial perturbation."""
        dirs = np.asarray(self.perturb_dirs, dtype=np.float32)
        proj = u @ dirs.T                                   # (..., n)
        terms = np.asarray(self.perturb_amp, np.float32) * np.cos(
            np.float32(2 * np.pi) * np.asarray(self.perturb_freq, np.float32) * proj
            + np.asarray(self.perturb_phase, np.float32))
        return 1.0 + terms.sum(axis=-1)

    @property
    def bounding_radius_mm(self) -> float:
        return float(self.radius_mm * max(self.axes) * (1.0 + sum(abs(a) for a in self.perturb_amp)))

    def resized(self, diameter_mm: float) -> "NoduleSpec":
        return replace(self, diameter_mm=float(diameter_mm),
                       radius_mm=_radius_for(self, float(diameter_mm)))

    def radial_fields(self, offsets_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(..., 3) LPS mm offsets from the centre -> (|q|, surface radius along q), both in mm.

        A point is inside the nodule when ``|q| <= surface``; ``surface - |q|`` approximates its depth
        below the surface in mm.
        """
        rot = np.asarray(self.rotation, dtype=np.float32).reshape(3, 3)
        q = (offsets_lps.astype(np.float32) @ rot) / np.asarray(self.axes, dtype=np.float32)
        rn = np.linalg.norm(q, axis=-1)
        u = q / np.maximum(rn, 1e-6)[..., None]
        return rn, self.radius_mm * self.surface_scale(u)

    def as_dict(self) -> dict:
        return {"type": self.type, "diameter_mm": self.diameter_mm, "hu": self.hu, "halo_hu": self.halo_hu,
                "core_fraction": self.core_fraction, "cavity_fraction": self.cavity_fraction, "axes": list(self.axes),
                "perturbation_amplitude": float(sum(self.perturb_amp))}


def _radius_for(spec: NoduleSpec, diameter_mm: float) -> float:
    """Radius making the shape's volume (mean of scale^3 over the sphere) that of a sphere of diameter_mm."""
    s = spec.surface_scale(_SPHERE_DIRS.astype(np.float32))
    return float(diameter_mm / 2.0 / np.cbrt(np.mean(s.astype(np.float64) ** 3)))


def random_nodule_spec(rng: np.random.Generator, nodule_type: str, diameter_mm: float,
                       cavity_fraction: float = 0.0) -> NoduleSpec:
    """A random nodule of a type (one of NODULE_TYPES) and equivalent-sphere diameter (mm) of its
    outer surface; ``cavity_fraction`` (0-0.6) gives it an air cavity of that relative size."""
    if not 0.0 <= cavity_fraction <= 0.6:
        raise ValueError("cavity_fraction must be within 0-0.6")
    if nodule_type not in NODULE_TYPES:
        raise ValueError(f"unknown nodule type {nodule_type!r}; choose from {NODULE_TYPES}")
    axes = rng.uniform(0.85, 1.15, 3)
    axes = axes / np.cbrt(np.prod(axes))
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    dirs = rng.standard_normal((3, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    halo, core = None, 0.0
    if nodule_type == "ground_glass":
        hu, texture = rng.uniform(*GROUND_GLASS_HU), 25.0
    elif nodule_type == "part_solid":
        hu, texture = rng.uniform(*SOLID_HU), 20.0
        halo, core = float(rng.uniform(GROUND_GLASS_HU[0], -450.0)), float(rng.uniform(0.35, 0.6))
    else:
        hu, texture = rng.uniform(*SOLID_HU), 12.0
    spec = NoduleSpec(
        type=nodule_type, diameter_mm=float(diameter_mm), radius_mm=1.0, hu=float(hu), halo_hu=halo,
        core_fraction=core, texture_sd_hu=texture, axes=tuple(float(a) for a in axes),
        rotation=tuple(float(v) for v in q.ravel()),
        perturb_dirs=tuple(tuple(float(v) for v in d) for d in dirs),
        perturb_amp=tuple(float(a) for a in rng.uniform(0.02, 0.06, 3)),
        perturb_freq=tuple(float(f) for f in rng.uniform(0.5, 1.2, 3)),
        perturb_phase=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, 3)),
        cavity_fraction=float(cavity_fraction),
    )
    return spec.resized(diameter_mm)


@dataclass
class Placement:
    """A nodule at a place: its crop ``box`` ((z0, y0, x0), (z1, y1, x1)) of the volume, the radial
    fields on that crop (mm), and the blend ``weight`` (float32, 0 outside the nodule, 0.5-1 inside;
    ``weight > 0`` is the nodule's true mask)."""

    spec: NoduleSpec
    centre_lps: np.ndarray
    box: tuple[tuple[int, int, int], tuple[int, int, int]]
    rn: np.ndarray
    surface: np.ndarray
    weight: np.ndarray

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        lo, hi = self.box
        return tuple(slice(a, b) for a, b in zip(lo, hi))

    @property
    def mask(self) -> np.ndarray:
        return self.weight > 0

    def sparse_mask(self) -> SparseMask:
        return SparseMask(self.box[0], self.mask)


def _crop_fields(spec: NoduleSpec, centre_lps, geometry: Geometry, pad_mm: float):
    """Crop box around a centre and the nodule's radial fields on it; None if the box leaves the volume."""
    c = geometry.world_to_voxel(np.asarray(centre_lps, dtype=float))
    half = (spec.bounding_radius_mm + pad_mm) / np.asarray(geometry.spacing) + 1.0
    lo = np.floor(c - half).astype(int)
    hi = np.ceil(c + half).astype(int) + 1
    if np.any(lo < 0) or np.any(hi > np.asarray(geometry.shape)):
        return None
    kk, jj, ii = np.meshgrid(np.arange(lo[2], hi[2]), np.arange(lo[1], hi[1]), np.arange(lo[0], hi[0]), indexing="ij")
    world = geometry.voxel_to_world(np.stack([ii, jj, kk], axis=-1))
    rn, surface = spec.radial_fields(world - np.asarray(centre_lps, dtype=float))
    box = ((int(lo[2]), int(lo[1]), int(lo[0])), (int(hi[2]), int(hi[1]), int(hi[0])))
    return box, rn, surface


def edge_step_mm(geometry: Geometry) -> float:
    """Width (mm) of the partial-volume edge of drawn structures: the voxel's geometric-mean spacing."""
    return float(np.cbrt(np.prod(geometry.spacing)))


def blend_weight(rn: np.ndarray, surface: np.ndarray, step_mm: float, cavity_fraction: float = 0.0) -> np.ndarray:
    """Partial-volume blend weight: 0 outside the surface (and inside a cavity), 0.5 on it, 1 from
    ``step_mm / 2`` below it."""
    w = np.clip(0.5 + (surface - rn) / step_mm, 0.5, 1.0).astype(np.float32)
    w[(rn > surface) | (rn <= surface * cavity_fraction)] = 0.0
    return w


def blend_nodule(background_hu: np.ndarray, placement: Placement, rng: np.random.Generator,
                 step_mm: float) -> np.ndarray:
    """New HU values (float32) of the placement's crop, given the crop's background HU.

    Inside the nodule the value moves from the background towards ``max(background, nodule HU)`` by the
    blend weight, so vessels crossing a ground-glass nodule stay visible; a cavity is air. Outside the
    nodule and its cavity nothing changes.
    """
    spec = placement.spec
    inten = np.full(background_hu.shape, spec.hu, dtype=np.float32)
    if spec.type == "part_solid" and spec.halo_hu is not None:
        core_w = np.clip(0.5 + (placement.surface * spec.core_fraction - placement.rn) / step_mm, 0.0, 1.0)
        inten = (spec.halo_hu + (spec.hu - spec.halo_hu) * core_w).astype(np.float32)
    inten += rng.normal(0.0, spec.texture_sd_hu, background_hu.shape).astype(np.float32)
    bg = background_hu.astype(np.float32)
    target = np.maximum(bg, inten)
    out = bg + placement.weight * (target - bg)
    if spec.cavity_fraction > 0:
        cavity = placement.rn <= placement.surface * spec.cavity_fraction
        out[cavity] = HU_AIR + rng.normal(0.0, spec.texture_sd_hu, int(cavity.sum())).astype(np.float32)
    return out


class NodulePlacer:
    """Finds room for nodules inside a lung mask and remembers what is taken.

    hu_zyx: (z, y, x) HU of the volume; lung_mask_zyx: bool lungs (vessels included); vessel_mask_zyx:
    bool vessels inside the lungs (needed for juxta-vascular nodules); forbidden_zyx: voxels no nodule
    may come near (airways). Nodules keep ``margin_mm`` of lung around them (except where juxta types
    touch the wall or a vessel) and of distance to each other.
    """

    def __init__(self, hu_zyx: np.ndarray, lung_mask_zyx: np.ndarray, geometry: Geometry,
                 vessel_mask_zyx: np.ndarray | None = None, forbidden_zyx: np.ndarray | None = None,
                 margin_mm: float = 3.0):
        self.hu = hu_zyx
        self.lung = lung_mask_zyx.astype(bool, copy=False)
        self.geometry = geometry
        self.vessel = vessel_mask_zyx
        self.occupied = (np.zeros(self.lung.shape, dtype=bool) if forbidden_zyx is None
                         else forbidden_zyx.astype(bool).copy())
        self.margin_mm = float(margin_mm)
        self.step_mm = edge_step_mm(geometry)
        self._lung_idx = self._wall_idx = self._vessel_idx = None

    # -- candidate sources --------------------------------------------------------------------
    def _lung_voxels(self):
        if self._lung_idx is None:
            self._lung_idx = np.flatnonzero(self.lung)
        return self._lung_idx

    def _wall_voxels(self):
        if self._wall_idx is None:
            inner = ndimage.binary_erosion(self.lung, structure=ndimage.generate_binary_structure(2, 1)[None])
            self._wall_idx = np.flatnonzero(self.lung & ~inner)
        return self._wall_idx

    def _vessel_voxels(self):
        if self._vessel_idx is None:
            self._vessel_idx = np.flatnonzero(self.vessel & self.lung) if self.vessel is not None else np.zeros(0, int)
        return self._vessel_idx

    def _world_of(self, flat_index: int, rng) -> np.ndarray:
        z, y, x = np.unravel_index(flat_index, self.lung.shape)
        return self.geometry.voxel_to_world(np.array([x, y, z], dtype=float) + rng.uniform(-0.4, 0.4, 3))

    def _candidate(self, spec: NoduleSpec, rng) -> np.ndarray | None:
        if spec.type == "juxta_pleural":
            idx = self._wall_voxels()
            if idx.size == 0:
                return None
            b = self._world_of(int(idx[rng.integers(idx.size)]), rng)
            normal = self._inward_normal(b, max(2.0 * spec.radius_mm, 6.0))
            if normal is None:
                return None
            return b + normal * spec.radius_mm * rng.uniform(0.5, 0.85)
        if spec.type == "juxta_vascular":
            idx = self._vessel_voxels()
            if idx.size == 0:
                return None
            v = self._world_of(int(idx[rng.integers(idx.size)]), rng)
            d = rng.standard_normal(3)
            return v + d / np.linalg.norm(d) * (spec.radius_mm + 0.5 * self.step_mm)
        idx = self._lung_voxels()
        if idx.size == 0:
            return None
        return self._world_of(int(idx[rng.integers(idx.size)]), rng)

    def _inward_normal(self, point_lps, radius_mm) -> np.ndarray | None:
        """Unit LPS vector from a wall point towards the centroid of the lung around it."""
        c = self.geometry.world_to_voxel(point_lps)
        half = radius_mm / np.asarray(self.geometry.spacing)
        lo = np.maximum(np.floor(c - half).astype(int), 0)
        hi = np.minimum(np.ceil(c + half).astype(int) + 1, np.asarray(self.geometry.shape))
        crop = self.lung[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
        z, y, x = np.nonzero(crop)
        if z.size == 0:
            return None
        centroid = self.geometry.voxel_to_world(np.array([x.mean() + lo[0], y.mean() + lo[1], z.mean() + lo[2]]))
        n = centroid - point_lps
        norm = np.linalg.norm(n)
        return n / norm if norm > 1e-3 else None

    # -- checks -------------------------------------------------------------------------------
    def evaluate(self, spec: NoduleSpec, centre_lps) -> Placement | None:
        """The nodule at ``centre_lps`` if it fits the rules of its type there, else None."""
        got = _crop_fields(spec, centre_lps, self.geometry, self.margin_mm + self.step_mm)
        if got is None:
            return None
        box, rn, surface = got
        sl = tuple(slice(a, b) for a, b in zip(*box))
        lung, occ, hu = self.lung[sl], self.occupied[sl], self.hu[sl]
        shape = rn <= surface
        n_shape = int(shape.sum())
        if n_shape == 0:
            return None
        grown = rn <= surface + self.margin_mm
        vessel = self.vessel[sl] if self.vessel is not None else np.zeros_like(shape)
        if spec.type == "juxta_pleural":
            outside = shape & ~lung
            frac_out = outside.sum() / n_shape
            if not (0.05 <= frac_out <= 0.4):
                return None
            if np.mean(hu[outside] > -500) < 0.9:            # touching chest wall tissue, not an airway
                return None
            if (grown & occ).any():
                return None
        elif spec.type == "juxta_vascular":
            if ((rn <= surface + 1.0) & ~lung).any() or (grown & occ).any():
                return None
            touch = (rn <= surface + self.step_mm) & vessel & ~shape
            if not touch.any() or (shape & vessel).sum() > 0.3 * n_shape:
                return None
        else:
            if (grown & ~lung).any() or (grown & occ).any():
                return None
            if (shape & vessel).sum() > 0.2 * n_shape:
                return None
        inside = shape & lung
        if inside.sum() < 0.6 * n_shape or np.mean(hu[inside] < AIR_CHECK_HU) > 0.3:
            return None
        weight = blend_weight(rn, surface, self.step_mm, spec.cavity_fraction)
        weight[~lung] = 0.0
        return Placement(spec, np.asarray(centre_lps, dtype=float), box, rn, surface, weight)

    def place(self, spec: NoduleSpec, rng: np.random.Generator, tries: int = 300) -> Placement | None:
        """Try random sites for ``spec`` (by its type's rules); None if none of ``tries`` fits."""
        for _ in range(tries):
            centre = self._candidate(spec, rng)
            if centre is None:
                return None
            p = self.evaluate(spec, centre)
            if p is not None:
                return p
        return None

    def place_shrinking(self, spec: NoduleSpec, rng, min_diameter_mm: float, tries: int = 150) -> Placement | None:
        """Like :meth:`place`, shrinking the nodule by 15 % after each failed round down to ``min_diameter_mm``."""
        while True:
            p = self.place(spec, rng, tries)
            if p is not None or spec.diameter_mm <= min_diameter_mm:
                return p
            spec = spec.resized(max(min_diameter_mm, spec.diameter_mm * 0.85))

    def commit(self, placement: Placement) -> None:
        """Mark the placed nodule and its margin as taken."""
        self.occupied[placement.slices] |= placement.rn <= placement.surface + self.margin_mm


# =================================================================================================
# Anatomy
# =================================================================================================

@dataclass
class Anatomy:
    hu: np.ndarray          # (z, y, x) float32 HU, no scanner noise yet
    lung: np.ndarray        # (z, y, x) bool, lung parenchyma with its vessels and intrapulmonary airways
    vessel: np.ndarray      # (z, y, x) bool, vessel voxels (blend >= 0.5) inside the lungs
    airway: np.ndarray      # (z, y, x) bool, airway lumen and wall


def _draw_tube(frac: np.ndarray, a, b, ra: float, rb: float, spacing_xyz, step_mm: float) -> None:
    """Max-accumulate a tapered tube from a to b (grid mm, x y z; radii mm) into ``frac`` (z, y, x) as a
    partial-volume coverage in [0, 1]."""
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    sp = np.asarray(spacing_xyz, dtype=np.float32)
    r = max(ra, rb) + step_mm
    lo = np.maximum(np.floor((np.minimum(a, b) - r) / sp).astype(int), 0)
    shape_xyz = np.array(frac.shape[::-1])
    hi = np.minimum(np.ceil((np.maximum(a, b) + r) / sp).astype(int) + 1, shape_xyz)
    if np.any(hi <= lo):
        return
    px = (np.arange(lo[0], hi[0], dtype=np.float32) * sp[0] - a[0])[None, None, :]
    py = (np.arange(lo[1], hi[1], dtype=np.float32) * sp[1] - a[1])[None, :, None]
    pz = (np.arange(lo[2], hi[2], dtype=np.float32) * sp[2] - a[2])[:, None, None]
    ab = b - a
    length2 = float(ab @ ab) or 1e-6
    t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / length2, 0.0, 1.0)
    d = np.sqrt((px - t * ab[0]) ** 2 + (py - t * ab[1]) ** 2 + (pz - t * ab[2]) ** 2)
    cover = np.clip((ra + t * (rb - ra) - d) / step_mm + 0.5, 0.0, 1.0)
    view = frac[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
    np.maximum(view, cover, out=view)


def _rotate(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation of v about the unit axis."""
    return v * math.cos(angle) + np.cross(axis, v) * math.sin(angle) + axis * (axis @ v) * (1 - math.cos(angle))


def _vessel_tree(rng, root, directions, radius, length, inside, max_depth=8) -> list[tuple]:
    """Procedural branching tree (grid mm): segments (start, end, r_start, r_end).

    Each segment forks in two, thinner (about Murray's law) and shorter, turned 20-40 degrees and
    bent away from the root; a child whose end would leave the lungs (``inside(point)`` false) gets up
    to four other angles, then is dropped, so the tree fills the lung instead of piercing its wall.
    """
    segs = []
    root = np.asarray(root, float)
    stack = [(root, d / np.linalg.norm(d), radius, ln, 0) for d, ln in zip(directions, length)]
    while stack:
        p, d, r, ln, depth = stack.pop()
        end = p + d * ln
        r_end = r * 0.85
        segs.append((p, end, r, r_end))
        if depth >= max_depth:
            continue
        away = end - root
        away /= max(np.linalg.norm(away), 1e-6)
        for sign in (1.0, -1.0):
            rc = r_end * rng.uniform(0.75, 0.9)
            lc = ln * rng.uniform(0.7, 0.85)
            if rc < 0.45:
                continue
            for _ in range(5):
                perp = np.cross(d, rng.standard_normal(3))
                perp /= max(np.linalg.norm(perp), 1e-6)
                nd = _rotate(d, perp, sign * math.radians(rng.uniform(20, 40))) + 0.3 * away
                nd /= np.linalg.norm(nd)
                if inside(end + nd * lc):
                    stack.append((end, nd, rc, lc, depth + 1))
                    break
    return segs


def build_anatomy(geometry: Geometry, rng: np.random.Generator) -> Anatomy:
    """Procedural chest on ``geometry`` (axial, identity direction): air, body (fat layer, soft
    tissue), ribs, sternum, spine, heart and aorta, two lungs narrowing to the apex with diaphragm
    domes at the base, trachea splitting into bronchi, branching vessel trees. All sizes scale with the
    field of view and the z extent."""
    nx, ny, nz = geometry.shape
    sx, sy, sz = geometry.spacing
    step = edge_step_mm(geometry)
    half_fov = min(nx * sx, ny * sy) / 2.0
    scale = rng.uniform(0.9, 1.0)
    bx, by = 0.86 * half_fov * scale, 0.62 * half_fov * scale
    bcx, bcy = rng.uniform(-0.03, 0.03) * half_fov, rng.uniform(0.0, 0.06) * half_fov
    fat = rng.uniform(0.06, 0.12) * by
    ix, iy = bx - fat, by - fat
    x = ((np.arange(nx) - (nx - 1) / 2) * sx - bcx).astype(np.float32)[None, None, :]
    y = ((np.arange(ny) - (ny - 1) / 2) * sy - bcy).astype(np.float32)[None, :, None]
    zmm = (np.arange(nz) * sz).astype(np.float32)[:, None, None]
    z_len = max((nz - 1) * sz, 1.0)
    t = zmm / z_len

    def to_grid(xb, yb, zb):
        return np.array([xb + bcx + (nx - 1) / 2 * sx, yb + bcy + (ny - 1) / 2 * sy, zb], dtype=float)

    body = (x / bx) ** 2 + (y / by) ** 2 <= 1.0
    r_in = np.sqrt((x / ix) ** 2 + (y / iy) ** 2)
    slice_hu = np.where(r_in <= 1.0, HU_SOFT, np.where(body, HU_FAT, HU_AIR)).astype(np.float32)
    hu = np.broadcast_to(slice_hu, (nz, ny, nx)).copy()

    # Ribs: oblique stripes on a band inside the body wall, lower anteriorly than posteriorly.
    phi = np.arctan2(x / ix, y / iy)                                   # 0 posterior, +-pi anterior
    pitch = rng.uniform(24, 30) * scale
    rib_phase = (zmm + 0.25 * iy * np.cos(phi)) / pitch + rng.uniform(0, 1)
    band = (r_in >= 0.88) & (r_in <= 0.95)
    gap = ((np.abs(x) < 0.15 * ix) & (y < 0)) | ((np.abs(x) < 0.14 * ix) & (y > 0))
    ribs = band & ~gap & ((rib_phase % 1.0) < 9.0 * scale / pitch)
    hu[ribs] = 700.0

    # Spine: vertebral body (cortex, cancellous bone, discs), canal, lamina, spinous process.
    vy, rv = 0.50 * iy, 0.17 * iy
    d_vb = np.sqrt(x ** 2 + (y - vy) ** 2)
    canal_y, canal_r = vy + rv + 0.09 * iy, 0.075 * iy
    d_canal = np.sqrt(x ** 2 + (y - canal_y) ** 2)
    disc = ((zmm + rng.uniform(0, 26)) % 26.0) < 5.0
    vb = np.broadcast_to(d_vb <= rv, hu.shape)
    vb_hu = np.where(disc, 80.0, np.where(d_vb >= rv - 2.0, 900.0, 250.0))      # (z, y, x) by broadcasting
    hu[vb] = vb_hu[vb]
    lamina = (d_canal <= canal_r + 0.05 * iy) | ((np.abs(x) < 0.03 * ix) & (y > canal_y) & (y < 0.93 * iy))
    hu[:, lamina[0]] = 800.0
    hu[:, (d_canal <= canal_r)[0]] = 20.0
    sternum = ((x / (0.08 * ix)) ** 2 + ((y + 0.94 * iy) / (0.035 * iy)) ** 2 <= 1.0) & (t > 0.2)
    hu[np.broadcast_to(sternum, hu.shape)] = 450.0

    # Lungs.
    tb, ta = rng.uniform(0.01, 0.06), rng.uniform(0.92, 0.99)
    h = (t - tb) / (ta - tb)
    profile = np.where(h > 0.5, np.sqrt(np.clip(1 - ((h - 0.5) / 0.5) ** 2, 0, None)),
                       1 - 0.15 * ((0.5 - h) / 0.5) ** 2)
    profile = np.where((h >= 0) & (h <= 1), profile, 0.0).astype(np.float32)
    heart = (((x - 0.10 * ix) / (0.40 * ix)) ** 2 + ((y + 0.20 * iy) / (0.45 * iy)) ** 2
             + ((h - 0.22) / 0.30) ** 2) <= 1.0
    aorta = ((x - 0.16 * ix) ** 2 + (y - (vy - 0.25 * iy)) ** 2) <= (0.12 * iy) ** 2
    spine_zone = (d_vb <= rv + 5.0) | ((np.abs(x) < 0.15 * ix) & (y > vy))
    lung = np.zeros(hu.shape, dtype=bool)
    centres = {}
    for side in (-1.0, 1.0):                                        # -1: patient right (image left)
        a0, b0 = 0.37 * ix * rng.uniform(0.95, 1.05), 0.68 * iy * rng.uniform(0.95, 1.05)
        cx, cy = side * 0.42 * ix, -0.03 * iy
        centres[side] = (cx, cy, a0, b0)
        ell = ((x - cx) / a0) ** 2 + ((y - cy) / b0) ** 2 <= profile ** 2
        dome_top = 0.28 if side < 0 else 0.24
        dome = (((x - cx - side * 0.05 * ix) / (0.80 * a0)) ** 2 + ((y - cy + 0.12 * iy) / (0.70 * b0)) ** 2
                + ((h + 0.05) / (dome_top + 0.05)) ** 2) <= 1.0
        lung |= ell & ~dome & (side * x > 0.05 * ix)
    lung &= (r_in < 0.86) & ~heart & ~aorta & ~spine_zone

    # Parenchyma: denser posteriorly, correlated texture.
    tex = ndimage.gaussian_filter(rng.standard_normal(hu.shape, dtype=np.float32), sigma=0.8)
    tex *= 35.0 / max(float(tex.std()), 1e-6)
    parenchyma = HU_LUNG + 45.0 * np.clip(y / (0.68 * iy), -1, 1) + tex

    # Airways: trachea -> carina -> main bronchi -> lobar bronchi.
    z_car = (tb + 0.62 * (ta - tb)) * z_len
    rt = float(np.clip(0.10 * iy, 4.0, 10.0))
    yt = -0.05 * iy
    carina = to_grid(0.0, yt, z_car)
    airway_tubes = [(to_grid(0.0, yt, z_len + 5.0), carina, rt, rt)]
    hila = {}
    for side, dz, dx in ((-1.0, 0.07, 0.24), (1.0, 0.10, 0.26)):
        hilum = to_grid(side * dx * ix, yt + 0.06 * iy, z_car - dz * (ta - tb) * z_len)
        hila[side] = hilum
        airway_tubes.append((carina, hilum, 0.7 * rt, 0.55 * rt))
        for d in (np.array([side * 0.6, -0.2, 0.8]), np.array([side * 0.6, 0.3, -0.8])):
            end = hilum + d / np.linalg.norm(d) * 0.15 * ix
            airway_tubes.append((hilum, end, 0.4 * rt, 0.25 * rt))
    wall = np.zeros(hu.shape, dtype=np.float32)
    lumen = np.zeros(hu.shape, dtype=np.float32)
    for a, b, ra, rb in airway_tubes:
        _draw_tube(wall, a, b, ra + 1.5, rb + 1.2, (sx, sy, sz), step)
        _draw_tube(lumen, a, b, ra, rb, (sx, sy, sz), step)

    # Vessels from each hilum.
    def inside(p):
        i, j, k = int(round(p[0] / sx)), int(round(p[1] / sy)), int(round(p[2] / sz))
        return 0 <= i < nx and 0 <= j < ny and 0 <= k < nz and bool(lung[k, j, i])

    vfrac = np.zeros(hu.shape, dtype=np.float32)
    r0 = float(np.clip(0.055 * iy, 2.0, 5.0))
    for side, hilum in hila.items():
        root = hilum + np.array([0.0, 0.04 * iy, 0.0])
        # Main branches aim at random points of this lung, a third of the way there.
        zz, yy, xx = np.nonzero(lung[:, :, (slice(0, nx // 2) if side < 0 else slice(nx // 2, nx))])
        if zz.size == 0:
            continue
        pick = rng.choice(zz.size, size=min(12, zz.size), replace=False)
        x_off = 0 if side < 0 else nx // 2
        targets = np.stack([(xx[pick] + x_off) * sx, yy[pick] * sy, zz[pick] * sz], axis=1)
        vecs = targets - root
        dists = np.linalg.norm(vecs, axis=1)
        for a, b, ra, rb in _vessel_tree(rng, root, vecs, r0, 0.4 * dists, inside):
            _draw_tube(vfrac, a, b, ra, rb, (sx, sy, sz), step)

    lung_hu = parenchyma * (1 - vfrac) + HU_VESSEL * vfrac
    hu = np.where(lung, lung_hu, hu)
    hu = hu * (1 - wall) + 20.0 * wall
    hu = hu * (1 - lumen) + HU_AIR * lumen
    return Anatomy(hu=hu.astype(np.float32), lung=lung, vessel=lung & (vfrac >= 0.5), airway=wall >= 0.5)


# =================================================================================================
# Readers
# =================================================================================================

_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=np.uint8)


def mask_contours(mask_yx: np.ndarray) -> list[tuple[bool, np.ndarray]]:
    """LIDC contours of a 2D mask: (inclusion, (n, 2) int points (column, row)) per contour.

    Points are the region's boundary pixels in order (``cv2.findContours``, RETR_CCOMP,
    CHAIN_APPROX_NONE): outer boundaries are inclusion=True, hole boundaries inclusion=False.
    """
    m = np.pad(np.asarray(mask_yx, dtype=np.uint8), 1)
    contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None:
        return []
    return [(bool(h[3] < 0), c[:, 0, :].astype(np.int32) - 1) for c, h in zip(contours, hierarchy[0])]


def fill_contours(shape_yx, contours: list[tuple[bool, np.ndarray]]) -> np.ndarray:
    """Inverse of :func:`mask_contours` (the parser's rule): fill every inclusion polygon (boundary
    included), then clear each hole polygon's interior, keeping the hole's own boundary pixels."""
    out = np.zeros(shape_yx, dtype=np.uint8)
    for inclusion, pts in contours:
        if inclusion:
            cv2.fillPoly(out, [pts.reshape(-1, 1, 2)], 1)
    for inclusion, pts in contours:
        if not inclusion:
            hole = np.zeros(shape_yx, dtype=np.uint8)
            cv2.fillPoly(hole, [pts.reshape(-1, 1, 2)], 1)
            cv2.polylines(hole, [pts.reshape(-1, 1, 2)], True, 0)
            out[hole.astype(bool)] = 0
    return out.astype(bool)


def canonical_reader_mask(mask_zyx: np.ndarray) -> np.ndarray:
    """The mask as it reads back from its contours, slice by slice (a fixed point of write + parse)."""
    out = mask_zyx.copy()
    for z in range(out.shape[0]):
        sl = out[z]
        for _ in range(4):
            rec = fill_contours(sl.shape, mask_contours(sl))
            if np.array_equal(rec, sl):
                break
            sl = rec
        else:
            sl = ndimage.binary_fill_holes(sl)
        out[z] = sl
    return out


def _sector(shape_yx, centre_yx, rng) -> np.ndarray:
    yy, xx = np.mgrid[0:shape_yx[0], 0:shape_yx[1]]
    ang = np.arctan2(yy - centre_yx[0], xx - centre_yx[1])
    a0, w = rng.uniform(-np.pi, np.pi), rng.uniform(np.pi / 4, np.pi)
    return np.abs((ang - a0 + np.pi) % (2 * np.pi) - np.pi) <= w


def simulate_reader_masks(truth_zyx: np.ndarray, n_readers: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per-reader masks (bool, same crop as ``truth_zyx``, which needs >= 1 empty slice / 2 empty pixels
    of padding) that disagree with the truth at the edges; see the module doc for the budget rule."""
    need = math.ceil(0.5 * n_readers - 1e-9)
    add_budget, remove_budget = need - 1, n_readers - need
    added = np.zeros(truth_zyx.shape, dtype=np.uint8)
    removed = np.zeros(truth_zyx.shape, dtype=np.uint8)
    zs = np.flatnonzero(truth_zyx.any(axis=(1, 2)))
    total = int(truth_zyx.sum())
    masks = []
    for _ in range(n_readers):
        m = truth_zyx.copy()
        for z in zs:
            if rng.random() > 0.6:
                continue
            sl = truth_zyx[z].astype(np.uint8)
            cy, cx = (np.mean(v) for v in np.nonzero(sl))
            sector = _sector(sl.shape, (cy, cx), rng)
            if rng.random() < 0.5:
                sel = (cv2.dilate(sl, _CROSS) > 0) & ~truth_zyx[z] & sector & (added[z] < add_budget)
                m[z] |= sel
                added[z] += sel
            else:
                sel = truth_zyx[z] & ~(cv2.erode(sl, _CROSS) > 0) & sector & (removed[z] < remove_budget) & m[z]
                m[z] &= ~sel
                removed[z] += sel
        if len(zs) >= 2 and rng.random() < 0.3:
            end, beyond = (zs[0], zs[0] - 1) if rng.random() < 0.5 else (zs[-1], zs[-1] + 1)
            if rng.random() < 0.5 and 0 <= beyond < truth_zyx.shape[0]:
                extra = cv2.erode(truth_zyx[end].astype(np.uint8), _CROSS) > 0
                sel = extra & (added[beyond] < add_budget)
                m[beyond] |= sel
                added[beyond] += sel
            else:
                sel = truth_zyx[end] & (removed[end] < remove_budget) & m[end]
                m[end] &= ~sel
                removed[end] += sel
        masks.append(m)
    # Unbudgeted edits, each at most 2 % of the nodule's voxels (so only big nodules get them): one
    # reader's end slice dropped or repeated, one reader's boundary arc grown on a middle slice.
    if len(zs) >= 3 and rng.random() < 0.5:
        end, beyond = (zs[0], zs[0] - 1) if rng.random() < 0.5 else (zs[-1], zs[-1] + 1)
        r = int(rng.integers(n_readers))
        if truth_zyx[end].sum() <= 0.02 * total:
            if rng.random() < 0.5:
                masks[r][end] = False
            elif 0 <= beyond < truth_zyx.shape[0]:
                masks[r][beyond] |= truth_zyx[end]
    if len(zs) >= 3 and rng.random() < 0.5:
        z = int(zs[len(zs) // 2])
        sl = truth_zyx[z].astype(np.uint8)
        cy, cx = (np.mean(v) for v in np.nonzero(sl))
        sel = (cv2.dilate(sl, _CROSS) > 0) & ~truth_zyx[z] & _sector(sl.shape, (cy, cx), rng)
        if sel.sum() <= 0.02 * total:
            masks[int(rng.integers(n_readers))][z] |= sel
    out = []
    for m in masks:
        m = canonical_reader_mask(m)
        out.append(m if is_contourable(m) else truth_zyx.copy())
    return out


def is_contourable(mask_zyx: np.ndarray) -> bool:
    """True if some slice has a region of >= 2 pixels. LIDC reads a mark whose rois are all single
    points as a nodule < 3 mm, so a contoured mark must have at least one longer contour."""
    for z in np.flatnonzero(mask_zyx.any(axis=(1, 2))):
        if any(inc and len(pts) > 1 for inc, pts in mask_contours(mask_zyx[z])):
            return True
    return False


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else 1.0


def _ratings(rng, spec: NoduleSpec, n_readers: int) -> list[dict[str, int]]:
    """LIDC characteristics per reader, scattered around values the nodule suggests."""
    d = spec.diameter_mm
    latent = 1 + 4 * min(max((d - 3) / 20, 0), 1) + (0.7 if spec.type == "part_solid" else 0) \
        - (0.5 if spec.type == "ground_glass" else 0) + rng.normal(0, 0.5)
    texture = {"ground_glass": 1, "part_solid": 3}.get(spec.type, 5)
    subtle = 2 if spec.type == "ground_glass" else (3 if d < 6 else 4)
    elong = max(spec.axes) / min(spec.axes)
    spher = 5 if elong < 1.1 else (4 if elong < 1.25 else 3)
    lob = 1 + int(sum(spec.perturb_amp) > 0.12) + int(sum(spec.perturb_amp) > 0.15)
    out = []
    for _ in range(n_readers):
        j = lambda v, lo=1, hi=5: int(np.clip(round(v + rng.choice([-1, 0, 0, 0, 1])), lo, hi))  # noqa: E731
        out.append({"subtlety": j(subtle + 1), "internalStructure": 4 if spec.cavity_fraction > 0 else 1,
                    "calcification": 6,
                    "sphericity": j(spher), "margin": j(3 if spec.type == "ground_glass" else 4),
                    "lobulation": j(lob), "spiculation": j(1), "texture": j(texture), "malignancy": j(latent)})
    return out


# =================================================================================================
# A case in memory
# =================================================================================================

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


def _reader_ids(rng, n) -> list[str]:
    ids: list[str] = []
    while len(ids) < n:
        v = str(int(rng.integers(-2**31, 2**31)))
        if v not in ids:
            ids.append(v)
    return ids


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
    readers = _reader_ids(rng, n_case_readers)

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
        ratings = _ratings(rng, p.spec, n_r)
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


# =================================================================================================
# Writing: DICOM, LIDC XML, ground truth
# =================================================================================================

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
