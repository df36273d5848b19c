"""Contrast Limited Adaptive Histogram Equalisation (CLAHE) on [0, 1] images, as MONAI transforms.

Input: float image in [0, 1] (e.g. the output of :class:`lungnod_ext.transforms.hu_window.HUWindow`), channel-first as
MONAI holds it: ``(C, H, W)`` for a 2-D image or ``(C, X, Y, Z)`` for a volume. Values outside [0, 1] are
clipped first. Output: float32 in [0, 1], same shape; numpy in -> numpy out, torch in -> torch out (same
device), MetaTensor in -> MetaTensor out with its metadata kept. Each channel is processed on its own.

Axial slices: a NIfTI volume loaded by MONAI's ``LoadImaged`` + ``EnsureChannelFirstd`` is ``(C, X, Y, Z)``
(voxel index order i, j, k), so axial slices lie along the LAST axis; ``slice_axis=-1`` (the default) is
right for it, also after ``Orientationd`` to RAS/LPS. Give another ``slice_axis`` for other layouts.

Units of ``clip_limit`` (scikit-image's convention): the most a histogram bin may hold, as a fraction of the
pixels of a tile (contextual region), with 256 bins over [0, 1]. ``clip_limit=0.01`` on an 8 x 8 grid over
512 x 512 (64 x 64 = 4096-pixel tiles) caps each bin at 40 pixels; larger values give stronger
equalisation, 1.0 is plain adaptive histogram equalisation. (OpenCV's ``clipLimit`` is this value x 256.)

Modes:
  * ``"2d"`` (default, fast): OpenCV's ``createCLAHE`` on each slice, on 8-bit data (256 bins, the same
    bins the clip limit refers to), so the output takes 256 levels. One CLAHE object serves all slices of
    a call. About 0.25 s for a 512 x 512 x 133 volume on 2 cores (0.6 s on a cold first call).
  * ``"3d"``: :func:`skimage.exposure.equalize_adapthist` on the whole volume with 3-D tiles (slow: tens
    of seconds for a full CT; meant for small crops). scikit-image first stretches each channel to its own
    min..max (a windowed CT holds both 0 and 1, so this is usually the identity).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import cv2
import numpy as np
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type

N_BINS = 256


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 0..255 (rounded, clipped), in one vectorised pass over a scratch copy."""
    scratch = np.multiply(unit, np.float32(255.0), dtype=np.float32)
    np.clip(scratch, 0.0, 255.0, out=scratch)
    np.add(scratch, np.float32(0.5), out=scratch)
    return scratch.astype(np.uint8)


def _clahe_uint8_slices(stack: np.ndarray, clip_limit: float, tile_grid_size: Sequence[int]) -> np.ndarray:
    """OpenCV CLAHE on each uint8 image of a C-contiguous stack (N, H, W), one CLAHE object for all."""
    tiles_h, tiles_w = (int(t) for t in tile_grid_size)
    out = np.empty_like(stack)
    clahe = cv2.createCLAHE(clipLimit=float(clip_limit) * N_BINS, tileGridSize=(tiles_w, tiles_h))
    for n in range(stack.shape[0]):
        clahe.apply(stack[n], dst=out[n])
    return out


def _to_unit(u8: np.ndarray) -> np.ndarray:
    return np.multiply(u8, np.float32(1.0 / 255.0), dtype=np.float32)


def _slices_first(u8: np.ndarray, axis: int) -> np.ndarray:
    """(C, ...) uint8 volume -> C-contiguous (C, D, H, W) with the slice ``axis`` second (OpenCV transposes)."""
    if axis == u8.ndim - 1 and u8.flags.c_contiguous:
        c, h, w, d = u8.shape
        return np.stack([cv2.transpose(channel.reshape(h * w, d)) for channel in u8]).reshape(c, d, h, w)
    return np.ascontiguousarray(np.moveaxis(u8, axis, 1))


def _slices_back(stack: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of :func:`_slices_first`: C-contiguous (C, D, H, W) -> C-contiguous array with slices on ``axis``."""
    if axis == stack.ndim - 1:
        c, d, h, w = stack.shape
        return np.stack([cv2.transpose(channel.reshape(d, h * w)) for channel in stack]).reshape(c, h, w, d)
    return np.ascontiguousarray(np.moveaxis(stack, 1, axis))


def clahe_2d_slices(unit: np.ndarray, clip_limit: float = 0.01, tile_grid_size: Sequence[int] = (8, 8)) -> np.ndarray:
    """CLAHE on each 2-D image of a stack ``(N, H, W)`` in [0, 1] -> float32 ``(N, H, W)`` in [0, 1].

    ``tile_grid_size`` is (tiles along H, tiles along W); ``clip_limit`` as in the module docstring.
    """
    if unit.ndim != 3:
        raise ValueError(f"expected a stack (N, H, W), got shape {unit.shape}")
    stack = np.ascontiguousarray(_to_uint8(unit))
    return _to_unit(_clahe_uint8_slices(stack, clip_limit, tile_grid_size))


def clahe_3d_volume(unit: np.ndarray, clip_limit: float = 0.01,
                    tile_grid_size: Sequence[int] = (8, 8, 2)) -> np.ndarray:
    """CLAHE with 3-D tiles on one volume in [0, 1] -> float32 volume in [0, 1] (scikit-image).

    ``tile_grid_size``: number of tiles along each axis of ``unit`` (tiles are ``ceil(shape / tiles)`` voxels).
    """
    from skimage.exposure import equalize_adapthist

    if unit.ndim != len(tile_grid_size):
        raise ValueError(f"tile_grid_size {tuple(tile_grid_size)} does not match volume shape {unit.shape}")
    kernel = [max(1, int(np.ceil(s / max(1, int(t))))) for s, t in zip(unit.shape, tile_grid_size)]
    vol = np.clip(unit, 0.0, 1.0).astype(np.float32)
    if float(vol.max()) == float(vol.min()):
        return vol  # nothing to equalise (scikit-image would divide by zero)
    return equalize_adapthist(vol, kernel_size=kernel, clip_limit=clip_limit, nbins=N_BINS).astype(np.float32)


class CLAHE(Transform):
    """CLAHE on a channel-first [0, 1] image; see the module docstring for shapes, units and modes.

    Args:
        clip_limit: fraction of a tile's pixels one of the 256 histogram bins may hold (scikit-image's unit).
        tile_grid_size: tiles per in-plane axis, in the array's axis order (the two spatial axes other than
            ``slice_axis``). In ``"3d"`` mode a 3-tuple gives tiles per spatial axis; a 2-tuple gets, along
            ``slice_axis``, the number of tiles that makes tiles about as deep (in voxels) as they are wide.
        mode: ``"2d"`` (each slice along ``slice_axis``, OpenCV) or ``"3d"`` (3-D tiles, scikit-image).
        slice_axis: axis of the channel-first array that indexes axial slices (default -1: the last axis,
            right for ``(C, X, Y, Z)`` NIfTI volumes). Ignored for 2-D images ``(C, H, W)``.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(self, clip_limit: float = 0.01, tile_grid_size: Sequence[int] = (8, 8), mode: str = "2d",
                 slice_axis: int = -1) -> None:
        if not 0.0 < clip_limit <= 1.0:
            raise ValueError(f"clip_limit must be in (0, 1] (fraction of a tile's pixels), got {clip_limit}")
        if mode not in ("2d", "3d"):
            raise ValueError(f"mode must be '2d' or '3d', got {mode!r}")
        tiles = tuple(int(t) for t in tile_grid_size)
        if len(tiles) not in (2, 3) or min(tiles) < 1 or (mode == "2d" and len(tiles) != 2):
            raise ValueError(f"tile_grid_size must hold 2 (or, in 3d mode, 3) positive ints, got {tile_grid_size}")
        self.clip_limit = float(clip_limit)
        self.tile_grid_size = tiles
        self.mode = mode
        self.slice_axis = int(slice_axis)

    def _slice_axis(self, ndim: int) -> int:
        axis = self.slice_axis % ndim
        if axis == 0:
            raise ValueError("slice_axis must be a spatial axis of the channel-first array, not the channel axis 0")
        return axis

    def _tiles_3d(self, spatial_shape: tuple[int, ...], axis: int) -> list[int]:
        """Tiles per spatial axis for 3d mode (``axis`` is the slice axis among the spatial axes)."""
        if len(self.tile_grid_size) == 3:
            return list(self.tile_grid_size)
        in_plane = [s for a, s in enumerate(spatial_shape) if a != axis]
        tile_width = np.mean([s / t for s, t in zip(in_plane, self.tile_grid_size)])
        depth_tiles = max(1, int(round(spatial_shape[axis] / tile_width)))
        tiles = list(self.tile_grid_size)
        tiles.insert(axis, depth_tiles)
        return tiles

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        arr = np.asarray(convert_data_type(img, np.ndarray)[0], dtype=np.float32)
        if arr.ndim == 3:  # (C, H, W): each channel is one 2-D image
            if self.mode == "3d":
                raise ValueError("mode '3d' needs a volume (C, X, Y, Z), got a 2-D image (C, H, W)")
            out = clahe_2d_slices(arr, self.clip_limit, self.tile_grid_size)
        elif arr.ndim == 4:
            axis = self._slice_axis(arr.ndim)
            if self.mode == "2d":  # re-layout as uint8 (4x cheaper than float32), convert in the input's layout
                stack = _slices_first(_to_uint8(arr), axis)  # (C, D, H, W)
                shape = stack.shape
                done = _clahe_uint8_slices(stack.reshape(-1, shape[2], shape[3]), self.clip_limit, self.tile_grid_size)
                out = _to_unit(_slices_back(done.reshape(shape), axis))
            else:
                tiles = self._tiles_3d(arr.shape[1:], axis - 1)
                out = np.stack([clahe_3d_volume(channel, self.clip_limit, tiles) for channel in arr])
        else:
            raise ValueError(f"expected a channel-first image (C, H, W) or (C, X, Y, Z), got shape {arr.shape}")
        return convert_to_dst_type(out, img, dtype=np.float32)[0]


class CLAHEd(MapTransform):
    """Dictionary twin of :class:`CLAHE`: equalises ``data[key]`` for each of ``keys``."""

    backend = CLAHE.backend

    def __init__(self, keys: KeysCollection, clip_limit: float = 0.01, tile_grid_size: Sequence[int] = (8, 8),
                 mode: str = "2d", slice_axis: int = -1, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.clahe = CLAHE(clip_limit=clip_limit, tile_grid_size=tile_grid_size, mode=mode, slice_axis=slice_axis)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.clahe(d[key])
        return d
