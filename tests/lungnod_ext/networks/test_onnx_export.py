"""export_onnx: the shipped 2.5D U-Net (ResNet-18, shortcut "A") and the reference 2D ResNet-50 U-Net give
ONNX Runtime the same outputs as torch at another batch size than the export's, written atomically."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.networks.nets import FlexibleUNet

from lungnod_ext.networks.network_setup import bundle_network
from lungnod_ext.networks.onnx_export import export_onnx, onnx_session

BUNDLE = Path(__file__).resolve().parents[3] / "bundles" / "lung_nodule_ct_segmentation"


def _shipped() -> torch.nn.Module:
    net = bundle_network(BUNDLE)
    net.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)["model"])
    return net


def _reference() -> torch.nn.Module:
    torch.manual_seed(0)
    return FlexibleUNet(in_channels=1, out_channels=1, backbone="resnet50", pretrained=False, spatial_dims=2)


@pytest.mark.parametrize("make, in_channels", [(_shipped, 3), (_reference, 1)], ids=["shipped_2p5d", "reference_2d"])
def test_onnx_runtime_gives_torch_outputs(tmp_path, make, in_channels):
    net = make().train()
    shortcuts = [m.downsample for m in net.modules() if hasattr(m, "downsample")]
    path = export_onnx(net, tmp_path / "seg.onnx", in_channels)
    assert net.training and [m.downsample for m in net.modules() if hasattr(m, "downsample")] == shortcuts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.onnx"]   # no temporary left

    x = torch.rand(2, in_channels, 224, 224, generator=torch.Generator().manual_seed(1))
    logits = torch.from_numpy(onnx_session(path, threads=2).run(None, {"image": x.numpy()})[0])
    with torch.inference_mode():
        expected = net.eval()(x)
    assert logits.shape == expected.shape == (2, 1, 224, 224)
    assert float((logits.sigmoid() - expected.sigmoid()).abs().max()) <= 1e-4
    # the shipped net's sigmoid saturates on noise: a wrong residual (logits off by 4.7) stays below 1e-4 there
    assert float((logits - expected).abs().max()) <= 1e-3
