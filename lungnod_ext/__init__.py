"""lungnod_ext: the Python code the lungnod MONAI bundles reference by ``_target_``, in layers (README,
"Architecture"): ``apps`` -> ``handlers`` -> ``metrics`` -> ``inference`` -> ``networks`` / ``transforms``
-> ``data`` -> the ``data_prep`` package. A module imports only from its own subpackage and those below it.

Each subpackage loads its modules and exports on first attribute access (:func:`lazy_exports`), so a bundle
config's ``"$from lungnod_ext.data import inputs"`` works (MONAI resolves that import with ``getattr``).
"""

from __future__ import annotations

import importlib
import pkgutil

__version__ = "0.1.0"


def lazy_exports(package: str, path, exports: dict[str, list[str]]):
    """PEP 562 ``(__getattr__, __dir__, __all__)`` for a subpackage: ``package.<module>`` and every name in
    ``exports`` (``{module: [names]}``) import on first access, not when the subpackage is imported."""
    modules = {m.name for m in pkgutil.iter_modules(path)}
    owner = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        if name in modules:
            return importlib.import_module(f"{package}.{name}")
        if name in owner:
            return getattr(importlib.import_module(f"{package}.{owner[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(modules | set(owner))

    return __getattr__, __dir__, sorted(owner)
