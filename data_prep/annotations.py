"""LIDC reads of one series -> consensus nodule instance mask, nodule table rows, small-mark rows.

Each contoured mark is filled on the series grid (its rois matched to slices by SOP UID, falling
back to z position); marks of different readers that overlap (or whose centroids are close) are one
nodule; a voxel belongs to the nodule's consensus when at least ``consensus`` of the readers who
marked that nodule included it. Small (< 3 mm, point) nodules and non-nodules are grouped by distance
and listed apart. All centres are LPS mm and voxel (i, j, k).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from data_prep.lidc_xml import CHARACTERISTICS, KIND_NODULE, LidcRead
from data_prep.masks import SparseMask, consensus_mask, group_marks, nodule_stats, rasterize_rois
from data_prep.coords import Geometry

SMALL_MARK_LINK_MM = 5.0     # point marks of different readers closer than this are one finding
MIN_LINK_MM = 3.0


@dataclass
class SliceIndex:
    """Maps an LIDC roi to slice k: by SOP Instance UID, else by z position (world z, mm)."""

    sop_to_k: dict[str, int]
    z_mm: np.ndarray            # (n_slices,) ImagePositionPatient z of slice k
    tolerance_mm: float

    def find(self, sop_uid, z_mm) -> int | None:
        if sop_uid and sop_uid in self.sop_to_k:
            return self.sop_to_k[sop_uid]
        if z_mm is not None and len(self.z_mm):
            k = int(np.argmin(np.abs(self.z_mm - z_mm)))
            if abs(self.z_mm[k] - z_mm) <= self.tolerance_mm:
                return k
        return None


@dataclass
class CaseAnnotations:
    instance_mask: np.ndarray                       # (z, y, x) uint16, nodule id per voxel, 0 = background
    nodules: list[dict] = field(default_factory=list)
    small_marks: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_readers: int = 0


def _median(values):
    return float(statistics.median(values)) if values else None


def rois_by_slice(mark, slices: SliceIndex) -> tuple[dict[int, list], int]:
    """A reader mark's contours grouped by the series' slice index k, and how many named no slice of it."""
    by_k, missing = defaultdict(list), 0
    for roi in mark.rois:
        k = slices.find(roi.sop_uid, roi.z_mm)
        if k is None:
            missing += 1
        else:
            by_k[k].append(roi)
    return by_k, missing


def build_case_annotations(reads: list[LidcRead], geometry: Geometry, slices: SliceIndex,
                           hu_zyx: np.ndarray | None = None, consensus: float = 0.5) -> CaseAnnotations:
    """Turn the LIDC reads of one series into its consensus masks and tables (see module doc)."""
    shape = geometry.shape_zyx
    out = CaseAnnotations(np.zeros(shape, dtype=np.uint16))
    nodule_marks, point_marks = [], []
    unresolved = defaultdict(int)
    for read in reads:
        out.n_readers += len(read.readers)
        for mark in read.marks:
            by_k, missing = rois_by_slice(mark, slices)
            if missing:
                unresolved[read.path.name] += missing
            if not by_k:
                continue
            if mark.kind == KIND_NODULE:
                sm = rasterize_rois(by_k, shape)
                if sm is not None:
                    nodule_marks.append((mark, sm, geometry.voxel_to_world(sm.centroid_ijk())))
            else:
                k, rois = next(iter(by_k.items()))
                pts = np.concatenate([r.points_xy for r in rois]) if any(len(r.points_xy) for r in rois) else None
                if pts is None:
                    continue
                ijk = np.array([pts[:, 0].mean(), pts[:, 1].mean(), k], dtype=float)
                point_marks.append((mark, ijk, geometry.voxel_to_world(ijk)))
    for name, n in unresolved.items():
        out.warnings.append(f"{name}: {n} roi(s) name SOP UIDs / z positions not in the series: ignored")
    if reads and not nodule_marks:
        out.warnings.append(f"{', '.join(r.path.name for r in reads)}: no nodule contours (no nodule >= 3 mm marked)")

    # Contoured nodules: overlap, else centroid distance.
    def link(a, b):
        (_, ma, ca), (_, mb, cb) = nodule_marks[a], nodule_marks[b]
        ov = ma.overlap(mb)
        if ov:
            return (0, -ov / min(ma.n_voxels, mb.n_voxels))
        dist = float(np.linalg.norm(ca - cb))
        da = (6 * ma.n_voxels * geometry.voxel_volume_mm3 / np.pi) ** (1 / 3)
        db = (6 * mb.n_voxels * geometry.voxel_volume_mm3 / np.pi) ** (1 / 3)
        return (1, dist) if dist <= max(MIN_LINK_MM, 0.5 * min(da, db)) else None

    groups = group_marks(len(nodule_marks), link, [m[0].reader for m in nodule_marks])
    entries = []
    for g in groups:
        masks = [nodule_marks[i][1] for i in g]
        cons, _ = consensus_mask(masks, consensus)
        if not cons.array.any():
            out.warnings.append(f"nodule marked by {len(g)} reader(s) near LPS {np.round(nodule_marks[g[0]][2], 1).tolist()}"
                                f" has an empty {consensus:.0%} consensus: left out")
            continue
        entries.append((g, cons))
    # Order nodules by position (k, j, i of the centroid) so ids are stable.
    entries.sort(key=lambda e: tuple(e[1].centroid_ijk()[::-1]))
    for nid, (g, cons) in enumerate(entries, start=1):
        lo, hi = (tuple(int(v) for v in b) for b in cons.bounds())
        window = out.instance_mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        window[cons.array & (window == 0)] = nid
        stats = nodule_stats(cons.array, _crop_geometry(geometry, lo, hi),
                             hu_zyx[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] if hu_zyx is not None else None)
        stats["centre_voxel"] = [stats["centre_voxel"][0] + lo[2], stats["centre_voxel"][1] + lo[1], stats["centre_voxel"][2] + lo[0]]
        b = stats["bbox_voxel"]
        stats["bbox_voxel"] = [b[0] + lo[2], b[1] + lo[1], b[2] + lo[0], b[3] + lo[2], b[4] + lo[1], b[5] + lo[0]]
        marks = [nodule_marks[i][0] for i in g]
        row = {"nodule_id": nid, **stats, "n_readers": len(marks), "readers": [m.reader for m in marks],
               "reader_mark_ids": [m.mark_id for m in marks], "consensus_threshold": consensus}
        for name in CHARACTERISTICS:
            vals = [m.characteristics[name] for m in marks if name in m.characteristics]
            row[f"{name}_median"] = _median(vals)
            if name == "malignancy":
                row["malignancy_ratings"] = vals
        out.nodules.append(row)

    # Point marks: small nodules and non-nodules, grouped per kind by distance.
    for kind in sorted({m[0].kind for m in point_marks}):
        pm = [m for m in point_marks if m[0].kind == kind]

        def plink(a, b, pm=pm):
            d = float(np.linalg.norm(pm[a][2] - pm[b][2]))
            return d if d <= SMALL_MARK_LINK_MM else None

        for g in group_marks(len(pm), plink, [m[0].reader for m in pm]):
            ijk = np.mean([pm[i][1] for i in g], axis=0)
            out.small_marks.append({"kind": kind, "centre_voxel": [float(v) for v in ijk],
                                    "centre_lps": [float(v) for v in geometry.voxel_to_world(ijk)],
                                    "n_readers": len(g), "readers": [pm[i][0].reader for i in g],
                                    "reader_mark_ids": [pm[i][0].mark_id for i in g]})
    out.small_marks.sort(key=lambda r: (r["kind"], r["centre_voxel"][2], r["centre_voxel"][1], r["centre_voxel"][0]))
    return out


def _crop_geometry(geometry: Geometry, lo_zyx, hi_zyx) -> Geometry:
    origin = geometry.voxel_to_world(np.array([lo_zyx[2], lo_zyx[1], lo_zyx[0]], dtype=float))
    size = np.asarray(hi_zyx) - np.asarray(lo_zyx)
    return Geometry(tuple(float(v) for v in origin), geometry.spacing, geometry.direction,
                    (int(size[2]), int(size[1]), int(size[0])))


def sparse_to_full(mask: SparseMask, shape_zyx) -> np.ndarray:
    """A SparseMask on the full (z, y, x) grid, bool."""
    return mask.paste(np.zeros(3, dtype=int), np.asarray(shape_zyx))
