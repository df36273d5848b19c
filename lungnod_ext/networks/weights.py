"""Pretrained weights from a local file only (lungnod never downloads anything)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


class WeightsError(ValueError):
    """A weights file given in a config is missing or does not fit the network."""


def load_pretrained(network: torch.nn.Module, path, prefixes=("", "encoder.", "backbone.", "module.")) -> dict:
    """Copy the tensors of a local checkpoint into ``network`` where name and shape match.

    ``path``: a ``.pt``/``.pth`` file holding a state dict, ``{"model": state_dict}`` (a bundle
    checkpoint) or ``{"state_dict": ...}``; e.g. torchvision's ImageNet ResNet-50 weights saved to disk.
    Names are tried as they are and with the given prefixes, so an ImageNet ResNet's ``layer1...``
    lands on FlexibleUNet's ``encoder.layer1...``. ``None`` or ``""`` does nothing.
    Returns counts {"loaded", "skipped"}; raises WeightsError if the file is missing or nothing fits.
    """
    if not path:
        return {"loaded": 0, "skipped": 0}
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: pretrained weights file not found (weights are never downloaded)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    target = network.state_dict()
    update, skipped = {}, 0
    for name, tensor in state.items():
        for prefix in prefixes:
            cand = prefix + name
            if cand in target and target[cand].shape == tensor.shape:
                update[cand] = tensor
                break
            # single-channel CT input: average an RGB first convolution over its colour channels
            if cand in target and tensor.ndim == target[cand].ndim and tensor.shape[1] == 3 and target[cand].shape[1] == 1 \
                    and tensor.shape[0] == target[cand].shape[0] and tensor.shape[2:] == target[cand].shape[2:]:
                update[cand] = tensor.mean(dim=1, keepdim=True)
                break
        else:
            skipped += 1
    if not update:
        raise WeightsError(f"{path}: no tensor matches the network by name and shape")
    network.load_state_dict(update, strict=False)
    log.info("loaded %d tensors from %s (%d skipped)", len(update), path, skipped)
    return {"loaded": len(update), "skipped": skipped}


def checkpoint_members(path) -> int:
    """Members of the :class:`lungnod_ext.networks.classifier.NoduleCNNEnsemble` saved in the checkpoint
    ``path`` (``members.<i>.`` keys; 1 for a single network's checkpoint or when there is no file yet, so a
    config that builds its network from it still parses before training)."""
    path = Path(path) if path else None
    if path is None or not path.is_file():
        return 1
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state) if isinstance(state, dict) else {}
    found = {str(k).split(".")[1] for k in state if str(k).startswith("members.") and str(k).count(".") >= 2}
    return max(len(found), 1)
