"""Slice profiles: a CT series seen as a thicker reconstruction on its own grid.

A series' slice profile (its slices' thickness, FWHM along the slice axis, mm) is taken to be its slice spacing.
A Gaussian along the slices widens it to a thicker one: the training cohort's thick-slice augmentation
(:func:`data_prep.training_cohort.augment_scanner`) and the dot filter's view of thin slices
(:func:`lungnod_ext.inference.blob_candidates.dot_filter_peaks`) both use :func:`slice_profile_sigma`.
"""

from __future__ import annotations

import math

FWHM_PER_SIGMA = 2.355
"""A Gaussian's full width at half maximum over its sigma (2 sqrt(2 ln 2))."""


def slice_profile_sigma(spacing_mm: float, target_mm: float) -> float | None:
    """The Gaussian (sigma in slices, along z) that widens a scan's slice profile from its slice spacing
    ``spacing_mm`` to ``target_mm`` (FWHM, mm): a thicker reconstruction on the same grid; None when the target
    is not thicker (within 5 %)."""
    if target_mm <= spacing_mm * 1.05:
        return None
    return float(math.sqrt(target_mm ** 2 - spacing_mm ** 2) / FWHM_PER_SIGMA / spacing_mm)
