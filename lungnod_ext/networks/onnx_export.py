"""2-D segmentation networks to ONNX, for slice streams served by ONNX Runtime.

The file takes ``image`` (N, C, H, W) float32 and gives ``logits`` (N, out_channels, H, W) float32 (apply a
sigmoid for probabilities); N is dynamic, C, H and W are fixed at export. Exported with the TorchScript
exporter (``dynamo=False``, needs the ``onnx`` package). MONAI's shortcut-"A" ResNets (resnet10/18/34
encoders, the shipped 2.5D U-Net) build their downsampling residual from ``out.data``, which the tracer
records as a constant: the file would add the example input's residual for every input (the shipped
network's logits off by 4.7) and fail at any other batch size. It is swapped for an equal traceable residual
while exporting.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from data_prep.nifti_io import atomic_path


def _zero_pad_shortcut(x: torch.Tensor, planes: int, stride: int, spatial_dims: int = 3) -> torch.Tensor:
    """MONAI ``ResNet._downsample_basic_block`` without ``.data``: 1-voxel average pooling with ``stride``,
    channels zero-padded to ``planes``."""
    out = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[spatial_dims - 1](x, 1, stride)
    return F.pad(out, (0, 0) * spatial_dims + (0, planes - out.shape[1]))


@contextmanager
def _traceable_shortcuts(network: torch.nn.Module):
    """Within the block, MONAI shortcut-"A" residuals of ``network`` are :func:`_zero_pad_shortcut`."""
    from monai.networks.nets.resnet import ResNet

    swapped = []
    for block in network.modules():
        down = getattr(block, "downsample", None)
        if isinstance(down, partial) and getattr(down.func, "__func__", None) is ResNet._downsample_basic_block:
            swapped.append((block, down))
            block.downsample = partial(_zero_pad_shortcut, **down.keywords)
    try:
        yield
    finally:
        for block, down in swapped:
            block.downsample = down


def export_onnx(network: torch.nn.Module, path, in_channels: int, spatial_size=(224, 224), opset: int = 17) -> Path:
    """Write ``network`` (2-D, eval mode; its training flag is restored after) to the ONNX file ``path``,
    atomically: input ``image`` (N, ``in_channels``, *``spatial_size``), output ``logits`` (N, C_out, H, W),
    N dynamic. Returns ``path``."""
    path = Path(path)
    device = next(network.parameters()).device
    example = torch.zeros(1, in_channels, *spatial_size, device=device)
    was_training = network.training
    network.eval()
    try:
        with _traceable_shortcuts(network), atomic_path(path) as tmp, torch.no_grad():
            torch.onnx.export(network, (example,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    finally:
        network.train(was_training)
    return path


def onnx_session(path, threads: int = 1):
    """An ONNX Runtime CPU ``InferenceSession`` for ``path`` with ``threads`` intra-op threads; run it as
    ``session.run(None, {"image": x})[0]``, x a float32 (N, C, H, W) array -> logits."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
