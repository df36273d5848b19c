"""Nodule attenuation from the CT: solid, part-solid or ground-glass, and the size of the solid component.

Fleischner Society (2017) and Lung-RADS v2022 manage a nodule by its attenuation as much as by its size: a
solid nodule by its mean axial diameter, a part-solid one also by the mean diameter of its **solid
component**, a ground-glass (non-solid) one by its whole extent. :func:`nodule_attenuation` measures it from
HU on the candidate's own outline (after ``RefineOutlinesd``, out to the partial-volume edge):

- a voxel is **solid** where the CT, smoothed in-plane by a Gaussian of ``smooth_mm`` (0.5 mm: the noise of
  single pixels), is at least ``solid_hu`` (-300 HU, the threshold semi-automatic tools and the
  consolidation-to-tumour-ratio literature draw the solid part with on a lung window); for an outline whose
  long axis is under ``small_long_axis_mm`` (8 mm) at least ``small_solid_hu`` (-400 HU): the partial volume
  of 1-2.5 mm slices and of the smoothing dims a small solid nodule's voxels;
- the **solid fraction** is solid voxels / the candidate's voxels: below ``ground_glass_below`` (0.05)
  ``"ground-glass"``, from ``solid_from`` (0.25) ``"solid"``, between them ``"part-solid"``;
- the solid component is the largest 26-connected piece of solid voxels, measured as
  :func:`lungnod_ext.inference.measurements.axial_axes` measures a nodule (long / short axis on its own
  axial slice, their mean).

The two fractions and the small outlines' threshold were chosen on the shipped segmenter's outlines of nodules
inserted into the training series (LIDC-IDRI-0002 / -0006, 260 nodules of known type) and measured on the unseen
LIDC-IDRI-0001 (``tests/benchmarks/bench_attenuation.py``; figures in HISTORY.md). Weak where physics is: the 1-2
mm core of a small part-solid nodule is too faint to count, a faint small nodule readers call solid may read
part-solid or ground-glass, a ground-glass nodule crossed by vessels may read part-solid. A measurement for the reader to check, not a
diagnosis (research software, not a medical device).

Conventions (see :mod:`data_prep.coords`): arrays ``(z, y, x)``, HU, mm; candidates as
:mod:`lungnod_ext.inference.candidates` gives them (``id``, ``bbox_voxel`` (i0, j0, k0, i1, j1, k1)).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage as ndi

from lungnod_ext.data.meta import channel_view_zyx, geometry_from_meta_tensor
from lungnod_ext.inference.measurements import axial_axes

SOLID_HU = -300.0
SMALL_SOLID_HU = -400.0
SMALL_LONG_AXIS_MM = 8.0
GROUND_GLASS_BELOW = 0.05
SOLID_FROM = 0.25
ATTENUATIONS = ("solid", "part-solid", "ground-glass")
ATTENUATION_KEYS = ("attenuation", "solid_fraction", "solid_long_axis_mm", "solid_short_axis_mm",
                    "solid_mean_axial_diameter_mm")
"""Keys :func:`add_attenuation` adds to each candidate (the solid axes None where no voxel is solid)."""


def reader_attenuation(texture_median: float | None) -> str | None:
    """The class of LIDC readers' median ``texture`` rating (1 non-solid / ground glass, 2 non-solid / mixed,
    3 part solid / mixed, 4 solid / mixed, 5 solid): below 2.5 ground-glass, below 3.5 part-solid, else solid;
    None without a rating."""
    if texture_median is None or not np.isfinite(float(texture_median)):
        return None
    t = float(texture_median)
    return "ground-glass" if t < 2.5 else "part-solid" if t < 3.5 else "solid"


def attenuation_class(solid_fraction: float, ground_glass_below: float = GROUND_GLASS_BELOW,
                      solid_from: float = SOLID_FROM) -> str:
    """One of :data:`ATTENUATIONS` for a solid fraction (0-1; module doc)."""
    if solid_fraction < ground_glass_below:
        return "ground-glass"
    return "solid" if solid_fraction >= solid_from else "part-solid"


def nodule_attenuation(hu_zyx: np.ndarray, region_zyx: np.ndarray, spacing_zyx_mm: Sequence[float],
                       solid_hu: float = SOLID_HU, smooth_mm: float = 0.5,
                       ground_glass_below: float = GROUND_GLASS_BELOW, solid_from: float = SOLID_FROM,
                       small_solid_hu: float = SMALL_SOLID_HU,
                       small_long_axis_mm: float = SMALL_LONG_AXIS_MM) -> dict | None:
    """Attenuation of one region (module doc): ``hu_zyx`` (z, y, x) HU and ``region_zyx`` bool of the same
    shape (a crop around the region with a few voxels of margin is enough: the smoothing reads them) ->
    ``{"attenuation", "solid_fraction", "solid_long_axis_mm", "solid_short_axis_mm",
    "solid_mean_axial_diameter_mm"}``; None for an empty region."""
    region = np.asarray(region_zyx, dtype=bool)
    n = int(region.sum())
    if n == 0:
        return None
    sp = np.asarray(spacing_zyx_mm, dtype=float)
    smooth = ndi.gaussian_filter(np.asarray(hu_zyx, dtype=np.float32),
                                 sigma=[0.0, smooth_mm / sp[1], smooth_mm / sp[2]])
    small = axial_axes(region, sp)["long_axis_mm"] < small_long_axis_mm
    solid = region & (smooth >= (small_solid_hu if small else solid_hu))
    fraction = float(solid.sum()) / n
    out = {"attenuation": attenuation_class(fraction, ground_glass_below, solid_from),
           "solid_fraction": round(fraction, 3), "solid_long_axis_mm": None, "solid_short_axis_mm": None,
           "solid_mean_axial_diameter_mm": None}
    if solid.any():
        labels, count = ndi.label(solid, structure=np.ones((3, 3, 3), bool))
        largest = labels == (1 + int(np.argmax(np.bincount(labels.ravel())[1:]))) if count > 1 else solid
        axes = axial_axes(largest, sp)
        out.update(solid_long_axis_mm=round(axes["long_axis_mm"], 2), solid_short_axis_mm=round(axes["short_axis_mm"], 2),
                   solid_mean_axial_diameter_mm=round((axes["long_axis_mm"] + axes["short_axis_mm"]) / 2, 1))
    return out


def add_attenuation(candidates: Sequence[Mapping], labels_zyx: np.ndarray, hu_zyx: np.ndarray,
                    spacing_zyx_mm: Sequence[float], margin_voxels: int = 3, **options) -> list[dict]:
    """Every candidate (its voxels: ``labels_zyx == id`` inside its ``bbox_voxel``) with :data:`ATTENUATION_KEYS`
    from the (z, y, x) HU volume ``hu_zyx`` on the label map's grid; ``options`` go to :func:`nodule_attenuation`."""
    shape = np.asarray(labels_zyx).shape
    out = []
    for cand in candidates:
        cand = dict(cand)
        i0, j0, k0, i1, j1, k1 = (int(v) for v in cand["bbox_voxel"])
        box = tuple(slice(max(lo - margin_voxels, 0), min(hi + margin_voxels, size))
                    for lo, hi, size in zip((k0, j0, i0), (k1, j1, i1), shape))
        found = nodule_attenuation(hu_zyx[box], np.asarray(labels_zyx[box]) == int(cand["id"]), spacing_zyx_mm,
                                   **options)
        if found is not None:
            cand.update(found)
        out.append(cand)
    return out


class MeasureAttenuationd(MapTransform):
    """Post-processing for the segmentation bundle, after the outlines are final (``RefineOutlinesd``):
    :func:`add_attenuation` on ``data[candidates_key]`` with the label map ``data[key]`` (``(1, X, Y, Z)`` ids) and
    the HU image ``data[image_key]`` (``(1, X, Y, Z)`` MetaTensor on the same grid). ``enabled`` False passes
    data through (a config switch); other keyword arguments (``solid_hu``, ``smooth_mm``,
    ``ground_glass_below``, ``solid_from``, ``small_solid_hu``, ``small_long_axis_mm``) go to
    :func:`nodule_attenuation`."""

    def __init__(self, keys: KeysCollection = "candidate_labels", image_key: str = "ct_hu",
                 candidates_key: str = "candidates", enabled: bool = True, allow_missing_keys: bool = False,
                 **options) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key, self.candidates_key, self.enabled, self.options = image_key, candidates_key, enabled, options

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        if not self.enabled or not d.get(self.candidates_key):
            return d
        image = d[self.image_key]
        spacing = np.asarray(geometry_from_meta_tensor(image).spacing, dtype=float)[::-1]
        hu = channel_view_zyx(image)
        for key in self.key_iterator(d):
            d[self.candidates_key] = add_attenuation(list(d[self.candidates_key]), channel_view_zyx(d[key]), hu,
                                                     spacing, **self.options)
        return d
