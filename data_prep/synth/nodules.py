"""The simulated nodule model, shared by the synthetic cohort (:mod:`data_prep.synth.cohort`) and
:mod:`data_prep.insert` (nodules in real CT).

A :class:`NoduleSpec` is a nodule's shape (mm, in its own frame) and intensities (HU). A
:class:`NodulePlacer` finds it room in the lungs of a (z, y, x) HU volume on a
:class:`~data_prep.coords.Geometry` (centres in LPS mm) and returns a :class:`Placement`: a voxel crop
box ((z0, y0, x0), (z1, y1, x1)), the radial fields on it (mm) and the blend weight whose support is the
nodule's true mask. Two ways to draw it: :func:`blend_nodule` (the synthetic cohort's partial-volume
edge) and :func:`blend_nodule_psf` (as the scanner would image it: sharp object, texture, spicules,
blurred by the point spread; margin shapes from :func:`shaped_nodule_spec`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from data_prep.coords import Geometry
from data_prep.masks import SparseMask

NODULE_TYPES = ("solid", "part_solid", "ground_glass", "juxta_pleural", "juxta_vascular")
SOLID_HU = (0.0, 50.0)
GROUND_GLASS_HU = (-600.0, -400.0)
HU_AIR = -1000.0           # a cavity's content
AIR_CHECK_HU = -960.0      # a nodule site with many voxels below this is an airway, not parenchyma


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


def ground_glass_range(hu) -> tuple[float, float]:
    """A ground-glass density range (low, high) HU checked: low <= high within -1000 to -100 HU, low below -450
    (a part-solid halo is drawn from low to -450) -> (low, high) floats; ValueError otherwise."""
    low, high = (float(v) for v in hu)
    if not -1000.0 < low <= high < -100.0 or low >= -450.0:
        raise ValueError(f"ground_glass_hu {tuple(hu)}: give low <= high within -1000 to -100 HU, low below -450")
    return low, high


def random_nodule_spec(rng: np.random.Generator, nodule_type: str, diameter_mm: float,
                       cavity_fraction: float = 0.0,
                       ground_glass_hu: tuple[float, float] = GROUND_GLASS_HU) -> NoduleSpec:
    """A random nodule of a type (one of NODULE_TYPES) and equivalent-sphere diameter (mm) of its
    outer surface; ``cavity_fraction`` (0-0.6) gives it an air cavity of that relative size.
    ``ground_glass_hu``: (low, high) HU a ground-glass nodule's density is drawn from (uniform); a
    part-solid nodule's halo is drawn from (low, -450). The draw is one number either way, so two ranges
    give the same nodules at other densities."""
    if not 0.0 <= cavity_fraction <= 0.6:
        raise ValueError("cavity_fraction must be within 0-0.6")
    low, high = ground_glass_range(ground_glass_hu)
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
        hu, texture = rng.uniform(low, high), 25.0
    elif nodule_type == "part_solid":
        hu, texture = rng.uniform(*SOLID_HU), 20.0
        halo, core = float(rng.uniform(low, -450.0)), float(rng.uniform(0.35, 0.6))
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
    touch the wall or a vessel) and of distance to each other. ``diaphragm_share``: the chance that a
    juxta-pleural nodule sits on the lungs' floor, mostly the diaphragm (:meth:`_floor_voxels`), rather than
    anywhere on the wall.
    """

    def __init__(self, hu_zyx: np.ndarray, lung_mask_zyx: np.ndarray, geometry: Geometry,
                 vessel_mask_zyx: np.ndarray | None = None, forbidden_zyx: np.ndarray | None = None,
                 margin_mm: float = 3.0, diaphragm_share: float = 0.0):
        if not 0.0 <= float(diaphragm_share) <= 1.0:
            raise ValueError(f"diaphragm_share must be within 0 and 1, not {diaphragm_share}")
        self.hu = hu_zyx
        self.lung = lung_mask_zyx.astype(bool, copy=False)
        self.geometry = geometry
        self.vessel = vessel_mask_zyx
        self.occupied = (np.zeros(self.lung.shape, dtype=bool) if forbidden_zyx is None
                         else forbidden_zyx.astype(bool).copy())
        self.margin_mm = float(margin_mm)
        self.step_mm = edge_step_mm(geometry)
        self.diaphragm_share = float(diaphragm_share)
        self._lung_idx = self._wall_idx = self._vessel_idx = self._floor_idx = None

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

    def _floor_voxels(self):
        """Lung voxels on the lungs' floor: soft tissue (> -500 HU, outside the lungs) directly below them (towards
        the feet, along the image's slice axis), in the lower half of the lungs' extent: the diaphragm's dome,
        and the heart where the lung lies on it."""
        if self._floor_idx is None:
            down = -1 if self.geometry.direction_matrix[2, 2] >= 0 else 1   # slice step towards the feet (LPS z: head)
            here, below = (slice(1, None), slice(None, -1)) if down == -1 else (slice(None, -1), slice(1, None))
            floor = np.zeros_like(self.lung)                                 # nothing below the last slice
            floor[here] = self.lung[here] & ~self.lung[below] & (self.hu[below] > -500)
            zs = np.flatnonzero(self.lung.any(axis=(1, 2)))
            if zs.size:
                mid = (zs[0] + zs[-1]) // 2
                if down == -1:
                    floor[mid + 1:] = False
                else:
                    floor[:mid] = False
            self._floor_idx = np.flatnonzero(floor)
        return self._floor_idx

    def _vessel_voxels(self):
        if self._vessel_idx is None:
            self._vessel_idx = np.flatnonzero(self.vessel & self.lung) if self.vessel is not None else np.zeros(0, int)
        return self._vessel_idx

    def _world_of(self, flat_index: int, rng) -> np.ndarray:
        z, y, x = np.unravel_index(flat_index, self.lung.shape)
        return self.geometry.voxel_to_world(np.array([x, y, z], dtype=float) + rng.uniform(-0.4, 0.4, 3))

    def _candidate(self, spec: NoduleSpec, rng) -> np.ndarray | None:
        if spec.type == "juxta_pleural":
            on_floor = self.diaphragm_share > 0 and rng.uniform() < self.diaphragm_share and self._floor_voxels().size
            idx = self._floor_voxels() if on_floor else self._wall_voxels()
            if idx.size == 0:
                return None
            b = self._world_of(int(idx[rng.integers(idx.size)]), rng)
            # on the diaphragm the nodule rises from it towards the head (LPS +z), elsewhere into the lung
            normal = np.array([0.0, 0.0, 1.0]) if on_floor else self._inward_normal(b, max(2.0 * spec.radius_mm, 6.0))
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
# Margin shapes and the scanner's point spread (data_prep.insert's "psf" style)
# =================================================================================================

# Scanner point-spread: in-plane Gaussian sigma (mm) of a standard soft-tissue / lung kernel, and the slice
# sensitivity profile's sigma as a fraction of the slice spacing (a box of one slice thickness ~ FWHM).
PSF_SIGMA_INPLANE_MM = 0.55
PSF_SIGMA_SLICE_FRACTION = 0.42
SHARP_EDGE_MM = 0.4              # width of the object's own edge before the scanner blurs it
SHAPES = ("smooth", "lobulated", "spiculated")


def shaped_nodule_spec(rng: np.random.Generator, nodule_type: str, diameter_mm: float, shape: str = "smooth",
                       ground_glass_hu: tuple[float, float] = GROUND_GLASS_HU) -> NoduleSpec:
    """A random nodule (see :func:`random_nodule_spec`, which takes ``ground_glass_hu``) with a margin shape:
    ``smooth`` (near ellipsoid), ``lobulated`` (large low-order bumps) or ``spiculated`` (the body is smooth;
    spicules are drawn at blend time by :func:`blend_nodule_psf`)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown nodule shape {shape!r}; choose from {SHAPES}")
    spec = random_nodule_spec(rng, nodule_type, diameter_mm, ground_glass_hu=ground_glass_hu)
    if shape == "lobulated":
        spec = replace(spec, perturb_amp=tuple(float(a) for a in rng.uniform(0.05, 0.1, 3)),
                       perturb_freq=tuple(float(f) for f in rng.uniform(0.7, 1.3, 3))).resized(diameter_mm)
    return spec


def _offsets_mm(placement, geometry: Geometry) -> np.ndarray:
    """(z, y, x, 3) LPS mm offsets of the placement crop's voxels from the nodule centre."""
    lo, hi = placement.box
    kk, jj, ii = np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), np.arange(lo[2], hi[2]), indexing="ij")
    world = geometry.voxel_to_world(np.stack([ii, jj, kk], axis=-1).astype(np.float32))
    return (world - placement.centre_lps).astype(np.float32)


def _spicule_fraction(offsets: np.ndarray, placement, rng: np.random.Generator, n: int) -> np.ndarray:
    """Thin tapering spicules from inside the surface outwards: (z, y, x) fraction 0-1."""
    frac = np.zeros(offsets.shape[:-1], dtype=np.float32)
    r0 = placement.spec.radius_mm
    reach = float(np.linalg.norm(offsets, axis=-1).max())
    for _ in range(n):
        d = rng.standard_normal(3).astype(np.float32)
        d /= np.linalg.norm(d)
        length = min(reach, r0 * rng.uniform(1.3, 2.2) + 1.0)
        width = float(rng.uniform(0.35, 0.8))                     # radius (mm) at the surface
        t = offsets @ d
        perp = np.linalg.norm(offsets - t[..., None] * d, axis=-1)
        along = np.clip((t - 0.7 * r0) / max(length - 0.7 * r0, 1e-3), 0.0, 1.0)
        radius = width * (1.0 - along)
        inside = (t > 0.5 * r0) & (t < length) & (perp < radius + SHARP_EDGE_MM)
        frac = np.maximum(frac, np.where(inside, np.clip(0.5 + (radius - perp) / SHARP_EDGE_MM, 0, 1), 0).astype(np.float32))
    return frac


def blend_nodule_psf(background_hu: np.ndarray, placement, rng: np.random.Generator, geometry: Geometry,
                     lung_crop: np.ndarray, spicules: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A nodule added to real CT as the scanner would have imaged it.

    The object (sharp edge, correlated internal texture, part-solid core / ground-glass halo, optional
    spicules) is the HU it adds over the local background (``max(0, nodule - smoothed background)``: a
    vessel brighter than ground glass stays), blurred by the scanner's point spread (in-plane
    ``PSF_SIGMA_INPLANE_MM``, along z ``PSF_SIGMA_SLICE_FRACTION`` of the slice spacing) and added to the
    background, so the scan's own noise and partial volume stay as they were.

    background_hu: (z, y, x) HU of the placement crop; lung_crop: bool lungs there (the object is cut to
    them, so a juxta-pleural nodule merges with the wall). Returns (new HU float32, nodule mask bool),
    the mask being the object's half-value surface (spicules and cavity excluded).
    """
    spec = placement.spec
    sx, sy, sz = (float(v) for v in geometry.spacing)
    frac = np.clip(0.5 + (placement.surface - placement.rn) / SHARP_EDGE_MM, 0.0, 1.0).astype(np.float32)
    if spec.cavity_fraction > 0:
        frac[placement.rn <= placement.surface * spec.cavity_fraction] = 0.0
    frac[~lung_crop] = 0.0
    mask = frac >= 0.5
    inten = np.full(background_hu.shape, spec.hu, dtype=np.float32)
    if spec.type == "part_solid" and spec.halo_hu is not None:
        core = np.clip(0.5 + (placement.surface * spec.core_fraction - placement.rn) / SHARP_EDGE_MM, 0.0, 1.0)
        inten = (spec.halo_hu + (spec.hu - spec.halo_hu) * core).astype(np.float32)
    texture = ndimage.gaussian_filter(rng.standard_normal(background_hu.shape).astype(np.float32),
                                      sigma=(1.0 / sz, 1.0 / sy, 1.0 / sx))
    texture *= 2.0 * spec.texture_sd_hu / max(float(texture.std()), 1e-6)
    inten += texture
    if spicules > 0:
        spic = _spicule_fraction(_offsets_mm(placement, geometry), placement, rng, spicules)
        spic[~lung_crop] = 0.0
        spic_hu = np.float32(min(spec.hu, -50.0) if spec.type != "ground_glass" else spec.hu)
        inten = np.where(spic > frac, spic_hu + texture, inten)
        frac = np.maximum(frac, spic * 0.8)
    bg = background_hu.astype(np.float32)
    bg_smooth = ndimage.gaussian_filter(bg, sigma=(0.7 / sz, 1.0 / sy, 1.0 / sx))
    added = frac * np.maximum(inten - bg_smooth, 0.0)
    psf = (PSF_SIGMA_SLICE_FRACTION, PSF_SIGMA_INPLANE_MM / sy, PSF_SIGMA_INPLANE_MM / sx)
    added = ndimage.gaussian_filter(added, sigma=psf, mode="constant")
    return bg + added, mask
