"""The bad-input catalogue of convert, built from copies of real LIDC-IDRI-0001 slices in tmp folders.

Each case: one clear message naming the file/folder and the problem, nothing half-written.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from data_prep.convert import ConvertOptions, convert_dicom_root
from data_prep.errors import InputNotFoundError, OutputError
from data_prep.nifti_io import read_nifti

FIRST, LAST = 80, 100   # slice k range copied: holds the 4-reader nodule (k 86..93)


@pytest.fixture(scope="module")
def sorted_slices(lidc_series_dir):
    files = sorted(lidc_series_dir.glob("*.dcm"))
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    return [files[i] for i in np.argsort(z)]


def _copy(sorted_slices, dest: Path, ks=range(FIRST, LAST), xml_from=None) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for k in ks:
        out.append(Path(shutil.copy(sorted_slices[k], dest / f"s{k:03d}.dcm")))
    if xml_from is not None:
        shutil.copy(next(xml_from.glob("*.xml")), dest / "read.xml")
    return out


def _edit(path: Path, **changes):
    ds = pydicom.dcmread(path)
    for k, v in changes.items():
        setattr(ds, k, v)
    ds.save_as(path)


def _convert(src, out):
    return convert_dicom_root(src, out, ConvertOptions(progress=False))


def _no_partials(out: Path):
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]


def test_subset_converts_with_nodule(sorted_slices, lidc_series_dir, tmp_path):
    _copy(sorted_slices, tmp_path / "in", xml_from=lidc_series_dir)
    r = _convert(tmp_path / "in", tmp_path / "out")
    assert len(r.converted) == 1 and not r.failed
    prov = json.loads(next((tmp_path / "out" / "provenance").glob("*.json")).read_text())
    assert prov["n_nodules"] == 1 and prov["geometry"]["shape_ijk"] == [512, 512, LAST - FIRST]
    # the XML's marks on slices outside this subset are reported, not silently used
    assert any("not in the series" in w for w in prov["warnings"])


def test_truncated_file(sorted_slices, tmp_path):
    files = _copy(sorted_slices, tmp_path / "in")
    data = files[-1].read_bytes()
    files[-1].write_bytes(data[: len(data) // 2])
    r = _convert(tmp_path / "in", tmp_path / "out")
    assert len(r.converted) == 1  # the other 19 slices still form a volume
    bad = [f for f in r.failed if "truncated" in f["reason"]]
    assert len(bad) == 1 and bad[0]["file"].endswith(files[-1].name)
    _, geom = read_nifti(next((tmp_path / "out" / "images").glob("*.nii.gz")))
    assert geom.shape[2] == LAST - FIRST - 1


def test_garbage_dcm_file(sorted_slices, tmp_path):
    _copy(sorted_slices, tmp_path / "in")
    (tmp_path / "in" / "junk.dcm").write_bytes(b"this is not DICOM" * 100)
    r = _convert(tmp_path / "in", tmp_path / "out")
    assert len(r.converted) == 1
    assert any(f.get("file", "").endswith("junk.dcm") and "not a readable DICOM" in f["reason"] for f in r.failed)


def test_missing_slice_is_an_error(sorted_slices, tmp_path):
    files = _copy(sorted_slices, tmp_path / "in")
    files[7].unlink()
    r = _convert(tmp_path / "in", tmp_path / "out")
    assert not r.converted
    assert len(r.failed) == 1 and "missing slice" in r.failed[0]["reason"] and "gap of 5.00 mm" in r.failed[0]["reason"]
    assert not list((tmp_path / "out").glob("images/*"))
    _no_partials(tmp_path / "out")


def test_duplicated_slice_is_dropped(sorted_slices, tmp_path):
    files = _copy(sorted_slices, tmp_path / "in")
    shutil.copy(files[5], tmp_path / "in" / "copy_of_5.dcm")
    r = _convert(tmp_path / "in", tmp_path / "out")
    assert len(r.converted) == 1 and not r.failed
    prov = json.loads(next((tmp_path / "out" / "provenance").glob("*.json")).read_text())
    assert prov["geometry"]["shape_ijk"][2] == LAST - FIRST
    assert any("duplicate slice" in w for w in prov["warnings"])


def test_different_slices_at_one_position(sorted_slices, tmp_path):
    files = _copy(sorted_slices, tmp_path / "in")
    clash = tmp_path / "in" / "clash.dcm"
    shutil.copy(files[6], clash)
    ds = pydicom.dcmread(clash)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    arr = ds.pixel_array.copy()
    arr[:10, :10] += 1
    ds.PixelData = arr.tobytes()
    ds.save_as(clash)
    r = _convert(tmp_path / "in", tmp_path / "out")
    assert not r.converted and "same position" in r.failed[0]["reason"]


def test_two_series_mixed_in_one_folder(sorted_slices, tmp_path):
    files = _copy(sorted_slices, tmp_path / "in")
    other = pydicom.uid.generate_uid()
    for f in files[10:]:
        _edit(f, SeriesInstanceUID=other, SOPInstanceUID=pydicom.uid.generate_uid())
    r = _convert(tmp_path / "in", tmp_path / "out")
    assert len(r.converted) == 2 and not r.failed
    shapes = sorted(json.loads(p.read_text())["geometry"]["shape_ijk"][2] for p in (tmp_path / "out" / "provenance").glob("*.json"))
    assert shapes == [10, 10]


def test_non_ct_and_scout_are_skipped(sorted_slices, tmp_path):
    files = _copy(sorted_slices, tmp_path / "ct")
    mr = _copy(sorted_slices, tmp_path / "mr", ks=range(20, 25))
    for f in mr:
        _edit(f, Modality="MR", SeriesInstanceUID="1.2.3.4.5.1", SOPInstanceUID=pydicom.uid.generate_uid())
    scout = _copy(sorted_slices, tmp_path / "scout", ks=range(30, 31))
    _edit(scout[0], ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], SeriesInstanceUID="1.2.3.4.5.2",
          SOPInstanceUID=pydicom.uid.generate_uid())
    r = _convert(tmp_path, tmp_path / "out")
    assert len(r.converted) == 1 and not r.failed and len(files) == 20
    reasons = sorted(s["reason"] for s in r.skipped)
    assert any("modality MR, not CT" in s for s in reasons)
    assert any("scout / localizer" in s for s in reasons)


def _stray(sorted_slices, dest: Path, k: int, name: str, **changes) -> Path:
    """A copy of slice k inside ``dest``'s series (same SeriesInstanceUID), made into a stray image."""
    path = Path(shutil.copy(sorted_slices[k], dest / name))
    _edit(path, SOPInstanceUID=pydicom.uid.generate_uid(), **changes)
    return path


def test_localizer_inside_a_series_is_dropped_and_named(sorted_slices, tmp_path):
    _copy(sorted_slices, tmp_path / "in")
    _stray(sorted_slices, tmp_path / "in", 50, "loc.dcm", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
           ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    r = _convert(tmp_path / "in", tmp_path / "out")
    assert len(r.converted) == 1 and not r.failed and not r.skipped
    prov = json.loads(next((tmp_path / "out" / "provenance").glob("*.json")).read_text())
    assert prov["geometry"]["shape_ijk"] == [512, 512, LAST - FIRST]
    dropped = [w for w in prov["warnings"] if w.startswith("dropped")]
    assert dropped == ["dropped 1 image(s) that are not part of the axial stack of 20: loc.dcm (localizer, ImageType "
                       "ORIGINAL\\PRIMARY\\LOCALIZER)"]
    image, _ = read_nifti(next((tmp_path / "out" / "images").glob("*.nii.gz")))
    assert image.shape == (LAST - FIRST, 512, 512)


def test_secondary_capture_inside_a_series_is_dropped(sorted_slices, tmp_path):
    _copy(sorted_slices, tmp_path / "in")
    sc = _stray(sorted_slices, tmp_path / "in", FIRST + 3, "sc.dcm", SOPClassUID="1.2.840.10008.5.1.4.1.1.7",
                ImageType=["DERIVED", "SECONDARY"], Rows=256, Columns=256)
    ds = pydicom.dcmread(sc)
    ds.PixelData = np.zeros((256, 256), np.int16).tobytes()
    ds.save_as(sc)
    r = _convert(tmp_path / "in", tmp_path / "out")
    assert len(r.converted) == 1 and not r.failed
    prov = json.loads(next((tmp_path / "out" / "provenance").glob("*.json")).read_text())
    assert prov["geometry"]["shape_ijk"] == [512, 512, LAST - FIRST]
    assert any(w.startswith("dropped 1 image(s)") and "sc.dcm (secondary capture / dose report)" in w
               for w in prov["warnings"])


def test_a_series_of_mostly_strays_is_not_cut_down(sorted_slices, tmp_path):
    files = _copy(sorted_slices, tmp_path / "in", ks=range(FIRST, FIRST + 4))
    for f in files[:2]:
        _edit(f, Rows=256, Columns=256)
    r = _convert(tmp_path / "in", tmp_path / "out")
    assert not r.converted and len(r.failed) + len(r.skipped) == 1


def test_inconsistent_pixel_spacing(sorted_slices, tmp_path):
    files = _copy(sorted_slices, tmp_path / "in")
    _edit(files[3], PixelSpacing=[0.8, 0.8])
    r = _convert(tmp_path / "in", tmp_path / "out")
    assert not r.converted and "inconsistent PixelSpacing" in r.failed[0]["reason"]


def test_gantry_tilt_is_resampled(sorted_slices, tmp_path, tilt_series):
    """Each slice k is moved down by k rows and its ImagePositionPatient up by as much: the same anatomy
    in world space, stored as a tilted stack. The corrected volume must equal the untilted one."""
    ref_files = _copy(sorted_slices, tmp_path / "ref")
    tilt_files = _copy(sorted_slices, tmp_path / "tilt")
    tilt_series(tilt_files, tilt_deg=15.7)
    r_ref = _convert(tmp_path / "ref", tmp_path / "out_ref")
    r_tilt = _convert(tmp_path / "tilt", tmp_path / "out_tilt")
    assert r_ref.converted and r_tilt.converted and len(ref_files) == 20
    prov = json.loads(next((tmp_path / "out_tilt" / "provenance").glob("*.json")).read_text())
    assert any("gantry tilt" in w for w in prov["warnings"])
    a, ga = read_nifti(next((tmp_path / "out_ref" / "images").glob("*.nii.gz")))
    b, gb = read_nifti(next((tmp_path / "out_tilt" / "images").glob("*.nii.gz")))
    np.testing.assert_allclose(gb.origin, ga.origin, atol=1e-3)
    np.testing.assert_allclose(gb.direction_matrix, np.eye(3), atol=1e-6)
    inner = (slice(None), slice(40, 470), slice(None))   # rows rolled in from the edge differ
    assert np.array_equal(a[inner], b[inner])


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEG2000Lossless"])
def test_compressed_transfer_syntax(sorted_slices, tmp_path, syntax):
    files = _copy(sorted_slices, tmp_path / "plain", ks=range(FIRST, FIRST + 6))
    comp = _copy(sorted_slices, tmp_path / "comp", ks=range(FIRST, FIRST + 6))
    uid = getattr(pydicom.uid, syntax)
    for f in comp:
        ds = pydicom.dcmread(f)
        ds.compress(uid)
        ds.save_as(f)
    assert str(pydicom.dcmread(comp[0], stop_before_pixels=True).file_meta.TransferSyntaxUID) == uid
    _convert(tmp_path / "plain", tmp_path / "o1")
    r = _convert(tmp_path / "comp", tmp_path / "o2")
    assert r.converted and not r.failed and len(files) == 6
    a, _ = read_nifti(next((tmp_path / "o1" / "images").glob("*.nii.gz")))
    b, _ = read_nifti(next((tmp_path / "o2" / "images").glob("*.nii.gz")))
    assert np.array_equal(a, b)


def test_corrupt_rle_slice_fails_its_series_naming_the_file(sorted_slices, tmp_path):
    from pydicom.encaps import encapsulate

    comp = _copy(sorted_slices, tmp_path / "comp", ks=range(FIRST, FIRST + 6))
    for f in comp:
        ds = pydicom.dcmread(f)
        ds.compress(pydicom.uid.RLELossless)
        if f == comp[3]:
            ds.PixelData = encapsulate([b"\x01\x00\x00\x00" + b"\x40\x00\x00\x00" + b"\x00" * 56 + b"\x7f" * 8])
        ds.save_as(f)
    r = _convert(tmp_path / "comp", tmp_path / "out")
    assert not r.converted and len(r.failed) == 1, r.failed
    assert "cannot decode pixel data" in r.failed[0]["reason"] and comp[3].name in r.failed[0]["reason"], r.failed
    assert not list((tmp_path / "out").rglob("*.nii.gz")) and not list((tmp_path / "out").rglob("*.part"))


def test_xml_with_unknown_sop_uids(sorted_slices, lidc_series_dir, tmp_path):
    _copy(sorted_slices, tmp_path / "in")
    text = next(lidc_series_dir.glob("*.xml")).read_text()
    text = text.replace("<imageSOP_UID>1.3.6.1.4.1.14519.5.2.1.6279.6001.", "<imageSOP_UID>9.9.9.")
    text = text.replace("<imageZposition>-", "<imageZposition>-1")   # z no longer matches either
    (tmp_path / "in" / "read.xml").write_text(text)
    r = _convert(tmp_path / "in", tmp_path / "out")
    assert r.converted and r.n_nodules == 0
    prov = json.loads(next((tmp_path / "out" / "provenance").glob("*.json")).read_text())
    assert any("not in the series" in w and "read.xml" in w for w in prov["warnings"])
    lab, _ = read_nifti(tmp_path / "out" / prov["label"])
    assert lab.sum() == 0


def test_xml_for_another_series_is_reported(sorted_slices, lidc_series_dir, tmp_path):
    _copy(sorted_slices, tmp_path / "in")
    text = next(lidc_series_dir.glob("*.xml")).read_text()
    (tmp_path / "in" / "other.xml").write_text(text.replace("179049373636438705059720603192", "1234"))
    r = _convert(tmp_path / "in", tmp_path / "out")
    assert r.converted and r.n_nodules == 0
    assert any("other.xml" in w and "not found" in w for w in r.warnings)


def test_xml_without_contours(sorted_slices, lidc_series_dir, tmp_path):
    import re

    _copy(sorted_slices, tmp_path / "in")
    text = next(lidc_series_dir.glob("*.xml")).read_text()
    text = re.sub(r"<unblindedReadNodule>.*?</unblindedReadNodule>", "", text, flags=re.S)
    (tmp_path / "in" / "read.xml").write_text(text)
    r = _convert(tmp_path / "in", tmp_path / "out")
    prov = json.loads(next((tmp_path / "out" / "provenance").glob("*.json")).read_text())
    assert r.converted and prov["n_nodules"] == 0
    assert any("no nodule contours" in w for w in prov["warnings"])


def test_malformed_xml_fails_the_case(sorted_slices, lidc_series_dir, tmp_path):
    _copy(sorted_slices, tmp_path / "in")
    text = next(lidc_series_dir.glob("*.xml")).read_text()
    (tmp_path / "in" / "read.xml").write_text(text[: len(text) // 2])
    r = _convert(tmp_path / "in", tmp_path / "out")
    assert not r.converted and len(r.failed) == 1
    assert "read.xml" in r.failed[0]["reason"] and "malformed XML" in r.failed[0]["reason"]
    assert not list((tmp_path / "out").glob("images/*"))
    _no_partials(tmp_path / "out")


def test_empty_and_missing_input(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError, match="no DICOM files found"):
        _convert(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(InputNotFoundError, match="no such file"):
        _convert(tmp_path / "nope", tmp_path / "out")


def test_unwritable_output(sorted_slices, tmp_path):
    _copy(sorted_slices, tmp_path / "in", ks=range(FIRST, FIRST + 4))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="not writable"):
        _convert(tmp_path / "in", tmp_path / "afile" / "out")


def test_cli_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    for src in (tmp_path / "empty", tmp_path / "missing"):
        p = subprocess.run([sys.executable, "-m", "data_prep", "convert", str(src), "--out", str(tmp_path / "o")],
                           capture_output=True, text=True)
        assert p.returncode == 2
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(src) in lines[0], p.stderr
        assert "Traceback" not in p.stderr


def test_inputs_are_not_modified(sorted_slices, lidc_series_dir, tmp_path):
    import hashlib

    files = _copy(sorted_slices, tmp_path / "in", xml_from=lidc_series_dir)
    digest = lambda: {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in (tmp_path / "in").iterdir()}  # noqa: E731
    before = digest()
    _convert(tmp_path / "in", tmp_path / "out")
    assert digest() == before and len(files) == 20
