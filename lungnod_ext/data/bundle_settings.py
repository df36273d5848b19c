"""Checks of the switches a bundle run is given, before it reads or writes anything.

``python -m monai.bundle run ... --write_overlays False`` gives the config the bool ``False``, but python-fire,
MONAI's command-line reader, reads ``--write_overlays false`` (lowercase) as the text ``'false'``, which Python
counts as true: the switch would silently stay on (``--assume_hu false`` would skip the Hounsfield check).
Each bundle config's ``initialize`` list starts with :func:`check_switches` over its top-level true/false
settings (``tests/bundles/test_bundle_switches.py`` keeps the lists complete), so such a run stops with one line
naming the setting.
"""

from __future__ import annotations

import numpy as np


def check_switches(**switches) -> None:
    """Raise ``ValueError`` (one line) naming the first of ``switches`` (setting name -> value) that is not a
    bool: a string, a number or None. Returns None when all are bools (``numpy.bool_`` included)."""
    for name, value in switches.items():
        if isinstance(value, (bool, np.bool_)):
            continue
        word = str(value).strip().lower()
        flag = "False" if word in ("false", "0", "no", "off") else "True" if word in ("true", "1", "yes", "on") else None
        cli, json_value = (f"--{name} {flag}", f"{name}={flag.lower()}") if flag else \
            (f"--{name} True (or False)", f"{name}=true (or false)")
        raise ValueError(f"bundle setting {name} must be True or False, got {value!r}; write {cli} on the "
                         f"monai.bundle command line (lowercase is read as text), {json_value} after lungnod's "
                         f"--seg / --cls")
