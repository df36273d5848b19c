"""Juxta-pleural candidates: the bites nodules on the chest wall take out of the lung's air.

Neither the 2.5D U-Net nor the dot filter (:mod:`lungnod_ext.inference.blob_candidates`) answers a small nodule
against the pleura: it is a cap of soft tissue on the wall, brighter on one side only. The rolling-ball idea of
classic lung CAD (Armato et al., Radiology 1999) fills such bites back into the air mask; what it fills is
the candidate. :func:`pleural_caps`: air = HU < ``air_hu`` inside the lung mask grown 3 mm, holes filled slice
by slice (vessels and nodules inside the lung are air's holes, not bites); closed slice by slice with a
``closing_mm`` disc; minus the air; opened by a 3 x 3 pixel square (the pixel-wide rim a closing adds along
every wall goes); 3-D components, each with its depth (the largest in-plane distance, mm, from a cap voxel to
the cap's outline). The deepest ``max_candidates`` that touch no other candidate become candidates with
``detector`` "pleural"; the stage-2 classifier, trained on them, tells nodules from the wall's own bumps.
Measured (``tests/benchmarks/bench_pleural_caps.py``): 94-111 caps per scan; on LIDC-IDRI-0001 with inserted
nodules the 20 deepest touch 3 of the 9 small juxta-pleural nodules no other detector reaches, but their
centres (the bites' centroids) miss those nodules' centres, and classifiers retrained with the caps found no
more small nodules there (``tests/benchmarks/HISTORY.md``, session 22): the segmentation config keeps them off.

Conventions (see :mod:`data_prep.coords`): arrays ``(z, y, x)``, HU, mm; candidates as the segmenter's
(:mod:`lungnod_ext.inference.candidates`) plus ``cap_depth_mm`` and ``cap_rank`` (0 = deepest).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

from data_prep.coords import Geometry
from lungnod_ext.inference.blob_candidates import AddBlobCandidatesd, append_region_candidates, region_candidate
from lungnod_ext.transforms.lung_mask import close_slices_mm, compute_lung_mask, fill_holes_per_slice


class PleuralCaps(NamedTuple):
    """What :func:`pleural_caps` found: ``labels`` (z, y, x) int32 (0 = none, 1..n caps), ``depth_mm`` (n + 1,
    index 0 unused) and ``boxes`` (each cap's (z, y, x) slices, index i - 1 for cap i)."""

    labels: np.ndarray
    depth_mm: np.ndarray
    boxes: list


def pleural_caps(hu_zyx: np.ndarray, spacing_zyx_mm: Sequence[float], closing_mm: float = 5.0,
                 air_hu: float = -500.0, lung_zyx: np.ndarray | None = None) -> PleuralCaps:
    """The caps of a (z, y, x) HU volume (module doc). ``lung_zyx``: the lung mask grown about 3 mm (non-zero =
    lung; None: :func:`~lungnod_ext.transforms.lung_mask.compute_lung_mask` of the volume, grown 3 mm)."""
    hu = np.asarray(hu_zyx)
    sp = np.asarray(spacing_zyx_mm, dtype=float)
    lung = (compute_lung_mask(hu, sp, dilate_mm=3.0) if lung_zyx is None else np.asarray(lung_zyx)) != 0
    air = fill_holes_per_slice((hu < air_hu) & lung).astype(np.uint8)
    caps = (close_slices_mm(air, sp[1:], closing_mm) != 0) & (air == 0)
    caps = ndi.binary_opening(caps, structure=np.ones((1, 3, 3), bool))
    labels, n = ndi.label(caps)
    boxes = ndi.find_objects(labels)
    depth = np.zeros(n + 1)
    for i, box in enumerate(boxes, 1):
        # padded: the outline lies all round, also where the cap fills its box
        depth[i] = max(float(ndi.distance_transform_edt(np.pad(plane, 1), sampling=sp[1:]).max())
                       for plane in labels[box] == i if plane.any())
    return PleuralCaps(labels.astype(np.int32, copy=False), depth, list(boxes))


def find_cap_candidates(hu_zyx: np.ndarray, geometry: Geometry, max_candidates: int = 20,
                        taken_zyx: np.ndarray | None = None, lung_zyx: np.ndarray | None = None,
                        **options) -> list[tuple[dict, tuple[slice, ...], np.ndarray]]:
    """The deepest ``max_candidates`` caps of :func:`pleural_caps` (``options``: ``closing_mm``, ``air_hu``)
    that neither overlap nor touch a voxel of ``taken_zyx`` (non-zero: other candidates) -> ``[(candidate dict without id /
    probabilities, box, region)]``, deepest first (``cap_rank`` counts every cap, taken ones too)."""
    if max_candidates <= 0:
        return []
    caps = pleural_caps(hu_zyx, np.asarray(geometry.spacing, dtype=float)[::-1], lung_zyx=lung_zyx, **options)
    found = []
    shape = caps.labels.shape
    for rank, i in enumerate(np.argsort(-caps.depth_mm[1:], kind="stable") + 1):
        box = caps.boxes[i - 1]
        region = caps.labels[box] == i
        if taken_zyx is not None:
            # touching (a face, an edge or a corner) another candidate: the bite is part of that object
            grown = tuple(slice(max(b.start - 1, 0), min(b.stop + 1, n)) for b, n in zip(box, shape))
            near = ndi.binary_dilation(caps.labels[grown] == i, structure=np.ones((3, 3, 3), bool))
            if (np.asarray(taken_zyx[grown])[near] != 0).any():
                continue
        mean_hu = float(np.asarray(hu_zyx[box], dtype=np.float32)[region].mean(dtype=np.float64))
        found.append(({**region_candidate(box, region, geometry, mean_hu), "detector": "pleural",
                       "cap_depth_mm": round(float(caps.depth_mm[i]), 3), "cap_rank": rank}, box, region))
        if len(found) == max_candidates:
            break
    return found


class AddPleuralCapCandidatesd(AddBlobCandidatesd):
    """Post-processing for the segmentation bundle, after the dot filter's step: appends the deepest pleural
    caps (:func:`find_cap_candidates`) that touch no earlier candidate to ``data[candidates_key]`` and their
    regions to ``data[labels_key]``. Keys as :class:`~lungnod_ext.inference.blob_candidates.AddBlobCandidatesd`
    (``lung_mask_key`` None: the lung mask is worked out from the CT, grown 3 mm; a mask grown much more would
    take in the trachea's air); ``enabled`` False passes data through; other keyword arguments
    (``max_candidates``, ``closing_mm``, ``air_hu``) go to :func:`find_cap_candidates`."""

    def __init__(self, keys="pred", image_key: str = "ct_hu", lung_mask_key: str | None = None,
                 candidates_key: str = "candidates", labels_key: str = "candidate_labels", enabled: bool = True,
                 allow_missing_keys: bool = False, **options) -> None:
        super().__init__(keys, image_key, lung_mask_key, candidates_key, labels_key, enabled, allow_missing_keys,
                         slice_thickness_key=None, **options)   # the caps take no slice thickness: none is looked up

    def add(self, candidates, label_zyx, prob_zyx, hu_zyx, geometry, lung_zyx, slice_thickness_mm=None):
        found = find_cap_candidates(hu_zyx, geometry, taken_zyx=label_zyx, lung_zyx=lung_zyx, **self.options)
        return append_region_candidates(candidates, found, label_zyx, prob_zyx)
