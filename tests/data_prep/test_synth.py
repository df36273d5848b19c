"""data_prep.synth: a small synthetic cohort written once per module, checked against the in-memory
cases it was generated from (DICOM pixels, geometry, LIDC XML contours, truth/consensus masks)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import UID
from scipy import ndimage

from data_prep import synth
from data_prep.nifti_io import read_nifti
from data_prep.synth import CohortConfig, case_rng, generate_case, write_cohort
from data_prep.coords import Geometry

NS = {"l": "http://www.nih.gov"}
CONFIG = CohortConfig(n_cases=3, seed=3, size_xy=112, pixel_spacing_mm=2.0, slice_spacing_mm=2.5, n_slices=48,
                      diameter_mm=(4.0, 16.0))


SMALL = dict(size_xy=112, pixel_spacing_mm=2.0, slice_spacing_mm=2.5, n_slices=48)


@pytest.fixture(scope="module")
def typed_cases():
    """One in-memory case per nodule type (two nodules each, 8-16 mm)."""
    out = {}
    for t in synth.NODULE_TYPES:
        cfg = CohortConfig(seed=11, nodules_per_case=(2, 2), nodule_types=(t,), diameter_mm=(8.0, 16.0), **SMALL)
        out[t] = generate_case(cfg, 0, case_rng(cfg, 0))
    return out


@pytest.fixture(scope="module")
def cavitary_case():
    cfg = CohortConfig(seed=5, nodules_per_case=(3, 3), nodule_types=("solid",), diameter_mm=(12.0, 18.0),
                       cavitary_fraction=1.0, readers_per_nodule=(2, 4), **SMALL)
    return generate_case(cfg, 0, case_rng(cfg, 0))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    gts = write_cohort(out, CONFIG)
    cases = [generate_case(CONFIG, i, case_rng(CONFIG, i)) for i in range(CONFIG.n_cases)]
    return out, gts, cases


# -------------------------------------------------------------------------------------------------
# Helpers written independently of synth (the reference reading of the files)
# -------------------------------------------------------------------------------------------------

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


# -------------------------------------------------------------------------------------------------
# Contours
# -------------------------------------------------------------------------------------------------

def test_contour_round_trip_on_awkward_shapes():
    shapes = {}
    ring = np.zeros((20, 20), bool)
    yy, xx = np.mgrid[:20, :20]
    r = np.hypot(yy - 10, xx - 10)
    ring[(r <= 7) & (r >= 3)] = True
    shapes["annulus"] = ring
    two = np.zeros((12, 20), bool)
    two[2:6, 2:6] = True
    two[6:10, 12:18] = True
    shapes["two pieces"] = two
    line = np.zeros((8, 8), bool)
    line[3, 1:7] = True
    line[1:3, 2] = True
    shapes["one-pixel lines"] = line
    u = np.zeros((10, 10), bool)
    u[2:8, 2:8] = True
    u[2:7, 4] = False
    shapes["one-pixel notch"] = u
    diag = np.zeros((8, 8), bool)
    diag[1:4, 1:4] = True
    diag[4:7, 4:7] = True
    shapes["touching at a corner"] = diag
    diamond = np.zeros((5, 5), bool)
    diamond[[1, 2, 2, 3], [2, 1, 3, 2]] = True
    shapes["one-pixel hole"] = diamond
    for name, m in shapes.items():
        contours = synth.mask_contours(m)
        assert np.array_equal(fill_rois(m.shape, contours), m), name
        assert np.array_equal(synth.fill_contours(m.shape, contours), m), name
    inc = [c[0] for c in synth.mask_contours(ring)]
    assert sorted(inc) == [False, True]                       # annulus: one region, one hole
    assert [c[0] for c in synth.mask_contours(two)] == [True, True]
    assert [c[0] for c in synth.mask_contours(diamond)] == [True, False]


# -------------------------------------------------------------------------------------------------
# Layout and DICOM
# -------------------------------------------------------------------------------------------------

def test_layout(cohort):
    out, gts, cases = cohort
    assert len(gts) == 3
    assert not (out / ".synth_tmp").exists()
    for i, (gt, case) in enumerate(zip(gts, cases)):
        assert gt["patient_id"] == f"SYN-{i + 1:04d}" == case.patient_id
        series = out / "dicom" / gt["patient_id"] / gt["study_uid"] / gt["series_uid"]
        assert series == out / gt["dicom_dir"]
        assert len(list(series.glob("*.dcm"))) == CONFIG.n_slices
        xmls = list(series.glob("*.xml"))
        assert len(xmls) == 1 and xmls[0] == out / gt["xml_path"]
        assert len(xmls[0].stem) == 3 and xmls[0].stem.isdigit()
        for name in ("truth_mask", "consensus_mask"):
            assert (out / gt[name]).is_file()
        assert json.loads((out / "ground_truth" / f"{gt['series_uid']}.json").read_text()) == gt
    assert len({gt["series_uid"] for gt in gts}) == 3


def test_dicom_headers(cohort):
    out, gts, cases = cohort
    files = sorted((out / gts[0]["dicom_dir"]).glob("*.dcm"))
    dss = [pydicom.dcmread(f) for f in files]
    d = dss[0]
    assert d.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert d.file_meta.MediaStorageSOPClassUID == d.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert d.Modality == "CT" and d.Manufacturer == "lungnod-synth"
    assert list(d.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert [float(v) for v in d.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert (d.Rows, d.Columns) == (112, 112) and [float(v) for v in d.PixelSpacing] == [2.0, 2.0]
    assert float(d.SliceThickness) == float(d.SpacingBetweenSlices) == 2.5
    assert (d.BitsAllocated, d.BitsStored, d.HighBit, d.PixelRepresentation) == (16, 12, 11, 0)
    assert d.PhotometricInterpretation == "MONOCHROME2"
    assert int(d.RescaleIntercept) == -1024 and int(d.RescaleSlope) == 1
    assert d.PatientID == "SYN-0001"
    assert (d.StudyInstanceUID, d.SeriesInstanceUID) == (gts[0]["study_uid"], gts[0]["series_uid"])
    assert float(d.KVP) == 120 and "synth" in d.SeriesDescription
    uids = [x.SOPInstanceUID for x in dss]
    assert len(set(uids)) == len(uids)
    assert all(UID(u).is_valid for u in uids + [d.StudyInstanceUID, d.FrameOfReferenceUID])
    assert len({x.FrameOfReferenceUID for x in dss}) == 1
    z = np.array([float(x.ImagePositionPatient[2]) for x in dss])
    inst = np.array([int(x.InstanceNumber) for x in dss])
    assert sorted(inst) == list(range(1, 49))
    by_inst = z[np.argsort(inst)]
    assert np.all(np.diff(by_inst) < 0)                      # InstanceNumber 1 = top slice, counting down
    assert not np.all(np.diff(z) > 0) and not np.all(np.diff(z) < 0)   # file names do not follow slice order
    assert np.allclose(np.diff(np.sort(z)), 2.5)


def test_dicom_pixels_and_geometry_match_the_case(cohort):
    out, gts, cases = cohort
    for gt, case in zip(gts, cases):
        hu, geom, _, _ = read_series(out / gt["dicom_dir"])
        assert np.array_equal(hu, case.hu_zyx)               # also: generation is deterministic
        g = gt["geometry"]
        assert np.allclose(geom.origin, g["origin_lps"], atol=1e-4) and np.allclose(geom.spacing, g["spacing"])
        assert list(geom.shape) == g["shape"]
        for name in ("truth_mask", "consensus_mask"):
            arr, ng = read_nifti(out / gt[name])
            assert arr.dtype == np.uint16 and arr.shape == hu.shape
            assert np.allclose(ng.affine_lps(), geom.affine_lps(), atol=1e-4)


def test_sitk_reads_the_series(cohort):
    import SimpleITK as sitk

    out, gts, cases = cohort
    series = out / gts[1]["dicom_dir"]
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(series))
    reader.SetFileNames(names)
    img = reader.Execute()
    arr = sitk.GetArrayFromImage(img)
    assert np.array_equal(arr, cases[1].hu_zyx)
    assert np.allclose(img.GetOrigin(), gts[1]["geometry"]["origin_lps"], atol=1e-4)


# -------------------------------------------------------------------------------------------------
# Anatomy and nodules
# -------------------------------------------------------------------------------------------------

def test_anatomy_intensities(cohort):
    _, _, cases = cohort
    for case in cases:
        hu, lung = case.hu_zyx.astype(float), case.lung_mask_zyx
        nz = hu.shape[0]
        assert 0.3e6 < lung.sum() * case.geometry.voxel_volume_mm3 < 5e6     # 0.3 - 5 litres (a small chest)
        nod = case.truth_instance_mask() > 0
        parenchyma = lung & ~nod & (hu < -600)
        assert -900 < hu[parenchyma].mean() < -800 and 25 < hu[parenchyma].std() < 70
        assert (lung & (hu > -200)).sum() > 0.01 * lung.sum()                   # vessels
        assert abs(hu[:, :3, :3].mean() + 1000) < 10                           # outside air
        assert (hu > 400).sum() > 0.002 * hu.size                               # ribs / spine
        centre = hu[:, 40:72, 40:72]
        assert (centre > 0).mean() > 0.3                                       # mediastinum soft tissue
        # Both lungs: left and right halves of the lung mask are of similar size.
        half = lung.shape[2] // 2
        left, right = lung[:, :, :half].sum(), lung[:, :, half:].sum()
        assert 0.5 < left / right < 2
        # Trachea: air (< -900 HU) enclosed by the body on the top slice, away from the lungs.
        top = hu[nz - 1] < -900
        lab, n = ndimage.label(top)
        border = set(np.unique(np.r_[lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        inner = [k for k in range(1, n + 1) if k not in border and (lab == k).sum() >= 4]
        assert inner and not lung[nz - 1][np.isin(lab, inner)].all()


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


def test_nodules_of_each_type(typed_cases):
    for t, case in typed_cases.items():
        seen = check_nodules(case)
        assert seen.count(t) >= 1, (t, seen)


def test_cohort_nodules(cohort):
    _, gts, cases = cohort
    for gt, case in zip(gts, cases):
        check_nodules(case)
        truth = case.truth_instance_mask()
        for n in gt["nodules"]:
            m = truth == n["id"]
            assert n["n_voxels"] == m.sum() and np.isclose(n["volume_mm3"], m.sum() * 10.0)   # 2 x 2 x 2.5 mm
            assert CONFIG.diameter_mm[0] * 0.99 <= n["diameter_mm"] <= CONFIG.diameter_mm[1] * 1.01
            kk, jj, ii = np.nonzero(m)
            assert np.allclose(n["centre_voxel"], [ii.mean(), jj.mean(), kk.mean()])
            assert np.allclose(n["centre_lps"], case.geometry.voxel_to_world(n["centre_voxel"]))


def test_cohort_has_empty_and_multi_nodule_cases(cohort):
    _, gts, _ = cohort
    counts = [gt["n_nodules"] for gt in gts]
    assert 0 in counts and max(counts) >= 2
    default = [synth.planned_nodule_count(CohortConfig(), i) for i in range(3)]
    assert 0 in default and max(default) >= 2


# -------------------------------------------------------------------------------------------------
# Readers, XML, consensus
# -------------------------------------------------------------------------------------------------

def test_xml_format_and_reader_masks_round_trip(cohort):
    out, gts, cases = cohort
    n_checked = 0
    for gt, case in zip(gts, cases):
        _, geom, sop_to_k, dss = read_series(out / gt["dicom_dir"])
        z_of = {k: float(d.ImagePositionPatient[2]) for k, d in enumerate(dss)}
        root, reads = parse_reads(out / gt["xml_path"], sop_to_k)
        header = root.find("l:ResponseHeader", NS)
        assert root.tag == "{http://www.nih.gov}LidcReadMessage"
        assert header.find("l:SeriesInstanceUid", NS).text == gt["series_uid"]
        assert header.find("l:StudyInstanceUID", NS).text == gt["study_uid"]
        assert list(reads) == gt["readers"] and len(gt["readers"]) == 4
        shape = case.hu_zyx.shape
        for reader, r in reads.items():
            by_id = {m["id"]: m for m in r["marks"]}
            assert len(by_id) == len(r["marks"])
            for mark in r["marks"]:
                for k, z, _, pts in mark["rois"]:
                    assert abs(z - z_of[k]) < 1e-4
                    assert all(0 <= x < shape[2] and 0 <= y < shape[1] for x, y in pts)
            for nod, n_gt in zip(case.nodules, gt["nodules"]):
                if reader not in nod.reader_masks:
                    assert reader not in n_gt["reader_nodule_ids"]
                    continue
                mark = by_id[n_gt["reader_nodule_ids"][reader]]
                assert set(mark["chars"]) == {"subtlety", "internalStructure", "calcification", "sphericity", "margin",
                                              "lobulation", "spiculation", "texture", "malignancy"}
                assert mark["chars"]["malignancy"] == n_gt["malignancy"][reader]
                expected = full(nod.reader_masks[reader], shape)
                rebuilt = rebuild_mark(mark, shape)
                for k in range(shape[0]):
                    assert np.array_equal(rebuilt[k], expected[k]), (reader, n_gt["id"], k)
                assert any(len(pts) > 1 for _, _, inc, pts in mark["rois"] if inc)
                n_checked += 1
            for s in gt["small_nodules"]:
                if reader in s["reader_ids"]:
                    mark = by_id[s["reader_mark_ids"][reader]]
                    assert mark["chars"] is None and len(mark["rois"]) == 1 and len(mark["rois"][0][3]) == 1
                    p = s["reader_points"][reader]
                    assert mark["rois"][0][0] == p["slice"] and mark["rois"][0][3][0] == (p["column"], p["row"])
            nn = {m["id"]: m for m in r["non"]}
            for s in gt["non_nodules"]:
                if reader in s["reader_ids"]:
                    m = nn[s["reader_mark_ids"][reader]]
                    p = s["reader_points"][reader]
                    assert (m["k"], m["xy"]) == (p["slice"], (p["column"], p["row"]))
                    assert abs(m["z"] - z_of[m["k"]]) < 1e-4
        for n_gt in gt["nodules"]:
            ids = list(n_gt["reader_nodule_ids"].values())
            assert len(set(ids)) == len(ids) == n_gt["n_readers"]           # readers use their own IDs
    assert n_checked >= 3


def test_cavities_give_exclusion_contours_that_round_trip(cavitary_case, tmp_path):
    case = cavitary_case
    xml = tmp_path / "001.xml"
    xml.write_text(synth.lidc_xml_text(case))
    _, reads = parse_reads(xml, {u: k for k, u in enumerate(case.sop_uids)})
    shape = case.hu_zyx.shape
    n_false = 0
    for nod in case.nodules:
        assert nod.spec.cavity_fraction > 0
        t = full(nod.truth, shape)
        filled = np.stack([ndimage.binary_fill_holes(t[k]) for k in range(shape[0])])
        cavity = filled & ~t
        assert cavity.sum() > 0 and (case.hu_zyx[cavity] < -700).mean() > 0.8     # air, not nodule
        for reader, rm in nod.reader_masks.items():
            mark = next(m for m in reads[reader]["marks"] if m["id"] == nod.reader_nodule_ids[reader])
            assert mark["chars"]["internalStructure"] == 4
            n_false += sum(not inc for _, _, inc, _ in mark["rois"])
            assert np.array_equal(rebuild_mark(mark, shape), full(rm, shape))
    assert n_false >= 3


def test_consensus_and_truth_masks(cohort):
    """The consensus NIfTI equals the >= 50 % vote of the masks read back from the XML."""
    out, gts, cases = cohort
    for gt, case in zip(gts, cases):
        _, _, sop_to_k, _ = read_series(out / gt["dicom_dir"])
        _, reads = parse_reads(out / gt["xml_path"], sop_to_k)
        shape = case.hu_zyx.shape
        truth, _ = read_nifti(out / gt["truth_mask"])
        cons, _ = read_nifti(out / gt["consensus_mask"])
        assert np.array_equal(truth, case.truth_instance_mask())
        assert set(np.unique(truth)) == set(range(gt["n_nodules"] + 1))
        expected = np.zeros(shape, np.uint16)
        for n in gt["nodules"]:
            votes = np.zeros(shape, np.int32)
            for reader, mid in n["reader_nodule_ids"].items():
                mark = next(m for m in reads[reader]["marks"] if m["id"] == mid)
                votes += rebuild_mark(mark, shape)
            expected[votes >= 0.5 * n["n_readers"]] = n["id"]
            t, c = truth == n["id"], cons == n["id"]
            d = 2 * (t & c).sum() / (t.sum() + c.sum())
            assert np.isclose(d, n["dice_consensus_truth"], atol=1e-6)
            if n["diameter_mm"] >= 6:
                assert d > 0.95, n
        assert np.array_equal(cons, expected)


# -------------------------------------------------------------------------------------------------
# Determinism, resume, atomic writes, config
# -------------------------------------------------------------------------------------------------

def test_uids_are_deterministic_and_seed_dependent():
    a = synth.case_uids(CONFIG, 0)
    assert a == synth.case_uids(CONFIG, 0)
    assert synth.case_uids(CohortConfig(**{**CONFIG.__dict__, "n_cases": 9}), 0) == a     # cohort size irrelevant
    b = synth.case_uids(CohortConfig(**{**CONFIG.__dict__, "seed": 4}), 0)
    assert a["series"] != b["series"] and a["series"] != synth.case_uids(CONFIG, 1)["series"]
    assert synth.sop_uid_for(CONFIG, 0, 5) == synth.sop_uid_for(CONFIG, 0, 5) != synth.sop_uid_for(CONFIG, 0, 6)


def test_rerun_reuses_complete_cases(cohort):
    out, gts, _ = cohort
    stamp = {p: p.stat().st_mtime_ns for p in (out / "ground_truth").iterdir()}
    again = write_cohort(out, CONFIG)
    assert again == gts
    assert {p: p.stat().st_mtime_ns for p in (out / "ground_truth").iterdir()} == stamp


def test_failed_write_leaves_no_partial_case(tmp_path, monkeypatch):
    cfg = CohortConfig(**{**CONFIG.__dict__, "n_cases": 1, "n_slices": 24})
    stale = tmp_path / ".synth_tmp" / "SYN-0001.old.part"
    stale.mkdir(parents=True)                             # left by a killed run
    real = pydicom.dcmwrite
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(synth.pydicom, "dcmwrite", failing)
    with pytest.raises(OSError):
        write_cohort(tmp_path, cfg)
    assert not stale.exists()
    assert list((tmp_path / "dicom").iterdir()) == [] and list((tmp_path / "ground_truth").iterdir()) == []
    assert not any((tmp_path / ".synth_tmp").iterdir())
    monkeypatch.setattr(synth.pydicom, "dcmwrite", real)
    gts = write_cohort(tmp_path, cfg)
    assert len(list((tmp_path / gts[0]["dicom_dir"]).glob("*.dcm"))) == 24
    assert not (tmp_path / ".synth_tmp").exists()


def test_config_validation():
    with pytest.raises(ValueError, match="nodule_types"):
        CohortConfig(nodule_types=("cavity",)).validate()
    with pytest.raises(ValueError, match="diameter_mm"):
        CohortConfig(diameter_mm=(2.0, 10.0)).validate()
    with pytest.raises(ValueError, match="readers_per_nodule"):
        CohortConfig(readers_per_nodule=(0, 4)).validate()
    with pytest.raises(ValueError, match="cavitary_fraction"):
        CohortConfig(cavitary_fraction=2.0).validate()


def test_nodule_spec_volume_matches_diameter():
    rng = np.random.default_rng(1)
    geom = Geometry((0.0, 0.0, 0.0), (0.5, 0.5, 0.5), shape=(80, 80, 80))
    for t in synth.NODULE_TYPES:
        spec = synth.random_nodule_spec(rng, t, 20.0)
        got = synth._crop_fields(spec, (20.0, 20.0, 20.0), geom, 1.0)
        assert got is not None
        _, rn, surface = got
        volume = (rn <= surface).sum() * 0.125
        assert abs(volume / (np.pi / 6 * 20.0 ** 3) - 1) < 0.03, t


def test_parallel_write_equals_serial(cohort, tmp_path):
    out, gts, _ = cohort
    cfg = CohortConfig(**{**CONFIG.__dict__, "n_cases": 2})
    parallel = write_cohort(tmp_path, cfg, workers=2)

    def same(gt):                                        # the recorded config differs only in n_cases
        return {**gt, "generator": {**gt["generator"], "config": {**gt["generator"]["config"], "n_cases": None}}}

    assert [same(g) for g in parallel] == [same(g) for g in gts[:2]]
    for gt in parallel:
        a = sorted((tmp_path / gt["dicom_dir"]).iterdir())
        b = sorted((out / gt["dicom_dir"]).iterdir())
        assert [p.name for p in a] == [p.name for p in b]
        assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
