"""NIfTI writing (fast, atomic) and reading, with the geometry in :class:`data_prep.coords.Geometry`.

Writing compresses with ISA-L (``isal``), about 5x faster than zlib for the same size class; the
file is an ordinary .nii.gz any reader opens. Every write goes to a hidden temporary name in the
destination folder and is renamed into place, so a killed run never leaves a half file.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
from isal import igzip

from data_prep.coords import Geometry

NIFTI_COMPRESS_LEVEL = 2  # isal levels are 0-3; 2 is within 1.5% of 3's size at zlib-1's speed x5


@contextmanager
def atomic_path(final_path):
    """Yield a temporary path beside ``final_path``; rename it into place only if the block succeeds."""
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final_path.name}.", suffix=".part", dir=final_path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, final_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def nifti_header(geometry: Geometry, dtype) -> nib.Nifti1Header:
    """A NIfTI-1 header for ``geometry`` (qform = sform = the RAS affine, code 1 = scanner)."""
    img = nib.Nifti1Image(np.zeros((1, 1, 1), dtype=dtype), geometry.affine_ras())
    hdr = img.header
    hdr.set_data_shape(geometry.shape)
    hdr.set_data_dtype(dtype)
    hdr.set_xyzt_units("mm", "sec")
    hdr.set_qform(geometry.affine_ras(), code=1)
    hdr.set_sform(geometry.affine_ras(), code=1)
    hdr["vox_offset"] = 352
    hdr["scl_slope"] = 1.0
    hdr["scl_inter"] = 0.0
    return hdr


def write_nifti(path, array_zyx: np.ndarray, geometry: Geometry) -> Path:
    """Write a (z, y, x) array as a .nii.gz whose voxel (i, j, k) = array[k, j, i], atomically.

    The dtype is kept (int16 for HU, uint8 / uint16 for masks).
    """
    array_zyx = np.ascontiguousarray(array_zyx)
    if tuple(array_zyx.shape) != geometry.shape_zyx:
        raise ValueError(f"array shape {array_zyx.shape} does not match geometry (z, y, x) {geometry.shape_zyx}")
    hdr = nifti_header(geometry, array_zyx.dtype)
    path = Path(path)
    with atomic_path(path) as tmp:
        # empty name and mtime 0 in the gzip header: the same volume always gives the same bytes
        with open(tmp, "wb") as raw, igzip.IGzipFile(filename="", mode="wb", compresslevel=NIFTI_COMPRESS_LEVEL,
                                                     fileobj=raw, mtime=0) as f:
            f.write(hdr.binaryblock)
            f.write(b"\x00\x00\x00\x00")  # no extensions
            # C-order bytes of (z, y, x) == Fortran-order bytes of (x, y, z): NIfTI's layout.
            f.write(memoryview(array_zyx).cast("B"))
    return path


def load_nifti_image(path: Path):
    """nibabel image of ``path``; a NIfTI-1 .nii.gz is decompressed with ISA-L (about 1.6x faster than zlib)."""
    if path.name.lower().endswith(".nii.gz"):
        try:
            with igzip.open(path, "rb") as f:
                return nib.Nifti1Image.from_bytes(f.read())
        except Exception:  # NIfTI-2, damaged files ...: nibabel's own reader (and its error message)
            pass
    return nib.load(str(path))


def read_nifti(path) -> tuple[np.ndarray, Geometry]:
    """Read a NIfTI file -> ((z, y, x) array in its stored dtype, geometry in LPS)."""
    img = load_nifti_image(Path(path))
    data = np.asanyarray(img.dataobj)
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D image, got shape {data.shape}")
    geom = Geometry.from_affine_ras(img.affine, data.shape)
    return np.ascontiguousarray(data.transpose(2, 1, 0)), geom
