"""Checks that an image handed to inference is a usable chest CT volume, with one-line reasons.

:func:`check_ct_volume` reads a NIfTI / MetaImage file and raises
:class:`data_prep.errors.InputNotFoundError` (``<path>: <problem>``) when it is not a single 3D
scalar volume (4D, RGB / vector pixels), holds NaN or infinite values, is constant, has no body in it
(all air, nothing above ``-500`` HU), or is smaller than ``MIN_SHAPE`` voxels / ``MIN_EXTENT_MM`` mm
along an axis, or its values do not look like Hounsfield units (:func:`check_hounsfield`: normalised
[0, 1] floats, no air near -1000 HU, nothing as dense as bone); ``assume_hu=True`` (``--assume-hu``)
skips that last check for users who know their values are HU. Value checks read the whole array for float
data and a 1-in-2 subsample per axis for integer data (an int16 CT cannot hold NaN).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_prep.errors import InputNotFoundError

MIN_SHAPE = (32, 32, 3)
"""Smallest (X, Y, Z) voxel counts inference accepts."""
MIN_EXTENT_MM = (40.0, 40.0, 5.0)
"""Smallest field of view (X, Y, Z) in mm: less cannot hold a lung nodule in its context."""
BODY_HU = -500.0
"""Soft tissue and above; a chest CT always has some."""
AIR_HU_MAX = -900.0
"""A chest CT's darkest 0.5 % (outside air, trachea, lungs' airways) lies below this; -1000 HU is air."""
DENSE_HU_MIN = 100.0
"""Bone, calcification or contrast: every chest CT has voxels brighter than this."""
HU_ADVICE = "expected CT Hounsfield units (air near -1000, bone above 100); if they are HU, pass --assume-hu " \
            "(bundle config: assume_hu=true)"


def _load(path: Path):
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        from data_prep.nifti_io import load_nifti_image   # ISA-L for .nii.gz

        img = load_nifti_image(path)
        zooms = tuple(float(z) for z in img.header.get_zooms())
        return img.dataobj, tuple(img.shape), np.dtype(img.get_data_dtype()), zooms
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayViewFromImage(img)
    shape = tuple(reversed(arr.shape[: img.GetDimension()])) + ((img.GetNumberOfComponentsPerPixel(),)
                                                                if img.GetNumberOfComponentsPerPixel() > 1 else ())
    return arr, shape, arr.dtype, tuple(img.GetSpacing())


def check_hounsfield(path, values: np.ndarray, is_float: bool) -> None:
    """Raise InputNotFoundError (one line: what was found, what is expected) when ``values`` (float32, any
    shape) do not look like CT HU: floats all within [0, 1], 0.5th percentile above ``AIR_HU_MAX``, or a
    maximum below ``DENSE_HU_MIN``."""
    lo, hi = float(values.min()), float(values.max())
    if is_float and lo >= 0.0 and hi <= 1.0:
        found = f"float values in [{lo:.3g}, {hi:.3g}], an intensity-normalised image"
    elif hi < DENSE_HU_MIN:
        found = f"the brightest value is {hi:.4g}"
    else:
        dark = float(np.percentile(values, 0.5))
        if dark <= AIR_HU_MAX:
            return
        found = f"the darkest 0.5 % of the values are above {dark:.4g}, no air"
    raise InputNotFoundError(path, f"values do not look like CT Hounsfield units ({found}); {HU_ADVICE}")


def check_ct_volume(path, assume_hu: bool = False) -> None:
    """Raise InputNotFoundError (one line) unless ``path`` is a usable CT volume (see module doc)."""
    path = Path(path)
    try:
        data, shape, dtype, zooms = _load(path)
    except InputNotFoundError:
        raise
    except Exception as exc:  # unreadable / truncated file
        raise InputNotFoundError(path, f"cannot read the image ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    if dtype.names is not None or (len(shape) == 5 and shape[3] == 1) or (len(shape) == 4 and shape[3] in (3, 4)
                                                                            and dtype == np.uint8):
        raise InputNotFoundError(path, f"an RGB / vector image (shape {shape}), not a CT volume in HU")
    if len(shape) != 3:
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        else:
            raise InputNotFoundError(path, f"a {len(shape)}D image (shape {shape}); need one 3D CT volume")
    if not np.issubdtype(dtype, np.number):
        raise InputNotFoundError(path, f"pixel type {dtype} is not numeric")
    small = [f"{a}={n}" for a, n, m in zip("XYZ", shape, MIN_SHAPE) if n < m]
    if small:
        raise InputNotFoundError(path, f"volume too small ({', '.join(small)} voxels; need at least {MIN_SHAPE})")
    extent = [n * abs(z) for n, z in zip(shape, zooms[:3])]
    narrow = [f"{a}={e:.0f} mm" for a, e, m in zip("XYZ", extent, MIN_EXTENT_MM) if e < m]
    if narrow:
        raise InputNotFoundError(path, f"field of view too small ({', '.join(narrow)}; need {MIN_EXTENT_MM} mm)")
    arr = np.asarray(data[..., 0] if len(np.shape(data)) == 4 else data)
    if np.issubdtype(dtype, np.integer):
        arr = arr[::2, ::2, ::2]
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise InputNotFoundError(path, "image holds NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if hi == lo:
        raise InputNotFoundError(path, f"constant image (every voxel {lo:g}): not a CT scan")
    if hi < BODY_HU:
        raise InputNotFoundError(path, f"no body in the image (all voxels below {BODY_HU:g} HU, all air)")
    if not assume_hu:
        check_hounsfield(path, arr, np.issubdtype(dtype, np.floating))
