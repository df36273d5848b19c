"""lungnod_ext: the Python code the lungnod MONAI bundles reference by ``_target_``."""

__version__ = "0.1.0"
