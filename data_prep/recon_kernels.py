"""CT reconstruction kernels by name: which ones are sharp (lung, bone, high-resolution).

The shipped models learned soft-kernel scans only (the three LIDC-IDRI series here are GE ``STANDARD``). A
sharp kernel raises the image noise and gives edges an overshoot; ``lungnod detect`` notes such a series
(:func:`lungnod_ext.apps.pipeline.scan_notes`). Kernel names are the vendors' own (DICOM ConvolutionKernel,
0018,1210); :func:`is_sharp_kernel` knows the common families and says False for any name it does not know:

- GE: ``LUNG``, ``BONE``, ``BONEPLUS``, ``EDGE`` (soft: ``SOFT``, ``STANDARD``, ``DETAIL``, ``CHEST``);
- Siemens: a letter or two and a number, ``B70f``, ``I70f``, ``Br64``, ``Bl57``, ``Hr60``: 50 and up are sharp;
- Canon / Toshiba: ``FC30``-``FC39`` (bone), ``FC50``-``FC59`` (lung), ``FC80``-``FC89`` (high resolution);
- Philips: ``D``, ``E``, ``L``, ``Y*`` families (``YA``-``YD``: lung) and their enhanced variants (``LA``, ``EC``...);
- any vendor: a name with ``LUNG``, ``BONE``, ``SHARP``, ``EDGE`` or ``HR`` as a word.
"""

from __future__ import annotations

import re

GE_SHARP = {"LUNG", "BONE", "BONEPLUS", "EDGE"}
SIEMENS = re.compile(r"^([BIHQDJ][a-z]?)(\d{2})[a-z]?$", re.IGNORECASE)
SIEMENS_SHARP_FROM = 50
CANON = re.compile(r"^FC(\d{2})$", re.IGNORECASE)
CANON_SHARP_DECADES = {3, 5, 8}
PHILIPS_SHARP = re.compile(r"^(D|E|L|Y[A-D])[A-D]?$", re.IGNORECASE)
SHARP_WORDS = re.compile(r"(^|[^A-Z])(LUNG|BONE|SHARP|EDGE|HR)([^A-Z]|$)")


def kernel_name(value) -> str:
    """A DICOM ConvolutionKernel value as one string: multi-valued ones (``['I70f', '2']``) joined by ``\\``."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v).strip() for v in value if str(v).strip())
    return str(value).strip()


def is_sharp_kernel(kernel: str, manufacturer: str = "") -> bool:
    """Whether ``kernel`` (a ConvolutionKernel name, :func:`kernel_name`) is a sharp (lung / bone /
    high-resolution) reconstruction kernel (module doc); False for an empty or unknown name. ``manufacturer``
    (DICOM Manufacturer) picks the Philips one-letter names, which other vendors do not use alike."""
    first = kernel.split("\\")[0].strip()
    if not first:
        return False
    upper = first.upper()
    if upper in GE_SHARP or SHARP_WORDS.search(upper):
        return True
    if m := CANON.match(first):
        return int(m.group(1)) // 10 in CANON_SHARP_DECADES
    if m := SIEMENS.match(first):
        return int(m.group(2)) >= SIEMENS_SHARP_FROM
    return "PHILIPS" in manufacturer.upper() and bool(PHILIPS_SHARP.match(first))
