"""CT intensity windowing: Hounsfield units -> [0, 1] float32, as MONAI array / dictionary transforms.

A window is given by its level (centre, HU) and width (HU), or by its range ``a_min..a_max`` (HU):
``a_min = level - width / 2``, ``a_max = level + width / 2``. The map is linear,
``(hu - a_min) / width``: ``a_min -> 0``, ``level -> 0.5``, ``a_max -> 1``; values outside the window are
clipped to 0 / 1 unless ``clip=False``.

Input: any array of HU, usually channel-first as MONAI loads images, ``(C, H, W)`` or ``(C, X, Y, Z)``
(the map is element-wise, so the layout does not matter). numpy in -> numpy out, torch in -> torch out on the
same device, MetaTensor in -> MetaTensor out with its metadata (affine, filename, ...) kept.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_tensor import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type


@dataclass(frozen=True)
class Window:
    """A CT display window: centre ``level`` and ``width``, both in HU."""

    level: float
    width: float

    @property
    def a_min(self) -> float:
        """Lowest HU of the window (maps to 0)."""
        return self.level - self.width / 2.0

    @property
    def a_max(self) -> float:
        """Highest HU of the window (maps to 1)."""
        return self.level + self.width / 2.0

    @classmethod
    def from_range(cls, a_min: float, a_max: float) -> "Window":
        """The window spanning ``a_min..a_max`` HU."""
        return cls(level=(a_min + a_max) / 2.0, width=a_max - a_min)


HU_WINDOWS: dict[str, Window] = {
    "lung": Window(level=-600.0, width=1500.0),          # -1350..150 HU
    "mediastinum": Window(level=40.0, width=400.0),      # -160..240 HU
    "bone": Window(level=400.0, width=1800.0),           # -500..1300 HU
    "lung_wide": Window.from_range(-1000.0, 400.0),      # nodule-friendly: air..dense nodule/calcification
}
"""Named presets; ``lung_wide`` is the -1000..400 HU range used by LUNA16-style pipelines."""


def resolve_window(preset: str | None = None, level: float | None = None, width: float | None = None,
                   a_min: float | None = None, a_max: float | None = None) -> Window:
    """Exactly one way of naming a window: a preset, ``level`` + ``width``, or ``a_min`` + ``a_max`` (HU)."""
    given = [preset is not None, level is not None or width is not None, a_min is not None or a_max is not None]
    if sum(given) != 1:
        raise ValueError("give exactly one of: preset, level+width, a_min+a_max")
    if preset is not None:
        if preset not in HU_WINDOWS:
            raise ValueError(f"unknown HU window preset {preset!r}; known: {sorted(HU_WINDOWS)}")
        return HU_WINDOWS[preset]
    if level is not None or width is not None:
        if level is None or width is None:
            raise ValueError("level and width must be given together")
        window = Window(float(level), float(width))
    else:
        if a_min is None or a_max is None:
            raise ValueError("a_min and a_max must be given together")
        window = Window.from_range(float(a_min), float(a_max))
    if not window.width > 0:
        raise ValueError(f"window width must be > 0 HU, got {window.width}")
    return window


class HUWindow(Transform):
    """Map HU to [0, 1] float32 through a CT window (see the module docstring for shapes and types).

    Args:
        preset: a key of :data:`HU_WINDOWS` (``"lung"``, ``"mediastinum"``, ``"bone"``, ``"lung_wide"``).
        level, width: window centre and width in HU (instead of ``preset``).
        a_min, a_max: window range in HU (instead of ``preset``).
        clip: clip the output to [0, 1] (default); ``False`` keeps the linear map outside the window.
    With no window argument at all, the ``"lung"`` preset is used.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, preset: str | None = None, level: float | None = None, width: float | None = None,
                 a_min: float | None = None, a_max: float | None = None, clip: bool = True) -> None:
        if preset is None and level is None and width is None and a_min is None and a_max is None:
            preset = "lung"
        self.window = resolve_window(preset, level, width, a_min, a_max)
        self.clip = clip

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        a_min, width = self.window.a_min, self.window.width
        if isinstance(img, torch.Tensor):
            t = img.as_tensor() if isinstance(img, MetaTensor) else img
            out_t = (t.to(torch.float32) - a_min) / width
            if self.clip:
                out_t = out_t.clamp_(0.0, 1.0)
            return convert_to_dst_type(out_t, img, dtype=torch.float32)[0]
        arr = np.asarray(img, dtype=np.float32)
        out = (arr - np.float32(a_min)) / np.float32(width)
        if self.clip:
            np.clip(out, 0.0, 1.0, out=out)
        return out.astype(np.float32, copy=False)


class HUWindowd(MapTransform):
    """Dictionary twin of :class:`HUWindow`: windows ``data[key]`` for each of ``keys``."""

    backend = HUWindow.backend

    def __init__(self, keys: KeysCollection, preset: str | None = None, level: float | None = None,
                 width: float | None = None, a_min: float | None = None, a_max: float | None = None,
                 clip: bool = True, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.windower = HUWindow(preset=preset, level=level, width=width, a_min=a_min, a_max=a_max, clip=clip)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.windower(d[key])
        return d
