"""DICOM SEG output on the real LIDC-IDRI-0001 series and the synthetic cohort: read back with pydicom
and highdicom, it references the source series and aligns voxel for voxel with the NIfTI mask."""

from __future__ import annotations

import json
import time

import highdicom as hd
import numpy as np
import pydicom
import pytest

from data_prep.nifti_io import read_nifti
from lungnod_ext.dicom_seg import read_dicom_seg, write_dicom_seg


def _ct_by_uid(folder):
    out = {}
    for p in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        out[ds.SOPInstanceUID] = ds
    return out


def _check(seg_path, mask, geometry, source_dir, n_segments):
    ds = pydicom.dcmread(seg_path)
    cts = _ct_by_uid(source_dir)
    any_ct = next(iter(cts.values()))
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.FrameOfReferenceUID == any_ct.FrameOfReferenceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == any_ct.SeriesInstanceUID
    assert len(ds.SegmentSequence) == n_segments
    assert all(s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Nodule" for s in ds.SegmentSequence)
    for item in ds.PerFrameFunctionalGroupsSequence:
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        ipp = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose([float(v) for v in cts[ref].ImagePositionPatient], ipp, atol=1e-3)
    back = read_dicom_seg(seg_path, geometry)
    np.testing.assert_array_equal(back, mask)
    read = hd.seg.segread(seg_path)
    assert read.number_of_segments == n_segments
    return ds


def test_lidc_seg_aligns_with_the_nifti_mask(lidc_converted, lidc_series_dir, tmp_path):
    inst_path = next((lidc_converted / "instances").glob("*.nii.gz"))
    mask, geometry = read_nifti(inst_path)
    mask = mask.astype(np.uint16)
    assert int(mask.max()) >= 1
    ids = sorted(int(v) for v in np.unique(mask) if v)
    relabel = np.zeros(int(mask.max()) + 1, np.uint16)
    relabel[ids] = np.arange(1, len(ids) + 1)
    mask = relabel[mask]
    prov = json.loads(next((lidc_converted / "provenance").glob("*.json")).read_text())
    t0 = time.perf_counter()
    path = write_dicom_seg(mask, geometry, lidc_series_dir.parent, [{"id": i, "probability": 0.9} for i in ids],
                           tmp_path / "seg.dcm", series_uid=prov["series_uid"])
    elapsed = time.perf_counter() - t0
    ds = _check(path, mask, geometry, lidc_series_dir, len(ids))
    assert int(ds.NumberOfFrames) == int(np.count_nonzero(mask.reshape(mask.shape[0], -1).any(axis=1)))
    assert elapsed < 20, elapsed
    assert not list(tmp_path.glob(".*part*"))


def test_synthetic_two_nodules_and_empty_mask(synth_cohort, synth_converted, tmp_path):
    root, _ = synth_cohort
    inst = sorted((synth_converted / "instances").glob("*.nii.gz"))
    for p in inst:
        mask, geometry = read_nifti(p)
        ids = sorted(int(v) for v in np.unique(mask) if v)
        if len(ids) >= 2:
            break
    else:
        pytest.fail("the synthetic cohort has no case with two nodules")
    relabel = np.zeros(int(mask.max()) + 1, np.uint16)
    relabel[ids] = np.arange(1, len(ids) + 1)
    mask = relabel[mask.astype(np.int64)]
    prov = json.loads((synth_converted / "provenance" / p.name.replace(".nii.gz", ".json")).read_text())
    path = write_dicom_seg(mask, geometry, root / "dicom", [{"id": i} for i in ids], tmp_path / "seg.dcm",
                           series_uid=prov["series_uid"])
    series_dir = next(d for d in (root / "dicom").rglob("*") if d.is_dir() and any(
        pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID == prov["series_uid"] for f in list(d.glob("*.dcm"))[:1]))
    _check(path, mask, geometry, series_dir, len(ids))
    with pytest.raises(ValueError, match="no nodule"):
        write_dicom_seg(np.zeros_like(mask), geometry, root / "dicom", [], tmp_path / "empty.dcm",
                        series_uid=prov["series_uid"])
    assert not (tmp_path / "empty.dcm").exists()
