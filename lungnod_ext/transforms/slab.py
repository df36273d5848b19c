"""2.5D input for the 2-D segmentation U-Net: each axial slice goes in with its neighbours as channels.

A vessel continues from slice to slice while a nodule ends within a few of them; a 2-D network that sees
slices k-1, k, k+1 as three channels can tell the two apart where one slice alone cannot.

Layout as MONAI loads a volume: channel-first ``(1, H, W, D)`` with the slice axis last (RAS after
``Orientationd``: D runs inferior -> superior). A slab of ``n`` slices (odd) becomes ``n`` channels ordered
inferior -> superior, the centre slice in the middle; outside the volume the edge slice is repeated.

* :class:`SlabToChannelsd` (training): a ``(1, H, W, n)`` crop -> image ``(n, H, W)``, label ``(1, H, W)``
  (its centre slice).
* :func:`slab_channels`: slices k0..k1 of a volume with their slabs as channels, what
  :class:`lungnod_ext.inference.slab_inferer.SlabSliceInferer` feeds the network at validation / inference.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform


def check_slab(n: int) -> int:
    n = int(n)
    if n < 1 or n % 2 == 0:
        raise ValueError(f"slab size must be an odd number >= 1, got {n}")
    return n


class SlabToChannelsd(MapTransform):
    """Training crops ``(1, H, W, n)`` -> ``image_keys`` ``(n, H, W)`` (slices as channels) and
    ``label_keys`` ``(1, H, W)`` (the centre slice only)."""

    def __init__(self, keys: KeysCollection, label_keys: KeysCollection = (), slab: int = 3,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_keys = [label_keys] if isinstance(label_keys, str) else list(label_keys)
        self.slab = check_slab(slab)

    def _shape_check(self, key, x) -> None:
        if x.ndim != 4 or x.shape[0] != 1 or x.shape[-1] != self.slab:
            raise ValueError(f"'{key}' must be (1, H, W, {self.slab}) for a {self.slab}-slice slab, got {tuple(x.shape)}")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            self._shape_check(key, x)
            d[key] = x[0].permute(2, 0, 1).contiguous() if isinstance(x, torch.Tensor) else x[0].transpose(2, 0, 1).copy()
        for key in self.label_keys:
            if key in d:
                y = d[key]
                self._shape_check(key, y)
                d[key] = y[..., self.slab // 2]
        return d


def slab_channels(volume: torch.Tensor, k0: int, k1: int, slab: int) -> torch.Tensor:
    """Slices ``k0 .. k1-1`` of a ``(B, 1, H, W, D)`` volume as a ``(B * (k1 - k0), slab, H, W)`` batch
    (for each slice its ``slab`` neighbours, edge slices repeated)."""
    half = slab // 2
    depth = volume.shape[-1]
    idx = torch.arange(k0, k1, device=volume.device)[:, None] + torch.arange(-half, half + 1, device=volume.device)[None]
    idx = idx.clamp(0, depth - 1)                                   # (n, slab)
    x = volume[:, 0][..., idx]                                      # (B, H, W, n, slab)
    return x.permute(0, 3, 4, 1, 2).reshape(-1, slab, volume.shape[2], volume.shape[3])


def slab_roi(patch_size: Sequence[int], slab: int = 3) -> list[int]:
    """``RandCropByPosNegLabeld`` spatial size for 2-D ``patch_size`` (H, W) and a slab: ``[H, W, slab]``."""
    return [int(s) for s in patch_size] + [check_slab(slab)]
