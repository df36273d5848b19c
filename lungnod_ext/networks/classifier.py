"""The stage-2 patch classifier: nodule vs non-nodule.

The reference design's CNN: conv blocks (two 3x3 convolutions with batch norm and ReLU, then max
pooling), dropout, and a fully connected head, one logit out. ``spatial_dims`` 2 takes axial patches
``(B, 1, H, W)`` (the reference: 64 x 64 at 1 mm), 3 takes cubes ``(B, 1, D, H, W)`` (default 32^3 at
1.25 mm). Any patch size works (global average pooling before the head). Output: ``(B, out_channels)``
logits; apply a sigmoid for the nodule probability. TorchScript-able (``torch.jit.script`` and trace).

:class:`NoduleCNNEnsemble` averages the logits of several such networks trained apart (the same data, other
seeds): one network's ranking of candidates moves a lot from one training run to the next, the mean of a
few moves much less. It loads a single :class:`NoduleCNN`'s checkpoint as an ensemble of one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_GAP = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


def _block(dims: int, c_in: int, c_out: int, dropout: float) -> nn.Sequential:
    conv, norm = _CONV[dims], _NORM[dims]
    layers: list[nn.Module] = [conv(c_in, c_out, 3, padding=1, bias=False), norm(c_out), nn.ReLU(inplace=True),
                               conv(c_out, c_out, 3, padding=1, bias=False), norm(c_out), nn.ReLU(inplace=True),
                               _POOL[dims](2)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class NoduleCNN(nn.Module):
    """Patch classifier (module doc).

    Args:
        spatial_dims: 2 (axial patches) or 3 (cubes).
        in_channels: input channels (1: CT windowed to [0, 1]).
        out_channels: logits (1: nodule).
        channels: feature channels of the conv blocks; each block halves the patch size.
        dropout: dropout after each block (spatial features) and in the head.
        hidden: width of the fully connected layer.
        centre_features: also feed the head the features of the central cells of the last feature map
            (the middle half of each side, averaged) beside the global average: a 3-6 mm nodule at the
            patch centre is a few of 64 x 64 pixels and the global average alone dilutes it with the
            vessels and walls around it. False (the shipped checkpoints): the design's global average only.
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 1,
                 channels: Sequence[int] = (16, 32, 64, 128), dropout: float = 0.3, hidden: int = 64,
                 centre_features: bool = False) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        blocks = []
        c = in_channels
        for i, ch in enumerate(channels):
            blocks.append(_block(spatial_dims, c, int(ch), dropout * 0.5 if i < len(channels) - 1 else dropout))
            c = int(ch)
        self.features = nn.Sequential(*blocks)
        self.pool = _GAP[spatial_dims](1)
        self.centre_features = bool(centre_features)
        head_in = 2 * c if self.centre_features else c
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(head_in, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                  nn.Linear(hidden, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        if not self.centre_features:
            return self.head(self.pool(f))
        return self.head(torch.cat([self.pool(f), self.pool(_centre(f))], dim=1))


class NoduleCNNEnsemble(nn.Module):
    """``members`` :class:`NoduleCNN` s built with the same keyword arguments; output: the mean of their
    logits, ``(B, out_channels)``. State dict keys are ``members.<i>.<NoduleCNN key>``; with ``members=1`` a
    plain NoduleCNN state dict (what ``train.json`` saves) loads too. :func:`ensemble_state_dict` merges
    checkpoints; :func:`lungnod_ext.networks.weights.checkpoint_members` counts a checkpoint's members."""

    def __init__(self, members: int = 1, **kwargs) -> None:
        super().__init__()
        if int(members) < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        self.members = nn.ModuleList([NoduleCNN(**kwargs) for _ in range(int(members))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: list[torch.Tensor] = []
        for member in self.members:
            logits.append(member(x))
        return torch.stack(logits).mean(0)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if len(self.members) == 1 and state_dict and not any(str(k).startswith("members.") for k in state_dict):
            state_dict = {f"members.0.{k}": v for k, v in state_dict.items()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def ensemble_state_dict(states: Sequence[dict]) -> dict:
    """Single :class:`NoduleCNN` state dicts (or ``{"model": state_dict}`` checkpoints) -> one
    :class:`NoduleCNNEnsemble` state dict with them as members 0, 1, ... in that order."""
    merged: dict = {}
    for i, state in enumerate(states):
        state = state.get("model", state) if isinstance(state, dict) else state
        if any(str(k).startswith("members.") for k in state):
            raise ValueError(f"state {i} is already an ensemble; merge single NoduleCNN states")
        merged.update({f"members.{i}.{k}": v for k, v in state.items()})
    return merged


def _centre(f: torch.Tensor) -> torch.Tensor:
    """The middle half of each spatial side of a (B, C, *spatial) feature map (at least one cell)."""
    for axis in range(2, f.ndim):
        n = f.shape[axis]
        k = max(n // 2, 1)
        f = f.narrow(axis, (n - k) // 2, k)
    return f
