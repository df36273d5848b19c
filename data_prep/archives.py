"""DICOM delivered as an archive (``.zip``, ``.tar``, ``.tar.gz`` / ``.tgz``): unpacked into the run's own
work folder for the conversion and removed afterwards; nothing is written next to the input.

Refused with one line naming the archive and the entry: entries that would land outside the work folder
(absolute paths, ``..``), links and device files, and archives inside the archive (unpack those first).
Extracted files keep the entries' modification times, so re-running on the same archive reuses finished
cases like a folder does.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from data_prep.errors import DataPrepError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
_NESTED_SUFFIXES = ARCHIVE_SUFFIXES + (".gz", ".bz2", ".xz", ".7z", ".rar")


class ArchiveError(DataPrepError):
    """An archive that cannot or must not be unpacked."""


def is_archive(path) -> bool:
    """True for an existing file named like a supported archive."""
    p = Path(path)
    return p.is_file() and p.name.lower().endswith(ARCHIVE_SUFFIXES)


def _safe_member_path(archive: Path, name: str) -> PurePosixPath:
    member = PurePosixPath(name.replace("\\", "/"))
    if member.is_absolute() or ".." in member.parts or (member.parts and member.parts[0].endswith(":")):
        raise ArchiveError(archive, f"entry '{name}' points outside the archive's folder: refused")
    if member.name.lower().endswith(_NESTED_SUFFIXES):
        raise ArchiveError(archive, f"entry '{name}' is an archive inside the archive: unpack it first")
    return member


def _zip_entries(archive: Path, zf: zipfile.ZipFile) -> list[tuple]:
    entries = []
    for info in zf.infolist():
        member = _safe_member_path(archive, info.filename)
        mode = info.external_attr >> 16
        if mode and (mode & 0o170000) not in (0, 0o100000, 0o040000):
            raise ArchiveError(archive, f"entry '{info.filename}' is a link or special file: refused")
        entries.append((member, info.is_dir(), lambda info=info: zf.open(info), time.mktime(info.date_time + (0, 0, -1))))
    return entries


def _tar_entries(archive: Path, tf: tarfile.TarFile) -> list[tuple]:
    entries = []
    for info in tf.getmembers():
        member = _safe_member_path(archive, info.name)
        if not (info.isfile() or info.isdir()):
            raise ArchiveError(archive, f"entry '{info.name}' is a link or special file: refused")
        entries.append((member, info.isdir(), lambda info=info: tf.extractfile(info), float(info.mtime)))
    return entries


def extract_archive(archive, dest) -> Path:
    """Unpack ``archive`` into the new folder ``dest`` (checked entry by entry before anything is written);
    returns ``dest``. Raises :class:`ArchiveError` (one line) for a damaged or refused archive."""
    archive, dest = Path(archive), Path(dest)
    is_zip = archive.name.lower().endswith(".zip")
    try:
        with (zipfile.ZipFile(archive) if is_zip else tarfile.open(archive)) as handle:
            entries = _zip_entries(archive, handle) if is_zip else _tar_entries(archive, handle)
            dest.mkdir(parents=True)
            for member, is_dir, open_entry, mtime in entries:   # (path inside, folder?, opener, seconds)
                target = dest.joinpath(*member.parts)
                if is_dir:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with open_entry() as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                os.utime(target, (mtime, mtime))
    except ArchiveError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise ArchiveError(archive, f"damaged or unreadable archive ({exc})") from None
    return dest


@contextmanager
def unpacked(path, work_dir):
    """``path`` itself for a folder; for an archive, its contents unpacked into ``work_dir/.unpacked-<name>``
    for the duration of the ``with`` block (removed afterwards, also on errors)."""
    path = Path(path)
    if not is_archive(path):
        yield path
        return
    dest = Path(work_dir) / f".unpacked-{path.name}"
    shutil.rmtree(dest, ignore_errors=True)
    try:
        yield extract_archive(path, dest)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
