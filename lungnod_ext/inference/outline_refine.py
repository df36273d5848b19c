"""Nodule outlines drawn the way LIDC-IDRI readers draw them: out to the partial-volume edge.

The segmenter (trained mostly on inserted nodules) and the dot filter's region growing (a threshold
half-way between nodule and lung) both stop about half a voxel to a voxel inside the edge a reader
traces: on real nodules in unseen scans their voxels are 50-85 % of the reader consensus, and the
consensus voxels they miss lie within 1-2 mm of their outline at -500 to -800 HU, voxels only partly
filled by the nodule. :func:`refine_outlines` grows each candidate into the ring of free voxels within
``ring_mm`` of its outline that are denser than ``edge_fraction`` of the way from the lung around it
to the nodule (HU), so the outline, its volume and its diameter follow the readers' convention. The
candidates themselves (which exist, their centres, their scores) do not change.

Conventions (see :mod:`data_prep.coords`): arrays are ``(z, y, x)``; voxel indices ``(i, j, k)``;
distances in mm; HU.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage as ndi

from data_prep.coords import Geometry, bbox_lps
from data_prep.masks import equivalent_diameter_mm
from lungnod_ext.data.meta import channel_view_zyx, geometry_from_meta_tensor

DEFAULT_RING_MM = 1.5
DEFAULT_EDGE_FRACTION = 0.3
LUNG_HU_MAX = -500.0            # voxels below this, away from the candidate, are the lung around it
MIN_CONTRAST_HU = 100.0         # a candidate no denser than the lung around it is left as it is


def refine_outline(hu_crop: np.ndarray, labels_crop: np.ndarray, label: int, spacing_zyx_mm: Sequence[float],
                   ring_mm: float = DEFAULT_RING_MM, edge_fraction: float = DEFAULT_EDGE_FRACTION) -> np.ndarray:
    """Voxels to add to candidate ``label`` in a (z, y, x) crop: free (``labels_crop`` 0) voxels within
    ``ring_mm`` of its region, above ``lung + edge_fraction * (nodule - lung)`` HU and connected to the
    region (26-connectivity). ``nodule``: the region's median HU; ``lung``: the median of the crop's
    voxels below -500 HU farther than ``ring_mm`` + 1 mm from it. -> bool mask of the crop (may be empty)."""
    region = labels_crop == label
    if not region.any():
        return np.zeros(region.shape, bool)
    dist = ndi.distance_transform_edt(~region, sampling=[float(s) for s in spacing_zyx_mm])
    outside = (dist > ring_mm + 1.0) & (hu_crop < LUNG_HU_MAX)
    if outside.sum() < 10:
        return np.zeros(region.shape, bool)
    lung = float(np.median(hu_crop[outside]))
    nodule = float(np.median(hu_crop[region]))
    if nodule - lung < MIN_CONTRAST_HU:
        return np.zeros(region.shape, bool)
    edge = lung + edge_fraction * (nodule - lung)
    ring = (dist > 0) & (dist <= ring_mm) & (labels_crop == 0) & (hu_crop > edge)
    if not ring.any():
        return ring
    grown, _ = ndi.label(region | ring, structure=np.ones((3, 3, 3), bool))
    keep = np.unique(grown[region])
    return ring & np.isin(grown, keep[keep > 0])


def refine_outlines(candidates: Sequence[Mapping], labels_zyx: np.ndarray, hu_zyx: np.ndarray, geometry: Geometry,
                    ring_mm: float = DEFAULT_RING_MM, edge_fraction: float = DEFAULT_EDGE_FRACTION) -> list[dict]:
    """Grow every candidate's voxels in ``labels_zyx`` ((z, y, x) ids, changed in place) by
    :func:`refine_outline`, in id order (a voxel goes to the first candidate that claims it), and return the
    candidates with ``n_voxels``, ``volume_mm3``, ``diameter_mm``, ``bbox_voxel``, ``bbox_lps_mm`` and
    ``mean_hu`` of the new outline (their centres and scores unchanged) and ``outline_added_voxels``.
    ``hu_zyx``: the CT in HU on the same grid; ``geometry``: its LPS grid."""
    spacing = np.asarray(geometry.spacing, dtype=float)[::-1]
    reach = np.ceil((ring_mm + 6.0) / spacing).astype(int)         # the ring plus lung around it
    hu = np.asarray(hu_zyx)
    out = []
    for cand in sorted(candidates, key=lambda c: int(c["id"])):
        cand = dict(cand)
        label = int(cand["id"])
        i0, j0, k0, i1, j1, k1 = (int(v) for v in cand["bbox_voxel"])
        lo = np.maximum(np.array([k0, j0, i0]) - reach, 0)
        hi = np.minimum(np.array([k1, j1, i1]) + reach, labels_zyx.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        labels_crop = labels_zyx[box]
        hu_crop = np.asarray(hu[box], dtype=np.float32)
        add = refine_outline(hu_crop, labels_crop, label, spacing, ring_mm, edge_fraction)
        cand["outline_added_voxels"] = int(add.sum())
        if add.any():
            labels_crop[add] = label
            zyx = np.argwhere(labels_crop == label)
            n = len(zyx)
            lo_zyx, hi_zyx = zyx.min(axis=0) + lo, zyx.max(axis=0) + 1 + lo
            bbox = [int(lo_zyx[2]), int(lo_zyx[1]), int(lo_zyx[0]), int(hi_zyx[2]), int(hi_zyx[1]), int(hi_zyx[0])]
            volume = float(n * geometry.voxel_volume_mm3)
            cand.update(n_voxels=int(n), volume_mm3=volume, diameter_mm=equivalent_diameter_mm(volume),
                        bbox_voxel=bbox, bbox_lps_mm=bbox_lps(geometry, bbox),
                        mean_hu=float(hu_crop[labels_crop == label].mean(dtype=np.float64)))
        out.append(cand)
    order = {int(c["id"]): n for n, c in enumerate(candidates)}
    return sorted(out, key=lambda c: order[int(c["id"])])


class RefineOutlinesd(MapTransform):
    """Post-processing for the segmentation bundle, after the candidates are found (``ExtractCandidatesd``,
    ``AddBlobCandidatesd``): :func:`refine_outlines` on ``data[candidates_key]`` and the label map
    ``data[labels_key]`` (a writable ``(1, X, Y, Z)`` tensor, changed in place), with the CT in HU
    ``data[image_key]`` on the same grid. ``enabled`` False passes data through (a config switch)."""

    def __init__(self, keys: KeysCollection = "candidate_labels", image_key: str = "ct_hu",
                 candidates_key: str = "candidates", ring_mm: float = DEFAULT_RING_MM,
                 edge_fraction: float = DEFAULT_EDGE_FRACTION, enabled: bool = True,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key, self.candidates_key = image_key, candidates_key
        self.ring_mm, self.edge_fraction, self.enabled = float(ring_mm), float(edge_fraction), enabled

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            if d.get(self.image_key) is None:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"RefineOutlinesd needs the CT in HU as {self.image_key!r}")
            labels = d[key]
            label_zyx = channel_view_zyx(labels)
            if not isinstance(labels, torch.Tensor) or not label_zyx.flags.writeable:
                raise ValueError(f"{key!r} must be a writable (1, X, Y, Z) tensor")
            image = d[self.image_key]
            d[self.candidates_key] = refine_outlines(list(d.get(self.candidates_key) or []), label_zyx,
                                                     channel_view_zyx(image), geometry_from_meta_tensor(image),
                                                     self.ring_mm, self.edge_fraction)
        return d
