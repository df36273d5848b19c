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
    headers = [SimpleNamespace(manufacturer="", convolution_kernel=""),
               SimpleNamespace(manufacturer="SIEMENS", convolution_kernel="B30f"),
               SimpleNamespace(manufacturer="SIEMENS", convolution_kernel="B70f"),
               SimpleNamespace(manufacturer="SIEMENS", convolution_kernel="B30f")]
    assert reconstruction_of(headers) == {"manufacturer": "SIEMENS", "convolution_kernel": "B30f / B70f",
                                          "sharp_kernel": True}
    assert reconstruction_of(headers[:2]) == {"manufacturer": "SIEMENS", "convolution_kernel": "B30f",
                                              "sharp_kernel": False}
    assert reconstruction_of(headers[:1]) == {"manufacturer": "", "convolution_kernel": "", "sharp_kernel": False}
