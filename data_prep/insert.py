"""Simulated nodules inserted into real CT volumes (the nodule model of :mod:`data_prep.synth.nodules`).

Volumes are (z, y, x) int16 HU with a :class:`data_prep.coords.Geometry` (LPS mm). Nodules go into
lung parenchyma only: given a lung mask, or one found here (:func:`find_lung_mask`). Each nodule keeps
``margin_mm`` of lung around it and from the others (juxta-pleural nodules touch the chest wall,
juxta-vascular ones a vessel, by design). Only the voxels of the returned instance mask change; the
input array is never modified.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from scipy import ndimage

from data_prep.errors import DataPrepError, InputNotFoundError
from data_prep.masks import bounding_box, equivalent_diameter_mm
from data_prep.nifti_io import read_nifti, write_nifti
from data_prep.synth.nodules import (GROUND_GLASS_HU, NODULE_TYPES, NodulePlacer, NoduleSpec, blend_nodule,
                                     blend_nodule_psf, edge_step_mm, shaped_nodule_spec)
from data_prep.coords import Geometry

log = logging.getLogger(__name__)

LUNG_THRESHOLD_HU = -400.0       # lung (and outside air) below this
VESSEL_THRESHOLD_HU = -300.0     # inside the lungs, vessels (and nodules) above this
MIN_LUNG_FRACTION = 0.1          # a second component smaller than this x the first is not a lung
DEFAULT_DIAMETER_MM = (5.0, 20.0)
HU_LIMITS = (-1024, 32767)


def find_lung_mask(hu_zyx: np.ndarray) -> np.ndarray:
    """Lungs of a chest CT (z, y, x) HU -> bool (z, y, x).

    Voxels below -400 HU, minus the air connected to the in-plane border of the volume (outside the
    body; the z faces are allowed because scans often cut through the lungs), keeping the two largest
    components (the second only if it is at least a tenth of the first: lungs joined through the
    airways are one), with holes (vessels, nodules) filled slice by slice. Empty if nothing qualifies.
    """
    air = hu_zyx < LUNG_THRESHOLD_HU
    labels, n = ndimage.label(air)
    if n == 0:
        return np.zeros(hu_zyx.shape, dtype=bool)
    border = np.unique(np.concatenate([labels[:, 0, :].ravel(), labels[:, -1, :].ravel(),
                                       labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    sizes = np.bincount(labels.ravel())
    sizes[border] = 0
    sizes[0] = 0
    order = np.argsort(sizes)[::-1][:2]
    keep = [int(lab) for lab in order if sizes[lab] > 0 and sizes[lab] >= MIN_LUNG_FRACTION * sizes[order[0]]]
    mask = np.zeros(hu_zyx.shape, dtype=bool)
    for lab in keep:
        mask |= labels == lab
    del labels
    if not mask.any():
        return mask
    zs, ys, xs = bounding_box(mask)
    for k in range(zs.start, zs.stop):
        mask[k, ys, xs] = ndimage.binary_fill_holes(mask[k, ys, xs])
    return mask


def _requests(specs, rng, types, diameter_range_mm, shapes=("smooth",),
              ground_glass_hu=GROUND_GLASS_HU) -> list[tuple[NoduleSpec, np.ndarray | None, str]]:
    """Normalise the ``specs`` argument of :func:`insert_nodules` to (NoduleSpec, fixed centre or None, shape)."""
    def random_diameter():
        lo, hi = diameter_range_mm
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    if isinstance(specs, (int, np.integer)):
        if specs < 0:
            raise ValueError("the number of nodules must be >= 0")
        out = []
        for _ in range(int(specs)):
            kind, shape = str(rng.choice(list(types))), str(rng.choice(list(shapes)))
            out.append((shaped_nodule_spec(rng, kind, random_diameter(), shape, ground_glass_hu), None, shape))
        return out
    out = []
    for s in specs:
        if isinstance(s, NoduleSpec):
            out.append((s, None, "smooth"))
            continue
        if not isinstance(s, dict):
            raise ValueError(f"a nodule request must be a dict or NoduleSpec, not {type(s).__name__}")
        unknown = set(s) - {"type", "diameter_mm", "centre_lps", "shape"}
        if unknown:
            raise ValueError(f"unknown nodule request keys {sorted(unknown)} (use type, diameter_mm, centre_lps, shape)")
        shape = s.get("shape", "smooth")
        spec = shaped_nodule_spec(rng, s.get("type", "solid"), float(s.get("diameter_mm") or random_diameter()), shape,
                                  ground_glass_hu)
        centre = np.asarray(s["centre_lps"], dtype=float) if s.get("centre_lps") is not None else None
        out.append((spec, centre, shape))
    return out


def insert_nodules(hu_zyx: np.ndarray, geometry: Geometry, specs, rng: np.random.Generator,
                   lung_mask_zyx: np.ndarray | None = None, *, types=NODULE_TYPES,
                   diameter_range_mm=DEFAULT_DIAMETER_MM, margin_mm: float = 3.0, style: str = "sharp",
                   shapes=("smooth",), forbidden_zyx: np.ndarray | None = None, ground_glass_hu=GROUND_GLASS_HU,
                   diaphragm_share: float = 0.0):
    """Blend simulated nodules into the lungs of a CT.

    hu_zyx: (z, y, x) HU (int16 or any numeric dtype; not modified); geometry: its grid (LPS mm).
    specs: a count (random types from ``types``, diameters log-uniform in ``diameter_range_mm``), or a
    list of NoduleSpec / dicts ``{"type", "diameter_mm", "centre_lps"}`` (all optional; a given centre
    must fit, else ValueError). A random site that cannot be found even after shrinking the nodule to
    60 % of its size is skipped with a warning. ``style``: ``"sharp"`` (the synthetic cohort's
    partial-volume edge, :func:`data_prep.synth.nodules.blend_nodule`) or ``"psf"`` (imaged as the
    scanner would: :func:`data_prep.synth.nodules.blend_nodule_psf`); random nodules get a margin shape
    from ``shapes`` (see :data:`data_prep.synth.nodules.SHAPES`).
    ``forbidden_zyx``: bool voxels no nodule may come near (e.g. the scan's own nodules).
    ``ground_glass_hu``: (low, high) HU of the ground-glass nodules (and low bound of part-solid halos).
    ``diaphragm_share``: the chance that a random juxta-pleural site is on the diaphragm's dome (soft tissue
    directly below, lower half of the lungs) instead of anywhere on the wall.

    Returns (new_hu_zyx int16, instance_mask_zyx uint16 with value = record id, records), one record per
    inserted nodule: id, type, diameter_mm (design, equivalent sphere), mask_diameter_mm, centre_lps
    (mask centroid, LPS mm), centre_voxel (i, j, k), design_centre_lps, volume_mm3, n_voxels, mean_hu,
    design_hu, halo_hu, shape. Raises ValueError when the volume has no lungs or ``style`` is unknown.
    """
    if style not in ("sharp", "psf"):
        raise ValueError(f"unknown insertion style {style!r} (use 'sharp' or 'psf')")
    if tuple(hu_zyx.shape) != geometry.shape_zyx:
        raise ValueError(f"volume shape {hu_zyx.shape} does not match geometry (z, y, x) {geometry.shape_zyx}")
    lung = find_lung_mask(hu_zyx) if lung_mask_zyx is None else np.asarray(lung_mask_zyx, dtype=bool)
    if lung.shape != hu_zyx.shape:
        raise ValueError(f"lung mask shape {lung.shape} does not match the volume {hu_zyx.shape}")
    if not lung.any():
        raise ValueError("no lung region found (no air below -400 HU enclosed by the body)")
    vessel = lung & (hu_zyx > VESSEL_THRESHOLD_HU)
    placer = NodulePlacer(hu_zyx, lung, geometry, vessel, forbidden_zyx, margin_mm=margin_mm,
                          diaphragm_share=diaphragm_share)
    step = edge_step_mm(geometry)
    new = hu_zyx.copy() if hu_zyx.dtype == np.int16 else np.clip(np.rint(hu_zyx), *HU_LIMITS).astype(np.int16)
    instance = np.zeros(hu_zyx.shape, dtype=np.uint16)
    records: list[dict] = []
    requests = _requests(specs, rng, types, diameter_range_mm, shapes, ground_glass_hu)
    for n, (spec, centre, shape) in enumerate(requests, start=1):
        if centre is not None:
            p = placer.evaluate(spec, centre)
            if p is None:
                raise ValueError(f"nodule {n} ({spec.type}, {spec.diameter_mm:.1f} mm) does not fit at "
                                 f"{[round(float(v), 1) for v in centre]} (LPS mm)")
        else:
            p = placer.place_shrinking(spec, rng, max(3.0, 0.6 * spec.diameter_mm))
            if p is None:
                log.warning("no room for a %.1f mm %s nodule: skipped", spec.diameter_mm, spec.type)
                continue
        placer.commit(p)
        nid = len(records) + 1
        sl = p.slices
        if style == "psf":
            spicules = int(rng.integers(6, 13)) if shape == "spiculated" else 0
            blended, m = blend_nodule_psf(new[sl], p, rng, geometry, lung[sl], spicules)
            values = np.clip(np.rint(blended), *HU_LIMITS).astype(np.int16)
            new[sl] = values                      # the point spread reaches just outside the mask
            m &= instance[sl] == 0
            if not m.any():
                continue
        else:
            m = p.mask
            values = np.clip(np.rint(blend_nodule(hu_zyx[sl], p, rng, step)), *HU_LIMITS).astype(np.int16)
            new[sl][m] = values[m]
        instance[sl][m] = nid
        kk, jj, ii = np.nonzero(m)
        centre_vox = np.array([ii.mean() + p.box[0][2], jj.mean() + p.box[0][1], kk.mean() + p.box[0][0]])
        volume = float(m.sum() * geometry.voxel_volume_mm3)
        records.append({
            "id": nid, "type": p.spec.type, "diameter_mm": round(p.spec.diameter_mm, 4),
            "mask_diameter_mm": round(equivalent_diameter_mm(volume), 4),
            "centre_lps": [float(v) for v in geometry.voxel_to_world(centre_vox)],
            "centre_voxel": [float(v) for v in centre_vox],
            "design_centre_lps": [float(v) for v in p.centre_lps],
            "volume_mm3": volume, "n_voxels": int(m.sum()), "mean_hu": float(values[m].mean()),
            "design_hu": p.spec.hu, "halo_hu": p.spec.halo_hu, "shape": shape,
        })
    return new, instance, records


def insert_into_nifti(image_path, out_image_path, out_label_path, n_nodules: int = 3, seed: int = 0) -> list[dict]:
    """Read a CT NIfTI, insert ``n_nodules`` random nodules, write the new image (int16) and the
    instance label (uint16, value = record id) on the same grid. Returns the records
    (see :func:`insert_nodules`). Raises InputNotFoundError / DataPrepError naming the image."""
    image_path = Path(image_path)
    if not image_path.is_file():
        raise InputNotFoundError(image_path, "no such file")
    try:
        hu, geometry = read_nifti(image_path)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad input file
        raise DataPrepError(image_path, f"cannot read as a 3D NIfTI image ({exc})") from None
    if not np.issubdtype(hu.dtype, np.integer):
        hu = np.rint(hu)
    hu = np.clip(hu, *HU_LIMITS).astype(np.int16)
    try:
        new, instance, records = insert_nodules(hu, geometry, int(n_nodules), np.random.default_rng(seed))
    except ValueError as exc:
        raise DataPrepError(image_path, str(exc)) from None
    write_nifti(out_image_path, new, geometry)
    write_nifti(out_label_path, instance, geometry)
    return records
