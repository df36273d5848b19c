"""What the report says about the scan itself: its grid (voxels and mm, from the NIfTI header), and a note
for a thick-slice scan (slices > 3 mm apart) in summary.json, report.html and the terminal; none for thinner
scans."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from lungnod_ext.apps.pipeline import THICK_SLICE_MM, _html_report, scan_geometry, scan_notes, scan_text


def _nifti(path, slice_mm):
    affine = np.diag([-0.7, -0.7, slice_mm, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), affine), str(path))
    return path


def test_thick_slices_get_a_note_thin_ones_none(tmp_path):
    assert THICK_SLICE_MM == 3.0
    scan = scan_geometry(_nifti(tmp_path / "a.nii.gz", 2.5))
    assert scan == {"shape": [8, 8, 4], "spacing_mm": [0.7, 0.7, 2.5]}
    assert scan_text(scan) == "8 x 8 x 4 voxels of 0.70 x 0.70 x 2.50 mm"
    assert scan_notes(scan) == []
    assert scan_notes(scan_geometry(_nifti(tmp_path / "b.nii.gz", 3.0))) == []
    notes = scan_notes(scan_geometry(_nifti(tmp_path / "c.nii.gz", 5.0)))
    assert len(notes) == 1 and notes[0].startswith("slices 5.0 mm apart: nodules under about 6 mm may be missed")
    assert "thin-slice series" in notes[0]


def test_the_html_report_shows_the_note():
    case = {"case": "c", "source": "c.nii.gz", "n_candidates": 0, "n_nodules": 0, "nodules": [], "overlays": [],
            "notes": ["slices 5.0 mm apart: <b>x</b>"], "scan": {"shape": [8, 8, 4], "spacing_mm": [0.7, 0.7, 5.0]}}
    page = _html_report({"cases": [case], "seconds": {"total": 1.0}, "probability_threshold": 0.5,
                         "classifier": True, "peak_rss_mb": 100.0})
    assert "<p class='note'>Note: slices 5.0 mm apart: &lt;b&gt;x&lt;/b&gt;</p>" in page
    assert "; 8 x 8 x 4 voxels of 0.70 x 0.70 x 5.00 mm</p>" in page


def test_a_sharp_reconstruction_kernel_gets_a_note_a_soft_one_none(tmp_path):
    """A DICOM series' kernel (data_prep provenance ``reconstruction``) is named with the grid; a sharp one adds
    a note that says what it costs and what to use instead, beside the thick-slice note when both apply."""
    scan = scan_geometry(_nifti(tmp_path / "a.nii.gz", 2.5))
    soft = {**scan, "reconstruction": {"manufacturer": "SIEMENS", "convolution_kernel": "B30f", "sharp_kernel": False}}
    assert scan_notes(soft) == []
    assert scan_text(soft) == "8 x 8 x 4 voxels of 0.70 x 0.70 x 2.50 mm, kernel B30f (SIEMENS)"
    sharp = {**scan, "reconstruction": {"manufacturer": "SIEMENS", "convolution_kernel": "B70f", "sharp_kernel": True}}
    (note,) = scan_notes(sharp)
    assert note.startswith("reconstructed with a sharp kernel (SIEMENS B70f): the models learned soft-kernel scans")
    assert note.endswith("use the study's soft-kernel (standard, body) series if it has one")
    thick = {**scan_geometry(_nifti(tmp_path / "b.nii.gz", 5.0)), "reconstruction": sharp["reconstruction"]}
    assert [n.split(":")[0] for n in scan_notes(thick)] == ["slices 5.0 mm apart",
                                                            "reconstructed with a sharp kernel (SIEMENS B70f)"]
    unnamed = {**scan, "reconstruction": {"manufacturer": "", "convolution_kernel": "", "sharp_kernel": False}}
    assert scan_text(unnamed) == "8 x 8 x 4 voxels of 0.70 x 0.70 x 2.50 mm"
