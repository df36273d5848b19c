"""Post-processing: a nodule probability map -> a list of nodule candidates (+ their label map).

Conventions (see :mod:`data_prep.coords`): arrays are ``(z, y, x)`` = (slice k, row j, column i);
voxel indices are ``(i, j, k)``; world positions are LPS millimetres.

A candidate is one 3D connected component (26-connectivity) of ``prob >= threshold`` that is at least
``min_volume_mm3`` large and, when a lung mask is given, comes within ``lung_dilate_mm`` of it
(distances in mm, so anisotropic voxels are handled); with ``min_lung_core_fraction`` > 0, a component
must also have that share of its voxels inside the lung core, the air lung mask closed slice by slice by a
``lung_core_closing_mm`` disc (given, or worked out from the HU image:
:func:`lungnod_ext.transforms.lung_mask.lung_core_mask`), unless it is a mass against the wall: at least
``mass_min_diameter_mm`` (equivalent sphere) with at least ``mass_min_air_contact`` of the 2 mm in-plane shell
around it below -500 HU (a lung cancer of 3-5 cm on the chest wall is a bite too large for the core's
closing, but lung air borders it; soft tissue of the mediastinum or chest wall borders soft tissue).
With ``max_enhanced_share`` set (and an HU image), a component is dropped when at least that share of its
voxels is contrast-filled vessel or heart: at least ``enhanced_hu`` and connected, at that density, to
tissue more than ``ENHANCED_MARGIN_MM`` beyond its box (:func:`enhanced_share`). A nodule's own tissue
stays below it (soft tissue 0-100 HU, enhancing by < 60 HU); a calcified nodule is as dense but ends
within its box; the edge of a contrast-filled aorta is neither.
Candidates are numbered 1..n by descending
maximum probability (ties: larger first, then scan order); the label map carries the same ids.

Each candidate is a plain dict (JSON-ready):

* ``id``: 1..n; ``n_voxels``; ``volume_mm3``; ``diameter_mm`` (equivalent sphere)
* ``centre_voxel``: centroid (i, j, k), fractional voxel indices
* ``centre_lps``: centroid in LPS mm
* ``bbox_voxel``: (i0, j0, k0, i1, j1, k1), end exclusive
* ``bbox_lps_mm``: (x0, y0, z0, x1, y1, z1), the axis-aligned LPS box holding the voxels' full extent
  (voxel centres +- half a voxel), min corner first
* ``mean_hu`` (NaN without an HU image; ``null`` in JSON), ``max_prob``, ``mean_prob``
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data.meta_tensor import MetaTensor
from monai.transforms import MapTransform, Transform
from scipy import ndimage as ndi

from data_prep.masks import bounding_box, equivalent_diameter_mm
from data_prep.nifti_io import write_text_atomic
from data_prep.coords import Geometry, bbox_lps
from lungnod_ext.data.meta import case_id_from_meta, channel_view_zyx, geometry_from_meta_tensor
from lungnod_ext.transforms.lung_mask import LungMaskWarning, lung_core_mask

DEFAULT_MIN_VOLUME_MM3 = 10.0
"""About a 2.7 mm sphere: just under LIDC's 3 mm nodule size, so an under-segmented 3 mm nodule survives."""
DEFAULT_LUNG_DILATE_MM = 5.0
"""Juxta-pleural nodules often sit just outside a classic (threshold-based) lung mask."""

CANDIDATE_KEYS = ("id", "centre_voxel", "centre_lps", "bbox_voxel", "bbox_lps_mm", "diameter_mm", "volume_mm3",
                  "mean_hu", "max_prob", "mean_prob", "n_voxels")

_FLAT_COLUMNS = {
    "centre_lps": ("centre_x_lps_mm", "centre_y_lps_mm", "centre_z_lps_mm"),
    "centre_voxel": ("centre_i", "centre_j", "centre_k"),
    "bbox_voxel": ("bbox_i0", "bbox_j0", "bbox_k0", "bbox_i1", "bbox_j1", "bbox_k1"),
    "bbox_lps_mm": ("bbox_x0_lps_mm", "bbox_y0_lps_mm", "bbox_z0_lps_mm",
                    "bbox_x1_lps_mm", "bbox_y1_lps_mm", "bbox_z1_lps_mm"),
}
CSV_COLUMNS = tuple(c for k in CANDIDATE_KEYS for c in _FLAT_COLUMNS.get(k, (k,)))
"""The CSV header written by :func:`write_candidates` (extra candidate keys are appended after these)."""

_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)
MASS_SHELL_MM = 2.0
AIR_HU = -500.0
ENHANCED_HU = 150.0
"""Contrast-filled blood (arterial or portal phase, 150-400 HU) and bone lie above it; nodules below."""
ENHANCED_MARGIN_MM = 10.0


def air_contact(component_crop: np.ndarray, hu_crop: np.ndarray, spacing_zyx, shell_mm: float = MASS_SHELL_MM) -> float:
    """Share of the in-plane shell of ``shell_mm`` around a (z, y, x) component that is air (< -500 HU).

    The crops must hold the shell (the component's box grown by ``shell_mm`` in y and x)."""
    steps = max(1, int(round(shell_mm / float(min(spacing_zyx[1], spacing_zyx[2])))))
    shell = ndi.binary_dilation(component_crop, structure=np.ones((1, 3, 3), bool), iterations=steps) & ~component_crop
    return float((np.asarray(hu_crop)[shell] < AIR_HU).mean()) if shell.any() else 0.0


def enhanced_share(component_crop: np.ndarray, hu_crop: np.ndarray, enhanced_hu: float = ENHANCED_HU) -> float:
    """Share of a (z, y, x) component's voxels that are at least ``enhanced_hu`` and connected at that density
    (26-connectivity, through the component or not) to the crop's border: the crop is the component's box
    grown by the margin the caller chose (:data:`ENHANCED_MARGIN_MM`), so a dense region that reaches the
    border continues beyond it (a vessel, the heart, bone), while a calcified nodule ends inside it."""
    dense = np.asarray(hu_crop) >= enhanced_hu
    n = int(component_crop.sum())
    if n == 0 or not (dense & component_crop).any():
        return 0.0
    regions, _ = ndi.label(dense, structure=_STRUCTURE_26)
    border = np.ones(dense.shape, bool)
    border[1:-1, 1:-1, 1:-1] = False
    reaching = np.unique(regions[border & dense])
    return float(np.isin(regions[component_crop], reaching[reaching > 0]).sum()) / n


def _enhanced_share_of(labels_work: np.ndarray, obj: tuple[slice, ...], label: int, hu_zyx: np.ndarray,
                       origin: np.ndarray, spacing_zyx: np.ndarray, enhanced_hu: float) -> float:
    """:func:`enhanced_share` of component ``label`` of ``labels_work`` (the working box at ``origin`` of the
    volume; ``obj`` its box there), in its box grown by :data:`ENHANCED_MARGIN_MM` within the volume."""
    hu = np.asarray(hu_zyx)
    component = labels_work[obj] == label
    box = tuple(slice(o + s.start, o + s.stop) for o, s in zip(origin, obj))        # in the volume
    if float(hu[box][component].max()) < enhanced_hu:
        return 0.0
    wide = _grown(box, np.ceil(ENHANCED_MARGIN_MM / spacing_zyx).astype(int), hu.shape)
    crop = np.zeros([w.stop - w.start for w in wide], bool)
    crop[tuple(slice(b.start - w.start, b.stop - w.start) for b, w in zip(box, wide))] = component
    return enhanced_share(crop, hu[wide], enhanced_hu)


def _grown(box: tuple[slice, ...], margin, shape) -> tuple[slice, ...]:
    """A box of slices grown by ``margin`` voxels per axis, clipped to ``shape``."""
    return tuple(slice(max(s.start - m, 0), min(s.stop + m, n)) for s, m, n in zip(box, margin, shape))


def _touches_lung(component_crop: np.ndarray, lung_crop: np.ndarray, spacing_zyx, dilate_mm: float) -> bool:
    """Does the component come within ``dilate_mm`` (Euclidean, mm) of a lung voxel? Crops are (z, y, x)."""
    if not lung_crop.any():
        return False
    if (component_crop & lung_crop).any():
        return True
    if dilate_mm <= 0:
        return False
    distance_mm = ndi.distance_transform_edt(~lung_crop, sampling=spacing_zyx)
    return bool(distance_mm[component_crop].min() <= dilate_mm + 1e-6)


def extract_candidates_and_labels(prob_zyx: np.ndarray, geometry: Geometry, hu_zyx: np.ndarray | None = None,
                                  lung_mask_zyx: np.ndarray | None = None, threshold: float = 0.5,
                                  min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3,
                                  lung_dilate_mm: float = DEFAULT_LUNG_DILATE_MM,
                                  max_candidates: int | None = None,
                                  label_map_out: np.ndarray | None = None,
                                  lung_core_zyx: np.ndarray | None = None,
                                  min_lung_core_fraction: float = 0.0, mass_min_diameter_mm: float = 0.0,
                                  mass_min_air_contact: float = 0.4, max_enhanced_share: float | None = None,
                                  enhanced_hu: float = ENHANCED_HU) -> tuple[list[dict], np.ndarray]:
    """Candidates of a probability map and their label map.

    Args:
        prob_zyx: (z, y, x) float probabilities in [0, 1] (a binary mask works too). Any memory layout:
            a transposed view of a MONAI (X, Y, Z) array is read in place, not copied.
        geometry: the grid of ``prob_zyx`` (LPS).
        hu_zyx: optional (z, y, x) HU image for ``mean_hu``.
        lung_mask_zyx: optional (z, y, x) lung mask (non-zero = lung). Components farther than
            ``lung_dilate_mm`` from it are dropped. An empty lung mask (failed lung segmentation) is
            ignored with a warning rather than dropping every candidate.
        threshold: a voxel is foreground when ``prob >= threshold`` (MONAI ``AsDiscrete`` convention).
        min_volume_mm3: smaller components are dropped.
        lung_dilate_mm: the lung mask is grown by this many mm (Euclidean, anisotropic voxels handled).
        max_candidates: keep only the first n (highest max probability); None keeps all.
        label_map_out: optional zero-filled integer (z, y, x) array (or view) to write the label map into.
        lung_core_zyx: optional (z, y, x) mask of where a nodule can lie (non-zero;
            :func:`lungnod_ext.transforms.lung_mask.lung_core_mask`): components with less than
            ``min_lung_core_fraction`` of their voxels in it are dropped (soft tissue of the chest wall,
            hilum or mediastinum that only touches the lung). An empty mask is ignored.
        mass_min_diameter_mm, mass_min_air_contact: a component the core rule would drop is kept when it is at
            least this large (equivalent sphere, mm; 0: never) and bordered by lung air (:func:`air_contact`,
            needs ``hu_zyx``) at least this much (module doc).
        max_enhanced_share, enhanced_hu: with ``hu_zyx``, a component with at least ``max_enhanced_share`` of
            its voxels in contrast-filled vessel or heart (:func:`enhanced_share`, in its box grown by
            :data:`ENHANCED_MARGIN_MM`) is dropped; None (default): no such rule.

    Returns:
        (candidates, label_map): the list described in the module docstring (empty when nothing passes),
        and a (z, y, x) map whose value is the candidate ``id`` (0 = background): ``label_map_out`` when
        given, else a new uint16 array.

    Everything after thresholding works inside the bounding box of the foreground, so the cost of a
    sparse map (a trained model's) is about one pass over the volume.
    """
    prob = np.asarray(prob_zyx)
    if prob.ndim != 3:
        raise ValueError(f"prob_zyx must be 3D (z, y, x), got shape {prob.shape}")
    if tuple(prob.shape) != geometry.shape_zyx:
        raise ValueError(f"prob_zyx shape {prob.shape} does not match geometry (z, y, x) {geometry.shape_zyx}")
    for name, arr in (("hu_zyx", hu_zyx), ("lung_mask_zyx", lung_mask_zyx), ("label_map_out", label_map_out),
                      ("lung_core_zyx", lung_core_zyx)):
        if arr is not None and tuple(np.shape(arr)) != tuple(prob.shape):
            raise ValueError(f"{name} shape {np.shape(arr)} differs from prob_zyx shape {prob.shape}")
    label_map = np.zeros(prob.shape, dtype=np.uint16) if label_map_out is None else label_map_out

    foreground = prob >= threshold
    if not foreground.any():
        return [], label_map
    lung = None
    if lung_mask_zyx is not None:
        lung = np.asarray(lung_mask_zyx)
        if not lung.any():
            warnings.warn("lung mask is empty: candidates are not restricted to the lung", stacklevel=2)
            lung = None
    spacing_zyx = np.asarray(geometry.spacing, dtype=float)[::-1]
    # the lung test looks up to lung_dilate_mm (+ 1 voxel) around each component: widen the working box
    margin = np.ceil(max(lung_dilate_mm, 0.0) / spacing_zyx).astype(int) + 1 if lung is not None else np.zeros(3, int)
    work = bounding_box(foreground, margin)
    origin = np.array([s.start for s in work])

    labels, n_components = ndi.label(foreground[work], structure=_STRUCTURE_26)
    voxel_mm3 = geometry.voxel_volume_mm3
    counts = np.bincount(labels.ravel(), minlength=n_components + 1)
    big_enough = np.nonzero(counts[1:] * voxel_mm3 >= min_volume_mm3 - 1e-9)[0] + 1
    if big_enough.size == 0:
        return [], label_map
    objects = ndi.find_objects(labels)
    shape = labels.shape
    if lung is not None:
        lung_work = lung[work] != 0
        kept = []
        for label in big_enough:
            obj = objects[label - 1]
            wide = _grown(obj, margin, shape)
            component = labels[wide] == label
            if _touches_lung(component, lung_work[wide], spacing_zyx, lung_dilate_mm):
                kept.append(label)
        big_enough = np.asarray(kept, dtype=np.int64)
        if big_enough.size == 0:
            return [], label_map
    if lung_core_zyx is not None and min_lung_core_fraction > 0:
        core = np.asarray(lung_core_zyx)
        if core.any():                          # an empty core (no lung found) restricts nothing
            inside = np.bincount(labels[core[work] != 0], minlength=n_components + 1)
            keep = inside[big_enough] >= min_lung_core_fraction * counts[big_enough]
            if hu_zyx is not None and mass_min_diameter_mm > 0:
                pad = np.array([0, *np.ceil(MASS_SHELL_MM / spacing_zyx[1:]).astype(int) + 1])
                for i in np.nonzero(~keep)[0]:
                    label = big_enough[i]
                    if equivalent_diameter_mm(float(counts[label]) * voxel_mm3) < mass_min_diameter_mm:
                        continue
                    obj = objects[label - 1]
                    wide = _grown(obj, pad, shape)
                    hu_wide = np.asarray(hu_zyx)[tuple(slice(o + w.start, o + w.stop) for o, w in zip(origin, wide))]
                    keep[i] = air_contact(labels[wide] == label, hu_wide, spacing_zyx) >= mass_min_air_contact
            big_enough = big_enough[keep]
            if big_enough.size == 0:
                return [], label_map

    if hu_zyx is not None and max_enhanced_share is not None:
        dense = [_enhanced_share_of(labels, objects[label - 1], label, hu_zyx, origin, spacing_zyx, enhanced_hu)
                 for label in big_enough]
        big_enough = big_enough[np.asarray(dense) < max_enhanced_share]
        if big_enough.size == 0:
            return [], label_map

    # per-component statistics, each inside the component's own box
    prob_work = prob[work]
    hu_work = np.asarray(hu_zyx)[work] if hu_zyx is not None else None
    found = []
    for label in big_enough:
        obj = objects[label - 1]
        component = labels[obj] == label
        n = int(counts[label])
        centre_zyx = [float(component.sum(axis=tuple(b for b in range(3) if b != a), dtype=np.int64)
                            @ np.arange(obj[a].start, obj[a].stop)) / n + origin[a] for a in range(3)]
        values = prob_work[obj][component]
        centre_ijk = np.array(centre_zyx[::-1])
        (z0, y0, x0), (z1, y1, x1) = ([s.start + o for s, o in zip(obj, origin)],
                                      [s.stop + o for s, o in zip(obj, origin)])
        bbox = [int(x0), int(y0), int(z0), int(x1), int(y1), int(z1)]
        volume = n * voxel_mm3
        found.append({
            "label": int(label),
            "centre_voxel": [float(v) for v in centre_ijk],
            "centre_lps": [float(v) for v in geometry.voxel_to_world(centre_ijk)],
            "bbox_voxel": bbox,
            "bbox_lps_mm": bbox_lps(geometry, bbox),
            "diameter_mm": equivalent_diameter_mm(volume),
            "volume_mm3": float(volume),
            "mean_hu": float(hu_work[obj][component].mean(dtype=np.float64)) if hu_work is not None else float("nan"),
            "max_prob": float(values.max()),
            "mean_prob": float(values.mean(dtype=np.float64)),
            "n_voxels": n,
        })

    found.sort(key=lambda c: (-c["max_prob"], -c["n_voxels"], c["label"]))
    if max_candidates is not None:
        found = found[:max(int(max_candidates), 0)]
    if len(found) > np.iinfo(np.uint16).max:
        raise ValueError(f"{len(found)} candidates do not fit a uint16 label map; set max_candidates")
    lut = np.zeros(n_components + 1, dtype=label_map.dtype)
    candidates = []
    for new_id, c in enumerate(found, start=1):
        lut[c.pop("label")] = new_id
        candidates.append({"id": new_id, **c})
    label_map[work] = lut[labels]
    return candidates, label_map


def extract_candidates(prob_zyx: np.ndarray, geometry: Geometry, hu_zyx: np.ndarray | None = None,
                       lung_mask_zyx: np.ndarray | None = None, threshold: float = 0.5,
                       min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3,
                       lung_dilate_mm: float = DEFAULT_LUNG_DILATE_MM,
                       max_candidates: int | None = None) -> list[dict]:
    """The candidate list of :func:`extract_candidates_and_labels` (same arguments), without the label map."""
    return extract_candidates_and_labels(prob_zyx, geometry, hu_zyx, lung_mask_zyx, threshold, min_volume_mm3,
                                         lung_dilate_mm, max_candidates)[0]


# ------------------------------------------------------------------------------------------------ files
def _json_value(v):
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_json_value(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, (float, np.floating)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, np.generic):
        return v.item()
    return v


def _flatten(candidate: Mapping) -> dict:
    row = {}
    for key, value in candidate.items():
        if key in _FLAT_COLUMNS:
            row.update(zip(_FLAT_COLUMNS[key], value))
        elif isinstance(value, (list, tuple, np.ndarray)):
            row.update({f"{key}_{n}": v for n, v in enumerate(value)})
        else:
            row[key] = value
    return row


def _csv_cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(float(v)) else repr(float(v))
    return str(v)


def candidates_csv_text(candidates: Sequence[Mapping]) -> str:
    """One CSV row per candidate with flattened columns (:data:`CSV_COLUMNS`, then any extra keys)."""
    rows = [_flatten(c) for c in candidates]
    columns = list(CSV_COLUMNS)
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])
    return buf.getvalue()


def write_candidates(candidates: Sequence[Mapping], json_path=None, csv_path=None,
                     meta: Mapping | None = None) -> list[Path]:
    """Write candidates as JSON and/or CSV, each atomically (a killed run leaves no half file).

    JSON: ``{"case": meta["case"], "coordinate_system": "LPS", "units": "mm", <other meta keys>,
    "candidates": [...]}``; NaN (e.g. ``mean_hu`` without an image) becomes ``null``.
    CSV: header :data:`CSV_COLUMNS` (+ extra keys the candidates carry, e.g. a classifier probability),
    one row per candidate; NaN is an empty cell. An empty list gives ``"candidates": []`` and a
    header-only CSV. Returns the paths written.
    """
    meta = dict(meta or {})
    written = []
    if json_path is not None:
        doc = {"case": meta.pop("case", None), "coordinate_system": "LPS", "units": "mm"}
        doc.update({k: v for k, v in meta.items() if k not in doc and k != "candidates"})
        doc["candidates"] = [dict(c) for c in candidates]
        write_text_atomic(json_path, json.dumps(_json_value(doc), indent=2, allow_nan=False) + "\n")
        written.append(Path(json_path))
    if csv_path is not None:
        write_text_atomic(csv_path, candidates_csv_text(candidates))
        written.append(Path(csv_path))
    return written


# ------------------------------------------------------------------------------------------------ MONAI
class ExtractCandidates(Transform):
    """Array transform: a channel-first prediction ``(C, X, Y, Z)`` MetaTensor -> (candidates, label map).

    ``prob_channel`` picks the foreground-probability channel (default -1: the only channel of a sigmoid
    output, the foreground of a 2-channel softmax). ``image`` (HU) and ``lung_mask`` are optional
    ``(C, X, Y, Z)`` arrays on the same grid (channel 0 is used). ``min_lung_core_fraction`` > 0 drops
    components with less than that share of their voxels in the lung core: ``lung_core`` when given (the
    same grid, e.g. :class:`lungnod_ext.transforms.lung_mask.LungMaskd`'s ``core_key`` resampled here), else
    the image's lung mask closed slice by slice with a ``lung_core_closing_mm`` disc, computed here
    (:func:`lungnod_ext.transforms.lung_mask.lung_core_mask`; needs the image). The label map comes
    back as an int32 ``(1, X, Y, Z)`` MetaTensor with the prediction's metadata, ready for ``SaveImage``.
    Other arguments: see :func:`extract_candidates_and_labels`.
    """

    def __init__(self, threshold: float = 0.5, min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3,
                 lung_dilate_mm: float = DEFAULT_LUNG_DILATE_MM, max_candidates: int | None = None,
                 prob_channel: int = -1, min_lung_core_fraction: float = 0.0,
                 lung_core_closing_mm: float = 15.0, mass_min_diameter_mm: float = 0.0,
                 mass_min_air_contact: float = 0.4, max_enhanced_share: float | None = None,
                 enhanced_hu: float = ENHANCED_HU) -> None:
        self.threshold = threshold
        self.min_volume_mm3 = min_volume_mm3
        self.lung_dilate_mm = lung_dilate_mm
        self.max_candidates = max_candidates
        self.prob_channel = prob_channel
        self.min_lung_core_fraction = float(min_lung_core_fraction)
        self.lung_core_closing_mm = float(lung_core_closing_mm)
        self.mass_min_diameter_mm = float(mass_min_diameter_mm or 0.0)
        self.mass_min_air_contact = float(mass_min_air_contact)
        self.max_enhanced_share = None if max_enhanced_share is None else float(max_enhanced_share)
        self.enhanced_hu = float(enhanced_hu)

    def __call__(self, pred: MetaTensor, image=None, lung_mask=None,
                 lung_core=None) -> tuple[list[dict], MetaTensor]:
        geometry = geometry_from_meta_tensor(pred)
        prob = channel_view_zyx(pred, self.prob_channel)
        hu = None
        if image is not None:
            hu = channel_view_zyx(image)
            if tuple(hu.shape) != tuple(prob.shape):
                raise ValueError(f"image (z, y, x) {hu.shape} and pred {prob.shape} are on different grids: "
                                 "resample the prediction to the image (ResampleToReferenced / Invertd) first")
            if hu.size and float(hu.min()) >= 0.0 and float(hu.max()) <= 1.0:
                warnings.warn("the image looks windowed to [0, 1], not HU: mean_hu will not be in HU; "
                              "point image_key at an unwindowed copy", stacklevel=2)
        lung = channel_view_zyx(lung_mask) if lung_mask is not None else None
        core = None
        if self.min_lung_core_fraction > 0 and lung_core is not None:
            core = channel_view_zyx(lung_core)
            if tuple(core.shape) != tuple(prob.shape):
                raise ValueError(f"lung_core (z, y, x) {core.shape} and pred {prob.shape} are on different grids")
        elif self.min_lung_core_fraction > 0 and hu is not None and (prob >= self.threshold).any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", LungMaskWarning)     # no lung: the core restricts nothing
                core = lung_core_mask(hu, np.asarray(geometry.spacing, dtype=float)[::-1], self.lung_core_closing_mm)
        labels = torch.zeros((1, *pred.shape[1:]), dtype=torch.int32)
        candidates, _ = extract_candidates_and_labels(
            prob, geometry, hu, lung, self.threshold, self.min_volume_mm3, self.lung_dilate_mm, self.max_candidates,
            label_map_out=labels.numpy()[0].transpose(2, 1, 0), lung_core_zyx=core,
            min_lung_core_fraction=self.min_lung_core_fraction, mass_min_diameter_mm=self.mass_min_diameter_mm,
            mass_min_air_contact=self.mass_min_air_contact, max_enhanced_share=self.max_enhanced_share,
            enhanced_hu=self.enhanced_hu)
        return candidates, MetaTensor(labels, meta=dict(pred.meta))


class ExtractCandidatesd(MapTransform):
    """Dictionary twin of :class:`ExtractCandidates`, for a bundle's post-processing.

    Reads ``data[keys]`` (the prediction, one key), ``data[image_key]`` (HU, optional: None or absent ->
    ``mean_hu`` NaN) and ``data[lung_mask_key]`` (optional); writes the candidate list to
    ``data[output_key]`` and the label map to ``data[labels_key]`` (skipped when None). With ``output_dir``
    the list is also written as ``<output_dir>/<case>_candidates.json`` and ``.csv``, ``<case>`` being the
    prediction's source file name without extension. ``min_lung_core_fraction`` /
    ``lung_core_closing_mm`` / ``mass_min_diameter_mm`` / ``mass_min_air_contact`` /
    ``max_enhanced_share`` / ``enhanced_hu``: see
    :class:`ExtractCandidates`; the lung core is ``data[lung_core_key]`` when
    that key is set and present, else computed from the image.
    """

    def __init__(self, keys: KeysCollection = "pred", image_key: str | None = "image",
                 lung_mask_key: str | None = None, output_key: str = "candidates",
                 labels_key: str | None = "candidate_labels", threshold: float = 0.5,
                 min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3, lung_dilate_mm: float = DEFAULT_LUNG_DILATE_MM,
                 max_candidates: int | None = None, prob_channel: int = -1, output_dir: str | None = None,
                 min_lung_core_fraction: float = 0.0, lung_core_closing_mm: float = 15.0,
                 lung_core_key: str | None = None, mass_min_diameter_mm: float = 0.0,
                 mass_min_air_contact: float = 0.4, max_enhanced_share: float | None = None,
                 enhanced_hu: float = ENHANCED_HU, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"ExtractCandidatesd takes one prediction key, got {self.keys}")
        self.image_key = image_key
        self.lung_mask_key = lung_mask_key
        self.lung_core_key = lung_core_key
        self.output_key = output_key
        self.labels_key = labels_key
        self.output_dir = output_dir
        self.extractor = ExtractCandidates(threshold, min_volume_mm3, lung_dilate_mm, max_candidates, prob_channel,
                                           min_lung_core_fraction, lung_core_closing_mm, mass_min_diameter_mm,
                                           mass_min_air_contact, max_enhanced_share, enhanced_hu)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d.get(self.image_key) if self.image_key is not None else None
            lung = d.get(self.lung_mask_key) if self.lung_mask_key is not None else None
            if self.lung_mask_key is not None and lung is None and not self.allow_missing_keys:
                raise KeyError(f"lung mask key {self.lung_mask_key!r} not in data")
            core = d.get(self.lung_core_key) if self.lung_core_key is not None else None
            candidates, labels = self.extractor(d[key], image=image, lung_mask=lung, lung_core=core)
            d[self.output_key] = candidates
            if self.labels_key is not None:
                d[self.labels_key] = labels
            if self.output_dir is not None:
                case = case_id_from_meta(d[key])
                out = Path(self.output_dir)
                write_candidates(candidates, out / f"{case}_candidates.json", out / f"{case}_candidates.csv",
                                 {"case": case, "source": str(d[key].meta.get("filename_or_obj", ""))})
        return d
