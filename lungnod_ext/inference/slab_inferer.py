"""Slice-by-slice inference of the 2.5D segmentation U-Net (see :mod:`lungnod_ext.transforms.slab`): a
``(B, 1, H, W, D)`` volume -> ``(B, C_out, H, W, D)``, each slice with its ``slab`` neighbours as channels,
H and W padded to a multiple of ``divisible`` for the network and cropped back.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type

from lungnod_ext.transforms.slab import check_slab, slab_channels


class SlabSliceInferer(Inferer):
    """Slice-by-slice inference of a 2-D network that takes ``slab`` neighbouring slices as channels.

    inputs: ``(B, 1, H, W, D)`` (D = the slice axis); the network sees ``(N, slab, H', W')`` with H', W'
    padded to a multiple of ``divisible`` (edge values) and returns ``(N, C_out, H', W')``; output
    ``(B, C_out, H, W, D)`` on the input's device, float32. ``sw_batch_size`` slices per forward pass.
    """

    def __init__(self, slab: int = 3, sw_batch_size: int = 16, divisible: int = 32, progress: bool = False) -> None:
        super().__init__()
        self.slab = check_slab(slab)
        self.sw_batch_size = max(1, int(sw_batch_size))
        self.divisible = max(1, int(divisible))

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        if inputs.ndim != 5 or inputs.shape[1] != 1:
            raise ValueError(f"SlabSliceInferer expects a (B, 1, H, W, D) volume, got {tuple(inputs.shape)}")
        b, _, h, w, depth = inputs.shape
        ph, pw = (-h) % self.divisible, (-w) % self.divisible
        volume = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
        out = None
        for k0 in range(0, depth, self.sw_batch_size):
            k1 = min(depth, k0 + self.sw_batch_size)
            x = slab_channels(volume, k0, k1, self.slab)
            if ph or pw:
                x = F.pad(x, (0, pw, 0, ph), mode="replicate")
            y = network(x, *args, **kwargs)[..., :h, :w].float()          # (B * n, C, h, w)
            y = y.reshape(b, k1 - k0, y.shape[1], h, w).permute(0, 2, 3, 4, 1)
            if out is None:
                out = torch.empty((b, y.shape[1], h, w, depth), dtype=torch.float32, device=y.device)
            out[..., k0:k1] = y
        return convert_to_dst_type(out, inputs, dtype=torch.float32)[0]   # keeps a MetaTensor's metadata
