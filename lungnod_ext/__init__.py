"""lungnod_ext: the Python code the lungnod MONAI bundles reference by ``_target_``.

Submodules load on first attribute access, so a bundle config's ``"$from lungnod_ext import inputs"``
works (MONAI resolves that import with ``getattr`` on the package).
"""

import importlib
import pkgutil

__version__ = "0.1.0"

_SUBMODULES = {m.name for m in pkgutil.iter_modules(__path__)}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
