"""A DICOM series' slice thickness (SliceThickness) reaches inference: data_prep's provenance records it, the
datalist items carry it (``slice_thickness_mm``), a datalist JSON may give it, and the report names an
overlapping reconstruction's thickness. 20 slices of the real LIDC-IDRI-0001 series (2.5 mm apart), copied and
relabelled."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from data_prep.errors import InputNotFoundError
from lungnod_ext.apps.pipeline import scan_notes, scan_text
from lungnod_ext.data.inputs import resolve_inputs


def _series(lidc_series_dir: Path, dest: Path, thickness: str | None, n: int = 20) -> Path:
    """``n`` consecutive slices of LIDC-IDRI-0001 copied to ``dest`` with SliceThickness set to ``thickness``
    (None: the tag removed)."""
    files = sorted(lidc_series_dir.glob("*.dcm"))
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    dest.mkdir(parents=True)
    for k, i in enumerate(np.argsort(z)[60:60 + n]):
        ds = pydicom.dcmread(files[i])
        if thickness is None:
            del ds.SliceThickness
        else:
            ds.SliceThickness = thickness
        ds.save_as(dest / f"s{k:03d}.dcm")
    return dest


def test_an_overlapping_series_thickness_reaches_the_datalist_and_the_report(lidc_series_dir, tmp_path):
    """5 mm slices every 2.5 mm: provenance ``reconstruction.slice_thickness_mm`` 5.0, the datalist item 5.0
    (converted here, or the conversion's folder given again), and the report's grid and thick-slice note."""
    src = _series(lidc_series_dir, tmp_path / "dicom", "5.0")
    (item,) = resolve_inputs(src, tmp_path / "work")
    assert item["slice_thickness_mm"] == 5.0
    case = Path(item["image"]).name[:-len(".nii.gz")]
    recon = json.loads((tmp_path / "work" / "provenance" / f"{case}.json").read_text())["reconstruction"]
    assert recon == {"manufacturer": "GE MEDICAL SYSTEMS", "convolution_kernel": "STANDARD", "sharp_kernel": False,
                     "slice_thickness_mm": 5.0}
    assert resolve_inputs(tmp_path / "work", tmp_path / "unused") == [item]       # a convert output as input
    assert resolve_inputs(item["image"], tmp_path / "unused") == [item]            # one of its images
    scan = {"shape": [512, 512, 20], "spacing_mm": [0.703, 0.703, 2.5], "reconstruction": recon}
    assert scan_text(scan) == ("512 x 512 x 20 voxels of 0.70 x 0.70 x 2.50 mm, slices 5.00 mm thick, "
                               "kernel STANDARD (GE MEDICAL SYSTEMS)")
    (note,) = scan_notes(scan)
    assert note.startswith("slices 5.0 mm thick (2.5 mm apart): nodules under about 6 mm may be missed")
    # thickness = spacing: the grid as before, no note
    same = {**scan, "reconstruction": {**recon, "slice_thickness_mm": 2.5}}
    assert scan_text(same) == "512 x 512 x 20 voxels of 0.70 x 0.70 x 2.50 mm, kernel STANDARD (GE MEDICAL SYSTEMS)"
    assert scan_notes(same) == []


def test_a_series_without_slice_thickness_gives_none(lidc_series_dir, tmp_path):
    """No SliceThickness (or the plain NIfTI a user brings): no ``slice_thickness_mm``; the dot filter then
    takes the slice spacing."""
    src = _series(lidc_series_dir, tmp_path / "dicom", None)
    (item,) = resolve_inputs(src, tmp_path / "work")
    assert set(item) == {"image"}
    case = Path(item["image"]).name[:-len(".nii.gz")]
    recon = json.loads((tmp_path / "work" / "provenance" / f"{case}.json").read_text())["reconstruction"]
    assert recon["slice_thickness_mm"] is None
    plain = tmp_path / "plain.nii.gz"
    shutil.copy(item["image"], plain)
    assert resolve_inputs(plain, tmp_path / "unused") == [{"image": str(plain.resolve())}]


def test_a_datalist_entry_may_give_the_thickness_and_a_bad_one_stops(lidc_series_dir, tmp_path):
    src = _series(lidc_series_dir, tmp_path / "dicom", "2.5")
    (item,) = resolve_inputs(src, tmp_path / "work")
    assert item["slice_thickness_mm"] == 2.5
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"testing": [{"image": item["image"], "slice_thickness_mm": 3.75}]}))
    assert resolve_inputs(datalist, tmp_path / "unused") == [{**item, "slice_thickness_mm": 3.75}]
    datalist.write_text(json.dumps({"testing": [item["image"]]}))                # the provenance's
    assert resolve_inputs(datalist, tmp_path / "unused") == [item]
    for bad in (0, -1.25, "thick", True):
        datalist.write_text(json.dumps({"testing": [{"image": item["image"], "slice_thickness_mm": bad}]}))
        with pytest.raises(InputNotFoundError) as exc:
            resolve_inputs(datalist, tmp_path / "unused")
        assert str(exc.value) == (f"{datalist}: entry {item['image']!r}: slice_thickness_mm must be a slice "
                                  f"thickness in mm > 0 (or left out), got {bad!r}")


def test_a_dcm2niix_sidecar_gives_the_thickness(tmp_path):
    """A NIfTI converted by dcm2niix comes with a BIDS JSON sidecar of the same name: its ``SliceThickness``
    (mm) goes on the item; a sidecar that does not say, or is no JSON object, adds nothing and stops nothing."""
    import nibabel as nib

    hu = np.full((64, 64, 24), -800, np.int16)
    image = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.diag([0.7, 0.7, 1.25, 1.0])), str(image))
    sidecar = tmp_path / "scan.json"
    sidecar.write_text(json.dumps({"Modality": "CT", "SliceThickness": 2.5, "SpacingBetweenSlices": 1.25}))
    expected = {"image": str(image.resolve()), "slice_thickness_mm": 2.5}
    assert resolve_inputs(image, tmp_path / "unused", check=False) == [expected]
    assert resolve_inputs(tmp_path, tmp_path / "unused", check=False) == [expected]     # a folder of NIfTI
    for text in ('{"Modality": "CT"}', "[2.5]", "{not json", '{"SliceThickness": "n/a"}'):
        sidecar.write_text(text)
        assert resolve_inputs(image, tmp_path / "unused", check=False) == [{"image": str(image.resolve())}]
