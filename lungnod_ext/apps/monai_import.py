"""Importing MONAI for inference without the packages only training, tracking and unused MONAI parts import.

``import monai`` imports every MONAI submodule and, through them, every optional package that is installed:
MLflow (``monai.handlers.mlflow_handler``; about 1.2 s on 2 CPU cores, a fifth of MONAI's import), pandas
(about 0.2 s), scipy.signal (with scipy.stats, interpolate, integrate: for MONAI's ultrasound confidence map and
signal transforms), matplotlib (its Jupyter plotting helpers), scikit-learn (an embedding metric) and ITK (its
image reader / writer). ``lungnod detect`` uses none of them through MONAI (its readers and writers are its own),
so it imports MONAI with those hidden (:func:`import_monai_for_inference`; together about 1.2-2.2 s of 5-7 s on
2 cores): MONAI's ``optional_import`` then treats them as not installed and hands out stubs that raise only if
used. Only MONAI's own import is affected: the packages can be imported normally afterwards.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

SKIPPED_FOR_INFERENCE = ("mlflow", "pandas", "scipy.signal", "matplotlib", "sklearn", "itk")
"""Packages (or subpackages) hidden while MONAI is imported for inference (module doc)."""


class _HiddenPackages(importlib.abc.MetaPathFinder):
    """A meta-path finder that answers "not installed" for the packages ``names`` (top-level ones, or
    subpackages such as ``scipy.signal``) and their modules, when the module importing them is one of the
    packages ``importers`` (None: whoever imports them)."""

    def __init__(self, names: Iterable[str], importers: Iterable[str] | None = None) -> None:
        self.names = frozenset(names)
        self.importers = None if importers is None else frozenset(importers)

    def find_spec(self, fullname, path=None, target=None):
        parts = fullname.split(".")
        if not any(".".join(parts[:n]) in self.names for n in range(1, len(parts) + 1)):
            return None
        if self.importers is not None and _importer(sys._getframe(1)).partition(".")[0] not in self.importers:
            return None   # e.g. scikit-image importing scipy.signal itself: a normal import
        raise ModuleNotFoundError(f"No module named {fullname!r} (hidden while MONAI is imported for inference)",
                                  name=fullname)


def _importer(frame) -> str:
    """The name of the module whose code runs the import that reached ``frame`` (importlib's frames skipped)."""
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
        frame = frame.f_back
    return "" if frame is None else str(frame.f_globals.get("__name__", ""))


@contextmanager
def hidden_packages(names: Iterable[str], importers: Iterable[str] | None = None) -> Iterator[None]:
    """Inside the block, importing any of the packages ``names`` (top-level or dotted, not imported yet) from a
    module of the packages ``importers`` (None: from anywhere) raises ModuleNotFoundError, as if they were not
    installed; afterwards they import normally."""
    finder = _HiddenPackages(names, importers)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def import_monai_for_inference(skipped: Iterable[str] = SKIPPED_FOR_INFERENCE) -> bool:
    """Import MONAI's bundle workflows and engines (what the bundles' inference configs run) with the packages
    ``skipped`` hidden from MONAI's own modules (another package that imports one, as scikit-image might import
    scipy.signal, gets it). -> True when they were hidden, False when MONAI was already imported (nothing to
    save; the process, e.g. a test session, keeps MONAI as it is)."""
    hide = "monai" not in sys.modules
    with hidden_packages((name for name in skipped if hide and name not in sys.modules), importers=("monai",)):
        importlib.import_module("monai.bundle.workflows")
        importlib.import_module("monai.engines")
    return hide
