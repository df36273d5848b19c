"""Networks made ready for inference (on the device, in eval mode, in the memory layout that is fastest) or
for training (on the device, channels-last when asked).

On CPU (oneDNN) and on CUDA GPUs, convolutions run faster on channels-last tensors: for the bundles'
2-D ResNet-50 U-Net over LIDC-IDRI-0001 (113 slices of 192 x 160) on 2 CPU cores, 3.7-4.3 s instead of
4.7-5.8 s, identical outputs (max difference 6e-9). The weights are converted once; inputs may stay
contiguous (PyTorch then picks channels-last for the convolution itself).

Training in channels-last (:func:`prepare_for_training`, the segmentation bundle's ``train_channels_last``) is not
bit-identical to the default layout (the losses part in the 4th digit after a few steps) but follows the same
course: 2 epochs of the recipe's 44-volume cohort (session 42, 2 CPU cores, two runs each) took 30.8-35.8 s an
epoch instead of 40.0-53.3 s, mean losses 0.869 / 0.709 against 0.875 / 0.705. For the classifier the gain is small
(one epoch 87.1 against 89.5 s). The segmentation bundle's train.json turns it on (since 0.13.4); the classification
bundle's stays off.
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
    return prepare_for_training(network, device, channels_last).eval()


def init_output_prior(network: torch.nn.Module, prior: float | None = 0.01) -> torch.nn.Module:
    """Set the bias of the network's last convolution so every voxel starts at probability ``prior`` (sigmoid).

    Nodules are a tiny fraction of the voxels. From the default bias (p = 0.5 everywhere) the first steps'
    cross-entropy over the background pushes every weight of the output layer negative; its ReLU'd inputs
    then cannot raise a nodule's logit above the bias, and training stalls with all probabilities below 0.5
    (seen here with the 2.5D U-Net: max probability 0.498 after 180 steps). Starting at a small prior (the
    RetinaNet trick) removes that first push. ``None`` leaves the network as it is. Returns the network.
    """
    if prior is None:
        return network
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior must be within (0, 1), got {prior}")
    convs = [m for m in network.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    if not convs or convs[-1].bias is None:
        raise ValueError("the network has no final convolution with a bias to initialise")
    with torch.no_grad():
        convs[-1].bias.fill_(float(torch.logit(torch.tensor(prior))))
    return network


def bundle_network(bundle, configs=("configs/inference.json",), overrides: dict | None = None) -> torch.nn.Module:
    """The ``network_def`` of a bundle's configs (paths relative to the bundle folder), freshly initialised,
    as MONAI's bundle scripts build it; ``overrides``: config ids -> values."""
    from pathlib import Path

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(Path(bundle) / c) for c in configs])
    parser.update({"bundle_root": str(bundle), **(overrides or {})})
    return parser.get_parsed_content("network_def")


def prepare_for_training(network: torch.nn.Module, device="cpu", channels_last: bool = False) -> torch.nn.Module:
    """``network`` on ``device``, its weights channels-last when ``channels_last`` (module doc; the mode is left
    as it is: :func:`prepare_for_inference` adds eval mode); the checkpoints it writes load into a network of
    either layout (``load_state_dict`` copies values)."""
    network = network.to(device)
    if channels_last:
        network = network.to(memory_format=memory_format_for(network))
    return network
