"""DICOM SEG output: written on the real LIDC-IDRI-0001 series and on a small synthetic two-series folder
with an unusual orientation, read back with pydicom and highdicom. The SEG must reference the source
series (Frame of Reference, per-frame source SOP instance at the frame's position) and, re-rasterised
onto the CT pixel grid from the DICOM headers alone, equal the NIfTI mask voxel for voxel. The TID 1500
SR on such a SEG (lungnod_ext.inference.dicom_sr) references each segment and holds the nodule's figures."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from data_prep.errors import InputNotFoundError, SeriesError
from data_prep.masks import sphere_mask
from data_prep.nifti_io import read_nifti
from lungnod_ext.inference.dicom_seg import NoNoduleToEncodeError, read_dicom_seg, write_dicom_seg

LIDC_ROOT = (Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "lidc").resolve()
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


# ---------------------------------------------------------------------------------------------
# Independent readers: what a viewer computes from the DICOM headers (no lungnod code involved)
# ---------------------------------------------------------------------------------------------

def _ct_headers(folder: Path, series_uid: str | None = None) -> dict[str, pydicom.Dataset]:
    """SOPInstanceUID -> CT header, for the CT files under ``folder`` (of one series if given)."""
    out = {}
    for p in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        if ds.Modality == "CT" and (series_uid is None or ds.SeriesInstanceUID == series_uid):
            out[ds.SOPInstanceUID] = ds
    return out


def _pixel_world_lps(ct: pydicom.Dataset) -> np.ndarray:
    """(rows, columns, 3) LPS mm of every pixel centre, by the DICOM formula (PS3.3 C.7.6.2.1.1)."""
    iop = np.array([float(v) for v in ct.ImageOrientationPatient])
    ipp = np.array([float(v) for v in ct.ImagePositionPatient])
    row_spacing, col_spacing = (float(v) for v in ct.PixelSpacing)
    r, c = np.meshgrid(np.arange(int(ct.Rows)), np.arange(int(ct.Columns)), indexing="ij")
    return ipp + (c[..., None] * col_spacing) * iop[:3] + (r[..., None] * row_spacing) * iop[3:]


def _ct_uids_by_position(cts: dict[str, pydicom.Dataset]) -> list[str]:
    """CT SOP instance UIDs sorted along the slice normal (row x column direction)."""
    any_ct = next(iter(cts.values()))
    iop = np.array([float(v) for v in any_ct.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    return sorted(cts, key=lambda uid: float(np.dot([float(v) for v in cts[uid].ImagePositionPatient], normal)))


def _check_references(ds: pydicom.Dataset, cts: dict[str, pydicom.Dataset]) -> None:
    """Same patient/study/frame of reference as the CT; each frame references the CT image at its position,
    with the CT's orientation and pixel spacing."""
    any_ct = next(iter(cts.values()))
    assert ds.SOPClassUID == SEG_STORAGE and ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.FrameOfReferenceUID == any_ct.FrameOfReferenceUID
    assert ds.StudyInstanceUID == any_ct.StudyInstanceUID and ds.PatientID == any_ct.PatientID
    assert ds.SeriesInstanceUID != any_ct.SeriesInstanceUID
    assert [s.SeriesInstanceUID for s in ds.ReferencedSeriesSequence] == [any_ct.SeriesInstanceUID]
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    assert np.allclose(iop, [float(v) for v in any_ct.ImageOrientationPatient], atol=1e-6)
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    assert np.allclose(spacing, [float(v) for v in any_ct.PixelSpacing])
    assert len(ds.PerFrameFunctionalGroupsSequence) == int(ds.NumberOfFrames) >= 1
    for item in ds.PerFrameFunctionalGroupsSequence:
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        ipp = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose([float(v) for v in cts[ref].ImagePositionPatient], ipp, atol=1e-4)


def _segment_codes_and_algorithm(ds: pydicom.Dataset) -> None:
    for s in ds.SegmentSequence:
        cat, typ = s.SegmentedPropertyCategoryCodeSequence[0], s.SegmentedPropertyTypeCodeSequence[0]
        assert (cat.CodingSchemeDesignator, cat.CodeValue, cat.CodeMeaning) == (
            "SCT", "49755003", "Morphologically Abnormal Structure")
        assert (typ.CodingSchemeDesignator, typ.CodeValue, typ.CodeMeaning) == ("SCT", "27925004", "Nodule")
        assert s.SegmentAlgorithmType == "AUTOMATIC" and s.SegmentAlgorithmName == "lungnod"
        alg = s.SegmentationAlgorithmIdentificationSequence[0]
        assert alg.AlgorithmName == "lungnod" and alg.AlgorithmVersion
        assert alg.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"


def _write_ct_series(folder: Path, hu_kyx: np.ndarray, *, origin, row_dir, col_dir, pixel_spacing, slice_step,
                     study_uid, frame_uid, patient_id="SEG-TEST", seed=0) -> str:
    """Classic CT files of one series, slice k at ``origin + k * slice_step``; files named and numbered
    in a shuffled order. Returns the SeriesInstanceUID."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    n = hu_kyx.shape[0]
    order = np.random.default_rng(seed).permutation(n)
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Modality, ds.ImageType = "CT", ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Seg^Test", patient_id, "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyID, ds.StudyDate, ds.StudyTime = "1", "20240101", "120000"
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 2, int(order[k]) + 1, "test"
        ds.ImagePositionPatient = [f"{v:.4f}" for v in np.asarray(origin) + k * np.asarray(slice_step)]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [f"{v}" for v in pixel_spacing]
        ds.SliceThickness = f"{np.linalg.norm(slice_step):.4f}"
        ds.Rows, ds.Columns = hu_kyx.shape[1], hu_kyx.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        ds.PixelData = (hu_kyx[k].astype(np.int32) + 1024).astype("<u2").tobytes()
        pydicom.dcmwrite(folder / f"{int(order[k]):04d}.dcm", ds, enforce_file_format=True)
    return series_uid


# ---------------------------------------------------------------------------------------------
# Real series: LIDC-IDRI-0001
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lidc_seg(request, tmp_path_factory):
    """The consensus instance mask of LIDC-IDRI-0001 (converted by data_prep) written as a SEG.
    Fails (never skips) when the real series is missing."""
    if not (LIDC_ROOT / "LIDC-IDRI-0001").is_dir():
        pytest.fail(f"real LIDC-IDRI data missing at {LIDC_ROOT} (the DICOM SEG test needs it)")
    converted = request.getfixturevalue("lidc_converted")   # session fixture, shared with the other tests
    case = next((converted / "instances").glob("*.nii.gz")).name[: -len(".nii.gz")]
    mask, geometry = read_nifti(converted / "instances" / f"{case}.nii.gz")
    prov = json.loads((converted / "provenance" / f"{case}.json").read_text())
    ids = sorted(int(v) for v in np.unique(mask) if v)
    segments = [{"id": i, "probability": 0.93} for i in ids]
    relabel = np.zeros(int(mask.max()) + 1, np.uint16)
    relabel[ids] = np.arange(1, len(ids) + 1)
    mask = relabel[mask.astype(np.int64)]
    out = tmp_path_factory.mktemp("lidc_seg") / "seg.dcm"
    seconds = []
    for _ in range(2):  # the first call pays imports; report both
        t0 = time.perf_counter()
        write_dicom_seg(mask, geometry, LIDC_ROOT, segments, out, series_uid=prov["series_uid"])
        seconds.append(time.perf_counter() - t0)
    print(f"\nDICOM SEG write, LIDC-IDRI-0001 (133 x 512 x 512, {len(ids)} nodule(s)): "
          f"{seconds[0]:.2f} s first call, {seconds[1]:.2f} s second")
    return {"path": out, "mask": mask, "geometry": geometry, "ids": ids, "seconds": seconds,
            "image": converted / "images" / f"{case}.nii.gz", "series_uid": prov["series_uid"]}


def test_lidc_seg_references_the_source_series(lidc_seg):
    ds = pydicom.dcmread(lidc_seg["path"])
    cts = _ct_headers(LIDC_ROOT / "LIDC-IDRI-0001")
    assert len(cts) == 133
    _check_references(ds, cts)
    _segment_codes_and_algorithm(ds)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == [f"nodule {i} p=0.93" for i in lidc_seg["ids"]]
    assert len(ds.SegmentSequence) == len(lidc_seg["ids"]) == 1   # the nodule all 4 readers contoured
    # one frame per (segment, slice) holding the nodule: z about -125 .. -105 mm
    z_frames = sorted(float(item.PlanePositionSequence[0].ImagePositionPatient[2])
                      for item in ds.PerFrameFunctionalGroupsSequence)
    assert int(ds.NumberOfFrames) == int(np.count_nonzero(lidc_seg["mask"].any(axis=(1, 2)))) == len(z_frames)
    assert -130.0 <= z_frames[0] and z_frames[-1] <= -100.0
    assert lidc_seg["seconds"][1] < 10.0
    assert not [p for p in lidc_seg["path"].parent.iterdir() if p.name != "seg.dcm"]   # no temporary left


def test_lidc_seg_equals_the_nifti_mask_voxel_for_voxel(lidc_seg):
    mask, geometry = lidc_seg["mask"], lidc_seg["geometry"]
    cts = _ct_headers(LIDC_ROOT / "LIDC-IDRI-0001")
    uids = _ct_uids_by_position(cts)       # CT slice order, from the headers alone
    seg = hd.seg.segread(lidc_seg["path"])
    assert seg.number_of_segments == len(lidc_seg["ids"])
    # highdicom re-rasterises the SEG onto the CT images (frames matched by referenced SOP instance)
    combined = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    assert combined.shape == mask.shape
    np.testing.assert_array_equal(combined, mask)
    for n in seg.get_segment_numbers():
        one = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[n])[..., 0]
        np.testing.assert_array_equal(one, (mask == n).astype(one.dtype))
    np.testing.assert_array_equal(read_dicom_seg(lidc_seg["path"], geometry), mask)
    assert int(np.count_nonzero(mask)) > 1000   # a 23 mm nodule at 0.7 x 0.7 x 2.5 mm
    # the grid is the DICOM pixel grid, unflipped: the NIfTI image slice k is the pixel data of the CT
    # image the SEG references for slice k
    image, _ = read_nifti(lidc_seg["image"])
    ds = pydicom.dcmread(lidc_seg["path"])
    for item in ds.PerFrameFunctionalGroupsSequence[:3]:
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = uids.index(ref)
        ct = pydicom.dcmread(cts[ref].filename)
        hu = np.maximum(ct.pixel_array.astype(np.int32) * int(ct.RescaleSlope) + int(ct.RescaleIntercept), -1024)
        np.testing.assert_array_equal(image[k], hu)


# ---------------------------------------------------------------------------------------------
# Synthetic: two series in one folder, the wanted one transposed (rows along x) with a descending normal
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_series(tmp_path_factory):
    """A study folder with two CT series; series A has ImageOrientationPatient (0,1,0, 1,0,0): rows run
    along x, columns along y, normal -z (slice 0 is the top one), pixel spacing 0.9 x 0.6 mm, 2 mm slices.
    Converted by data_prep. Returns a dict of paths / UIDs."""
    from data_prep.convert import ConvertOptions, convert_dicom_root

    root = tmp_path_factory.mktemp("two_series")
    rng = np.random.default_rng(1)
    study, frame = generate_uid(), generate_uid()
    hu_a = rng.integers(-1000, 400, size=(12, 40, 48)).astype(np.int16)
    uid_a = _write_ct_series(root / "dicom" / "study" / "A", hu_a, origin=(-20.0, -30.0, 60.0), row_dir=(0, 1, 0),
                             col_dir=(1, 0, 0), pixel_spacing=(0.9, 0.6), slice_step=(0, 0, -2.0),
                             study_uid=study, frame_uid=frame, seed=1)
    hu_b = rng.integers(-1000, 400, size=(8, 32, 32)).astype(np.int16)
    uid_b = _write_ct_series(root / "dicom" / "study" / "B", hu_b, origin=(-10.0, -10.0, 0.0), row_dir=(1, 0, 0),
                             col_dir=(0, 1, 0), pixel_spacing=(0.8, 0.8), slice_step=(0, 0, 2.5),
                             study_uid=study, frame_uid=frame, seed=2)
    out = root / "converted"
    report = convert_dicom_root(root / "dicom", out, ConvertOptions(progress=False))
    assert len(report.converted) == 2 and not report.failed, report.as_dict()
    case_a = next(p.stem for p in (out / "provenance").glob("*.json")
                  if json.loads(p.read_text())["series_uid"] == uid_a)
    return {"root": root / "dicom", "dir_a": root / "dicom" / "study" / "A", "uid_a": uid_a, "uid_b": uid_b,
            "image_a": out / "images" / f"{case_a}.nii.gz"}


def test_two_nodules_on_a_transposed_series(two_series, tmp_path):
    image, geometry = read_nifti(two_series["image_a"])
    assert geometry.shape == (48, 40, 12)                          # (columns, rows, slices): no transpose
    assert np.allclose(geometry.direction_matrix[:, 2], (0, 0, -1))
    centres = [geometry.voxel_to_world((10.3, 12.7, 3.2)), geometry.voxel_to_world((33.1, 27.4, 8.6))]
    diameters = [5.3, 7.1]
    mask = np.zeros(geometry.shape_zyx, np.uint8)
    for n, (c, d) in enumerate(zip(centres, diameters), start=1):
        mask[sphere_mask(geometry, c, d) > 0] = n
    assert min(int(np.count_nonzero(mask == n)) for n in (1, 2)) > 20
    path = write_dicom_seg(mask, geometry, two_series["root"], [{"id": 7, "probability": 0.912}, {"id": 9}],
                           tmp_path / "out" / "seg.dcm", series_uid=two_series["uid_a"])
    ds = pydicom.dcmread(path)
    cts = _ct_headers(two_series["dir_a"])
    _check_references(ds, cts)
    _segment_codes_and_algorithm(ds)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["nodule 7 p=0.91", "nodule 9"]
    assert [s.TrackingID for s in ds.SegmentSequence] == ["nodule 7", "nodule 9"]
    # expected SEG computed from the CT headers only: pixel centres (DICOM formula) inside each sphere
    uids = _ct_uids_by_position(cts)
    seg = hd.seg.segread(path)
    for n, (c, d) in enumerate(zip(centres, diameters), start=1):
        expected = np.stack([np.linalg.norm(_pixel_world_lps(cts[u]) - c, axis=-1) <= d / 2 for u in uids])
        got = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[n])[..., 0]
        np.testing.assert_array_equal(got, expected.astype(got.dtype))
        np.testing.assert_array_equal(mask == n, expected)
    np.testing.assert_array_equal(read_dicom_seg(path, geometry), mask)
    # and the converted image is the CT pixel data in that same (slice by position, row, column) order
    for k, u in enumerate(uids):
        ct = pydicom.dcmread(cts[u].filename)
        np.testing.assert_array_equal(image[k], ct.pixel_array.astype(np.int32) - 1024)


def test_series_selection(two_series, tmp_path):
    _, geometry = read_nifti(two_series["image_a"])
    mask = np.zeros(geometry.shape_zyx, np.uint8)
    mask[5, 10:14, 20:25] = 1
    with pytest.raises(SeriesError, match="2 CT series"):
        write_dicom_seg(mask, geometry, two_series["root"], [{"id": 1}], tmp_path / "a.dcm")
    with pytest.raises(InputNotFoundError, match="no CT image of series 1.2.3"):
        write_dicom_seg(mask, geometry, two_series["root"], [{"id": 1}], tmp_path / "a.dcm", series_uid="1.2.3")
    with pytest.raises(InputNotFoundError, match="no such file"):
        write_dicom_seg(mask, geometry, tmp_path / "absent", [{"id": 1}], tmp_path / "a.dcm")
    with pytest.raises(SeriesError, match="not on this series' grid"):   # series B: other grid
        write_dicom_seg(mask, geometry, two_series["root"], [{"id": 1}], tmp_path / "a.dcm",
                        series_uid=two_series["uid_b"])
    assert not list(tmp_path.iterdir())
    # a SEG exported next to its CT (a PACS folder) is not taken for a second series
    first = write_dicom_seg(mask, geometry, two_series["root"], [{"id": 1}], two_series["dir_a"] / "seg.dcm",
                            series_uid=two_series["uid_a"])
    try:
        second = write_dicom_seg(mask, geometry, two_series["dir_a"], [{"id": 1}], tmp_path / "b.dcm")
        refs = [pydicom.dcmread(p).ReferencedSeriesSequence[0].SeriesInstanceUID for p in (first, second)]
        assert refs == [two_series["uid_a"]] * 2
    finally:
        os.remove(first)


def test_empty_mask_writes_nothing(two_series, tmp_path):
    _, geometry = read_nifti(two_series["image_a"])
    empty = np.zeros(geometry.shape_zyx, np.uint8)
    with pytest.raises(NoNoduleToEncodeError, match="no nodule"):
        write_dicom_seg(empty, geometry, two_series["root"], [], tmp_path / "empty.dcm", series_uid=two_series["uid_a"])
    assert issubclass(NoNoduleToEncodeError, ValueError)
    assert not list(tmp_path.iterdir())       # neither the file nor a temporary
    one = empty.copy()
    one[2, 3, 4] = 1
    with pytest.raises(ValueError, match=r"segment\(s\) \[2\] are described but have no voxel"):
        write_dicom_seg(one, geometry, two_series["root"], [{"id": 1}, {"id": 2}], tmp_path / "x.dcm",
                        series_uid=two_series["uid_a"])
    with pytest.raises(ValueError, match="segment number 1 but only 0"):
        write_dicom_seg(one, geometry, two_series["root"], [], tmp_path / "x.dcm", series_uid=two_series["uid_a"])
    with pytest.raises(ValueError, match="does not match the geometry"):
        write_dicom_seg(one[:-1], geometry, two_series["root"], [{"id": 1}], tmp_path / "x.dcm")
    assert not list(tmp_path.iterdir())


def test_measurement_report_on_two_segments(two_series, tmp_path):
    """Two segments (named per frame, not in the shared groups): group n references segment n with its
    tracking id and UID; a nodule without figures gets a group without measurements, not invented ones."""
    from lungnod_ext.inference.dicom_sr import write_measurement_report

    image, geometry = read_nifti(two_series["image_a"])
    mask = np.zeros(geometry.shape_zyx, np.uint8)
    for n, (ijk, d) in enumerate((((10.3, 12.7, 3.2), 5.3), ((33.1, 27.4, 8.6), 7.1)), start=1):
        mask[sphere_mask(geometry, geometry.voxel_to_world(ijk), d) > 0] = n
    nodules = [{"id": 7, "probability": 0.91234, "long_axis_mm": 6.1, "short_axis_mm": 4.9,
                "mean_axial_diameter_mm": 5.5, "volume_mm3": 77.77}, {"id": 9}]
    seg_path = write_dicom_seg(mask, geometry, two_series["root"], nodules, tmp_path / "seg.dcm",
                               series_uid=two_series["uid_a"])
    sr_path = write_measurement_report(seg_path, nodules, tmp_path / "sr.dcm")
    seg, sr = pydicom.dcmread(seg_path), hd.sr.srread(sr_path)
    assert sr.SeriesDescription == "lungnod nodule measurements" and sr.StudyInstanceUID == seg.StudyInstanceUID
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["nodule 7", "nodule 9"]
    assert [str(g.tracking_uid) for g in groups] == [str(s.TrackingUID) for s in seg.SegmentSequence]
    for n, g in enumerate(groups, start=1):
        ref = next(i for i in g[0].ContentSequence if i.name.value == "121191").ReferencedSOPSequence[0]
        assert (ref.ReferencedSOPInstanceUID, ref.ReferencedSegmentNumber) == (seg.SOPInstanceUID, n)
        assert g.finding_type.value == "27925004"                      # SNOMED CT Nodule
    first = {m.name.meaning: float(m.value) for m in groups[0].get_measurements()}
    assert first == {"Long axis": 6.1, "Short axis": 4.9, "Diameter": 5.5, "Volume": 77.8,
                     "Nodule probability (lungnod detector score)": 0.9123}
    assert groups[1].get_measurements() == [] and groups[1].get_qualitative_evaluations() == []
    assert groups[0].get_qualitative_evaluations() == []        # no attenuation measured: none invented
    # a part-solid nodule: its attenuation and its solid component's diameter
    part_solid = [{**nodules[0], "attenuation": "part-solid", "solid_mean_axial_diameter_mm": 2.35}, nodules[1]]
    sr = hd.sr.srread(write_measurement_report(seg_path, part_solid, tmp_path / "sr2.dcm"))
    group = sr.content.get_volumetric_roi_measurement_groups()[0]
    assert {m.name.meaning: float(m.value) for m in group.get_measurements()}["Solid component mean axial diameter"] == 2.35
    assert [(q.name.value, q.value.value, q.value.meaning) for q in group.get_qualitative_evaluations()] == [
        ("attenuation", "part-solid", "Part-solid")]
