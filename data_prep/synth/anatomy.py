"""Procedural chest anatomy of a synthetic case, before nodules and scanner noise.

:func:`build_anatomy` fills an axial :class:`~data_prep.coords.Geometry` (identity direction, LPS mm:
column -> patient left, row -> posterior, so the right lung is on the image's left) with tissue in HU
and returns an :class:`Anatomy`: (z, y, x) float32 HU and bool masks of the lungs, their vessels and the
airways. Tubes (airways, vessels) are drawn in grid mm (x, y, z) from the centre of voxel (0, 0, 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from data_prep.coords import Geometry
from data_prep.synth.nodules import HU_AIR, edge_step_mm

HU_FAT, HU_SOFT, HU_LUNG, HU_VESSEL = -100.0, 40.0, -860.0, 40.0


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
