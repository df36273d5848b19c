"""Shared by the data_prep.synth tests: the small cohort's config and reference readers of the written files
(DICOM series, LIDC XML), written independently of synth, plus the per-nodule checks of a case.

Imported by those test modules from this folder (pytest runs with ``--import-mode=importlib``, so they put
the folder on ``sys.path`` themselves, as tests/ecosystem does).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pydicom
from scipy import ndimage

from data_prep.coords import Geometry
from data_prep.synth import CohortConfig

NS = {"l": "http://www.nih.gov"}
CONFIG = CohortConfig(n_cases=3, seed=3, size_xy=112, pixel_spacing_mm=2.0, slice_spacing_mm=2.5, n_slices=48,
                      diameter_mm=(4.0, 16.0))


SMALL = dict(size_xy=112, pixel_spacing_mm=2.0, slice_spacing_mm=2.5, n_slices=48)


def fill_rois(shape_yx, rois) -> np.ndarray:
    """The parser's rule: fillPoly every inclusion contour; for every exclusion contour clear the
    filled polygon minus the contour's own pixels."""
    out = np.zeros(shape_yx, dtype=np.uint8)
    for inclusion, pts in rois:
        if inclusion:
            cv2.fillPoly(out, [np.asarray(pts, np.int32).reshape(-1, 1, 2)], 1)
    for inclusion, pts in rois:
        if not inclusion:
            poly = np.zeros(shape_yx, dtype=np.uint8)
            cv2.fillPoly(poly, [np.asarray(pts, np.int32).reshape(-1, 1, 2)], 1)
            edge = np.zeros(shape_yx, dtype=np.uint8)
            edge[np.asarray(pts)[:, 1], np.asarray(pts)[:, 0]] = 1
            out[(poly == 1) & (edge == 0)] = 0
    return out.astype(bool)


def read_series(series_dir: Path):
    """(hu (z, y, x) int16 sorted by position along the normal, geometry, sop uid -> k, headers)."""
    dss = [pydicom.dcmread(f) for f in series_dir.glob("*.dcm")]
    iop = np.array(dss[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    dss.sort(key=lambda d: float(np.dot(np.array(d.ImagePositionPatient, dtype=float), normal)))
    hu = np.stack([d.pixel_array.astype(np.int32) * int(d.RescaleSlope) + int(d.RescaleIntercept) for d in dss])
    pos = np.array([d.ImagePositionPatient for d in dss], dtype=float)
    ps = [float(v) for v in dss[0].PixelSpacing]
    geom = Geometry(tuple(pos[0]), (ps[1], ps[0], float(np.median(np.diff(pos @ normal)))),
                    tuple(np.stack([iop[:3], iop[3:], normal], axis=1).ravel()),
                    (int(dss[0].Columns), int(dss[0].Rows), len(dss)))
    return hu.astype(np.int16), geom, {d.SOPInstanceUID: k for k, d in enumerate(dss)}, dss


def parse_reads(xml_path: Path, sop_to_k):
    """reader -> list of marks {id, chars, rois: [(k, z, inclusion, points)]} and non-nodules."""
    root = ET.parse(xml_path).getroot()
    reads = {}
    for s in root.findall("l:readingSession", NS):
        reader = s.find("l:servicingRadiologistID", NS).text
        marks = []
        for nod in s.findall("l:unblindedReadNodule", NS):
            rois = []
            for roi in nod.findall("l:roi", NS):
                pts = [(int(e.find("l:xCoord", NS).text), int(e.find("l:yCoord", NS).text))
                       for e in roi.findall("l:edgeMap", NS)]
                rois.append((sop_to_k[roi.find("l:imageSOP_UID", NS).text],
                             float(roi.find("l:imageZposition", NS).text),
                             roi.find("l:inclusion", NS).text == "TRUE", pts))
            chars = nod.find("l:characteristics", NS)
            marks.append({"id": nod.find("l:noduleID", NS).text, "rois": rois,
                          "chars": None if chars is None else {c.tag.split("}")[1]: int(c.text) for c in chars}})
        non = [{"id": n.find("l:nonNoduleID", NS).text, "k": sop_to_k[n.find("l:imageSOP_UID", NS).text],
                "z": float(n.find("l:imageZposition", NS).text),
                "xy": (int(n.find("l:locus/l:xCoord", NS).text), int(n.find("l:locus/l:yCoord", NS).text))}
               for n in s.findall("l:nonNodule", NS)]
        reads[reader] = {"marks": marks, "non": non}
    return root, reads


def rebuild_mark(mark, shape_zyx) -> np.ndarray:
    out = np.zeros(shape_zyx, dtype=bool)
    by_k: dict[int, list] = {}
    for k, _, inc, pts in mark["rois"]:
        by_k.setdefault(k, []).append((inc, pts))
    for k, rois in by_k.items():
        out[k] = fill_rois(shape_zyx[1:], rois)
    return out


def full(mask, shape_zyx) -> np.ndarray:
    return mask.paste((0, 0, 0), shape_zyx)


def check_nodules(case):
    """Every true nodule: inside the lungs, volume = voxels x voxel volume, intensity of its type,
    juxta types touching the wall / a vessel. Returns the types seen."""
    hu, lung = case.hu_zyx.astype(float), case.lung_mask_zyx
    truth = case.truth_instance_mask()
    vox = case.geometry.voxel_volume_mm3
    seen = []
    for n in case.nodules:
        m = truth == n.id
        seen.append(n.spec.type)
        assert m.sum() == n.truth.n_voxels > 0 and lung[m].all()
        inner = ndimage.binary_erosion(m, structure=np.ones((1, 3, 3), bool))
        if n.spec.diameter_mm >= 10:
            assert inner.sum() >= 3
        mean = hu[inner].mean() if inner.sum() >= 3 else None
        if mean is None:
            pass
        elif n.spec.type == "ground_glass":
            assert -650 < mean < -330, (n.spec.type, mean)
        elif n.spec.type == "part_solid":                                 # solid core + ground-glass halo
            assert (hu[m] > -150).sum() > 0 and (hu[m] < -300).sum() > 0
        else:
            assert -40 < mean < 90, (n.spec.type, mean)
        grown = ndimage.binary_dilation(m, structure=np.ones((3, 3, 3), bool)) & ~m
        if n.spec.type == "juxta_pleural":
            assert (~lung[grown]).mean() > 0.05                       # touches the wall
        if n.spec.type == "juxta_vascular":
            assert (hu[grown & lung] > -300).sum() > 0                # touches a vessel
        assert abs(equivalent_diameter(m.sum() * vox) / n.spec.diameter_mm - 1) < 0.35
    return seen


def equivalent_diameter(volume_mm3):
    return (6 * volume_mm3 / np.pi) ** (1 / 3)
