"""MONAI's ``FlexibleUNet`` with ResNet-18/34 shortcuts that TorchScript tracing records correctly.

MONAI's ResNet-18 and -34 (shortcut type "A") downsample a block's residual with a ``functools.partial`` of
``ResNet._downsample_basic_block``, which concatenates ``out.data`` with zero channels. ``torch.jit.trace``
cannot see through ``.data``: it records the residual of its example input as a constant, so a traced export
(``monai.bundle ckpt_export --use_trace True``, the zoo's route for these encoders, which ``torch.jit.script``
cannot compile) computes wrong features for every other input (found in session 45: logits up to 3.3 apart
on the shipped segmenter). :class:`ZeroPadShortcut` computes the same values with ``detach()`` (so training
is unchanged: no gradient through the shortcut, as in MONAI) as a module both tracing and scripting follow.

:class:`TraceableFlexibleUNet` takes FlexibleUNet's arguments and builds the same network: the same state-dict
keys and outputs (the shortcut holds no weights). Shapes: (B, C, H, W[, D]) -> (B, out_channels, H, W[, D]).
"""

from __future__ import annotations

from functools import partial

import torch
from monai.networks.nets import FlexibleUNet
from torch import nn
from torch.nn import functional as F


class ZeroPadShortcut(nn.Module):
    """The ResNet "A" shortcut: (B, C, *S) -> (B, planes, *S / stride), strided subsampling (MONAI's 1-kernel
    average pooling) with the channels above C zero; the input's part detached, as MONAI's ``out.data``."""

    def __init__(self, planes: int, stride: int, spatial_dims: int):
        super().__init__()
        self.planes, self.stride, self.spatial_dims = int(planes), int(stride), int(spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.avg_pool3d if self.spatial_dims == 3 else F.avg_pool2d if self.spatial_dims == 2 else F.avg_pool1d
        out = pool(x, kernel_size=1, stride=self.stride)
        zeros = torch.zeros(out.size(0), self.planes - out.size(1), *out.shape[2:], dtype=out.dtype, device=out.device)
        return torch.cat([out.detach(), zeros], dim=1)


def make_shortcuts_traceable(net: nn.Module) -> None:
    """Replace every ``functools.partial`` downsample of MONAI's ResNet blocks in ``net`` by a
    :class:`ZeroPadShortcut` with its arguments, in place."""
    for module in net.modules():
        shortcut = getattr(module, "downsample", None)
        if isinstance(shortcut, partial) and getattr(shortcut.func, "__name__", "") == "_downsample_basic_block":
            kw = shortcut.keywords
            module.downsample = ZeroPadShortcut(kw["planes"], kw["stride"], kw.get("spatial_dims", 3))


class TraceableFlexibleUNet(FlexibleUNet):
    """``FlexibleUNet`` (all its arguments) whose ResNet "A" shortcuts are :class:`ZeroPadShortcut` modules."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        make_shortcuts_traceable(self)
