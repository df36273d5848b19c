"""Networks made ready for inference: on the device, in eval mode, in the memory layout that is fastest.

On CPU (oneDNN) and on CUDA GPUs, convolutions run faster on channels-last tensors: for the bundles'
2-D ResNet-50 U-Net over LIDC-IDRI-0001 (113 slices of 192 x 160) on 2 CPU cores, 3.7-4.3 s instead of
4.7-5.8 s, identical outputs (max difference 6e-9). The weights are converted once; inputs may stay
contiguous (PyTorch then picks channels-last for the convolution itself).
"""

from __future__ import annotations

import torch


def memory_format_for(network: torch.nn.Module) -> torch.memory_format:
    """``channels_last`` for a network whose weights are 4-D (2-D convolutions), ``channels_last_3d`` for
    5-D ones (3-D), ``contiguous_format`` for anything else (no convolutions, or mixed)."""
    ranks = {p.ndim for p in network.parameters() if p.ndim >= 4}
    if ranks == {4}:
        return torch.channels_last
    if ranks == {5}:
        return torch.channels_last_3d
    return torch.contiguous_format


def prepare_for_inference(network: torch.nn.Module, device="cpu", channels_last: bool = True) -> torch.nn.Module:
    """``network`` on ``device``, in eval mode, channels-last when ``channels_last`` (see module doc).

    Loading a checkpoint afterwards (``load_state_dict``, MONAI's ``CheckpointLoader``) keeps the layout.
    """
    network = network.to(device)
    if channels_last:
        network = network.to(memory_format=memory_format_for(network))
    return network.eval()
