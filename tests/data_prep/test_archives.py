"""DICOM in a .zip / .tar / .tar.gz converts like the folder it holds; unsafe archives are refused in one line.

Built from 20 real LIDC-IDRI-0001 slices (the 4-reader nodule) and their XML, copied to tmp folders.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

from data_prep.archives import ArchiveError, extract_archive
from data_prep.convert import ConvertOptions, convert_dicom_root
from lungnod_ext.data.inputs import resolve_inputs

FIRST, LAST = 80, 100


@pytest.fixture(scope="module")
def slices(lidc_series_dir):
    files = sorted(lidc_series_dir.glob("*.dcm"))
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    chosen = [files[i] for i in np.argsort(z)[FIRST:LAST]]
    return chosen + [next(lidc_series_dir.glob("*.xml"))]


def _zip(path: Path, members: dict[str, Path | bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, src in members.items():
            zf.writestr(name, src) if isinstance(src, bytes) else zf.write(src, name)
    return path


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_archive_converts_like_its_folder_and_leaves_nothing_behind(slices, tmp_path, kind):
    src = tmp_path / "in"
    src.mkdir()
    archive = src / f"study.{kind}"
    if kind == "zip":
        _zip(archive, {f"PACS export/series 1/{p.name}": p for p in slices})
    else:
        with tarfile.open(archive, "w:gz" if kind.endswith("gz") else "w") as tf:
            for p in slices:
                tf.add(p, f"export/{p.name}")
    before = _listing(src)
    r = convert_dicom_root(archive, tmp_path / "out", ConvertOptions(progress=False))
    assert len(r.converted) == 1 and not r.failed
    prov = json.loads(next((tmp_path / "out" / "provenance").glob("*.json")).read_text())
    assert prov["n_nodules"] == 1 and prov["geometry"]["shape_ijk"] == [512, 512, LAST - FIRST]
    assert _listing(src) == before                                         # nothing next to the input
    assert not list((tmp_path / "out").glob(".unpacked-*"))                # the unpacked copy is gone
    again = convert_dicom_root(archive, tmp_path / "out", ConvertOptions(progress=False))
    assert again.reused == r.converted and not again.converted             # same archive: finished case reused


def test_lungnod_inputs_take_an_archive(slices, tmp_path):
    archive = _zip(tmp_path / "scan.zip", {p.name: p for p in slices})
    items = resolve_inputs(archive, tmp_path / "work", check=False)
    assert len(items) == 1 and Path(items[0]["image"]).is_file()
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["conversion_report.json", "images", "instances",
                                                                     "labels", "nodules.csv", "provenance",
                                                                     "small_marks.csv"]


@pytest.mark.parametrize("name, problem", [("../evil.dcm", "points outside the archive's folder: refused"),
                                           ("/etc/evil.dcm", "points outside the archive's folder: refused"),
                                           ("inner/more.zip", "is an archive inside the archive: unpack it first"),
                                           ("inner/more.tar.gz", "is an archive inside the archive: unpack it first")])
def test_unsafe_entries_are_refused_before_anything_is_written(slices, tmp_path, name, problem):
    archive = _zip(tmp_path / "bad.zip", {slices[0].name: slices[0], name: b"x"})
    with pytest.raises(ArchiveError) as exc:
        extract_archive(archive, tmp_path / "dest")
    assert str(exc.value) == f"{archive}: entry '{name}' {problem}"
    assert not (tmp_path / "dest").exists() and not (tmp_path.parent / "evil.dcm").exists()


def test_tar_links_are_refused(slices, tmp_path):
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(slices[0], slices[0].name)
        link = tarfile.TarInfo("shadow.dcm")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    with pytest.raises(ArchiveError, match="entry 'shadow.dcm' is a link or special file: refused"):
        extract_archive(archive, tmp_path / "dest")


def test_cli_one_line_for_a_damaged_archive(tmp_path):
    bad = tmp_path / "broken.zip"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    r = subprocess.run([sys.executable, "-m", "data_prep", "convert", str(bad), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: damaged or unreadable archive")
    assert not list((tmp_path / "out").glob(".unpacked-*"))
