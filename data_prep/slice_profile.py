"""Slice profiles: a CT series seen as a thicker reconstruction on its own grid.

A series' slice profile (its slices' thickness, FWHM along the slice axis, mm) is its DICOM slice thickness where
known (an overlapping reconstruction's is larger than its slice spacing), else taken to be its slice spacing.
A Gaussian along the slices widens it to a thicker one: the training cohort's thick-slice augmentation
(:func:`data_prep.training_cohort.augment_scanner`) and the dot filter's view of thin slices
(:func:`lungnod_ext.inference.blob_candidates.dot_filter_peaks`) both use :func:`slice_profile_sigma`.
"""

from __future__ import annotations

import math

FWHM_PER_SIGMA = 2.355
"""A Gaussian's full width at half maximum over its sigma (2 sqrt(2 ln 2))."""


def is_thicker(a_mm: float, b_mm: float) -> bool:
    """Whether a slice profile of ``a_mm`` is thicker than one of ``b_mm`` by more than 5 % (closer counts as the
    same: DICOM thickness and spacing are rounded)."""
    return a_mm > b_mm * 1.05


def slice_profile_sigma(spacing_mm: float, target_mm: float, thickness_mm: float | None = None) -> float | None:
    """The Gaussian (sigma in slices, along z) that widens a scan's slice profile to ``target_mm`` (FWHM, mm): a
    thicker reconstruction on the same grid of slices ``spacing_mm`` apart. The profile it starts from is the
    series' slice thickness ``thickness_mm`` (DICOM SliceThickness; an overlapping reconstruction's is larger than
    its spacing) or the spacing, whichever is larger (None: the spacing). None when the target is not thicker than
    that (within 5 %)."""
    current = max(spacing_mm, thickness_mm or 0.0)
    if not is_thicker(target_mm, current):
        return None
    return float(math.sqrt(target_mm ** 2 - current ** 2) / FWHM_PER_SIGMA / spacing_mm)


def slice_thickness_or_none(value) -> float | None:
    """A slice thickness (mm) as a float when ``value`` is a finite number > 0 (a DICOM decimal string, or a 0-d
    tensor / array: a datalist value after MONAI's collation, too), else None (absent, empty or garbled text, a
    bool, 0, negative, NaN)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return out if math.isfinite(out) and out > 0 else None
