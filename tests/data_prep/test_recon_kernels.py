"""Reconstruction kernels by name (``data_prep.recon_kernels``): the vendors' sharp (lung, bone,
high-resolution) kernels are recognised, soft and unknown names are not, and several kernels per series
are all looked at (``data_prep.convert.reconstruction_of``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydicom.multival import MultiValue

from data_prep.convert import reconstruction_of
from data_prep.recon_kernels import is_sharp_kernel, kernel_name

SHARP = [("LUNG", "GE MEDICAL SYSTEMS"), ("BONEPLUS", "GE MEDICAL SYSTEMS"), ("EDGE", "GE"),
         ("B70f", "SIEMENS"), ("B60s", "SIEMENS"), ("I70f\\2", "SIEMENS"), ("Br64d", "Siemens Healthineers"),
         ("Bl57d", "SIEMENS"), ("Hr60f", "SIEMENS"), ("FC51", "TOSHIBA"), ("FC86", "CANON_MEC"), ("FC30", "TOSHIBA"),
         ("L", "Philips"), ("YC", "Philips"), ("LUNG ENHANCED", "UIH"), ("BODY SHARP", "CANON_MEC"), ("HR LUNG", "")]
SOFT = [("STANDARD", "GE MEDICAL SYSTEMS"), ("SOFT", "GE"), ("DETAIL", "GE"), ("CHEST", "GE"), ("B30f", "SIEMENS"),
        ("Br40d", "SIEMENS"), ("I26f\\3", "SIEMENS"), ("Qr40", "SIEMENS"), ("FC13", "TOSHIBA"), ("FC07", "TOSHIBA"),
        ("B", "Philips"), ("C", "Philips"), ("L", "GE"), ("", "GE"), ("SHARPNESS-3", "")]


@pytest.mark.parametrize("kernel,maker", SHARP)
def test_sharp_kernels_are_recognised(kernel, maker):
    assert is_sharp_kernel(kernel, maker)


@pytest.mark.parametrize("kernel,maker", SOFT)
def test_soft_and_unknown_kernels_are_not(kernel, maker):
    assert not is_sharp_kernel(kernel, maker)


def test_kernel_names_and_a_series_with_two_kernels():
    assert kernel_name(MultiValue(str, ["I70f", "2"])) == "I70f\\2"
    assert kernel_name(None) == "" and kernel_name(" B30f ") == "B30f"
    headers = [SimpleNamespace(manufacturer="", convolution_kernel="", slice_thickness_mm=None),
               SimpleNamespace(manufacturer="SIEMENS", convolution_kernel="B30f", slice_thickness_mm=None),
               SimpleNamespace(manufacturer="SIEMENS", convolution_kernel="B70f", slice_thickness_mm=None),
               SimpleNamespace(manufacturer="SIEMENS", convolution_kernel="B30f", slice_thickness_mm=None)]
    assert reconstruction_of(headers) == {"manufacturer": "SIEMENS", "convolution_kernel": "B30f / B70f",
                                          "sharp_kernel": True, "slice_thickness_mm": None}
    assert reconstruction_of(headers[:2]) == {"manufacturer": "SIEMENS", "convolution_kernel": "B30f",
                                              "sharp_kernel": False, "slice_thickness_mm": None}
    assert reconstruction_of(headers[:1]) == {"manufacturer": "", "convolution_kernel": "", "sharp_kernel": False,
                                              "slice_thickness_mm": None}


def test_a_series_slice_thickness_is_the_median_of_its_files():
    """SliceThickness of each file (None where a file has none): the median of those that say, 0.01 mm."""
    headers = [SimpleNamespace(manufacturer="GE", convolution_kernel="STANDARD", slice_thickness_mm=t)
               for t in (2.5, None, 2.5, 1.25, 2.5004)]
    assert reconstruction_of(headers)["slice_thickness_mm"] == 2.5
    assert reconstruction_of(headers[3:4])["slice_thickness_mm"] == 1.25
