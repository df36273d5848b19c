"""The report's notes about the scan itself: a thick-slice scan (slices > 3 mm apart) gets one sentence
in summary.json, report.html and the terminal; thinner scans get none."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from lungnod_ext.apps.pipeline import THICK_SLICE_MM, _html_report, scan_notes


def _nifti(path, slice_mm):
    affine = np.diag([-0.7, -0.7, slice_mm, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), affine), str(path))
    return path


def test_thick_slices_get_a_note_thin_ones_none(tmp_path):
    assert THICK_SLICE_MM == 3.0
    assert scan_notes(_nifti(tmp_path / "a.nii.gz", 2.5)) == []
    assert scan_notes(_nifti(tmp_path / "b.nii.gz", 3.0)) == []
    notes = scan_notes(_nifti(tmp_path / "c.nii.gz", 5.0))
    assert len(notes) == 1 and notes[0].startswith("slices 5.0 mm apart: nodules under about 6 mm may be missed")
    assert "thin-slice series" in notes[0]


def test_the_html_report_shows_the_note():
    case = {"case": "c", "source": "c.nii.gz", "n_candidates": 0, "n_nodules": 0, "nodules": [], "overlays": [],
            "notes": ["slices 5.0 mm apart: <b>x</b>"]}
    page = _html_report({"cases": [case], "seconds": {"total": 1.0}, "probability_threshold": 0.5,
                         "classifier": True, "peak_rss_mb": 100.0})
    assert "<p class='note'>Note: slices 5.0 mm apart: &lt;b&gt;x&lt;/b&gt;</p>" in page
