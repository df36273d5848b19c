"""Importing MONAI for inference without the packages only training and tracking use.

``import monai`` imports every MONAI submodule and, through them, every optional package that is installed:
MLflow (``monai.handlers.mlflow_handler``; about 1.2 s on 2 CPU cores, a fifth of MONAI's import) and pandas
(about 0.2 s). ``lungnod detect`` never tracks a run or reads a CSV dataset, so it imports MONAI with those two
hidden (:func:`import_monai_for_inference`): MONAI's ``optional_import`` then treats them as not installed and
hands out stubs that raise only if used (the MLflow handler, CSV datasets). Only MONAI's own import is
affected: the packages can be imported normally afterwards.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

SKIPPED_FOR_INFERENCE = ("mlflow", "pandas")


class _HiddenPackages(importlib.abc.MetaPathFinder):
    """A meta-path finder that answers "not installed" for the top-level packages ``names`` and their modules."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (hidden while MONAI is imported for inference)",
                                      name=fullname)
        return None


@contextmanager
def hidden_packages(names: Iterable[str]) -> Iterator[None]:
    """Inside the block, importing any of the top-level packages ``names`` (not imported yet) raises
    ModuleNotFoundError, as if they were not installed; afterwards they import normally."""
    finder = _HiddenPackages(names)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def import_monai_for_inference(skipped: Iterable[str] = SKIPPED_FOR_INFERENCE) -> bool:
    """Import MONAI's bundle workflows and engines (what the bundles' inference configs run) with the packages
    ``skipped`` hidden. -> True when they were hidden, False when MONAI was already imported (nothing to save;
    the process, e.g. a test session, keeps MONAI as it is)."""
    hide = "monai" not in sys.modules
    with hidden_packages(name for name in skipped if hide and name not in sys.modules):
        importlib.import_module("monai.bundle.workflows")
        importlib.import_module("monai.engines")
    return hide
