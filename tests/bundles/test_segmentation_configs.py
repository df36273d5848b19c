"""The segmentation bundle's config ids for scale augmentation and decoder width: defaults keep the shipped
model's recipe (zoom off, MONAI's decoder widths), overrides take effect."""

from __future__ import annotations

import torch
from monai.bundle import ConfigParser

from lungnod_ext.data.bundle_paths import REPO_ROOT
from lungnod_ext.networks.network_setup import bundle_network

BUNDLE = REPO_ROOT / "bundles" / "lung_nodule_ct_segmentation"


def _zoom(**overrides):
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "train.json")
    parser.update({"bundle_root": str(BUNDLE), **overrides})
    transforms = parser.get_parsed_content("train#random_transforms")
    return next(t for t in transforms if type(t).__name__ == "RandZoomd")


def _crop() -> dict:
    """A 2.5D training crop: image (3, 64, 64) in [0, 1], label (1, 64, 64) with a 20 px nodule (1) and an ignored
    LIDC small mark (255)."""
    image = torch.linspace(0, 1, 64).repeat(3, 64, 1)
    label = torch.zeros(1, 64, 64)
    label[0, 22:42, 22:42] = 1
    label[0, 5:8, 5:8] = 255
    return {"image": image, "label": label}


def test_zoom_is_off_by_default():
    zoom = _zoom()
    zoom.set_random_state(0)
    crop = _crop()
    for _ in range(5):
        out = zoom(_crop())
        assert torch.equal(torch.as_tensor(out["image"]), crop["image"])
        assert torch.equal(torch.as_tensor(out["label"]), crop["label"])


def test_zoom_when_asked_rescales_image_and_label_together_and_keeps_label_values():
    zoom = _zoom(zoom_prob=1.0, zoom_range=[1.5, 1.5])
    zoom.set_random_state(0)
    out = zoom(_crop())
    label = torch.as_tensor(out["label"])
    assert tuple(out["image"].shape) == (3, 64, 64) and tuple(label.shape) == (1, 64, 64)
    assert set(label.unique().tolist()) <= {0.0, 1.0, 255.0}
    # a 20 x 20 nodule zoomed 1.5x in-plane covers about 30 x 30 pixels
    assert 800 <= int((label == 1).sum()) <= 1000


def test_default_decoder_is_the_shipped_network_and_the_width_is_a_config_id():
    default = bundle_network(BUNDLE)
    state = torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)["model"]
    default.load_state_dict(state)          # strict: the shipped checkpoint fits the default exactly
    for config in ("train.json", "inference.json"):
        light = bundle_network(BUNDLE, [f"configs/{config}"], {"decoder_channels": [128, 64, 32, 16, 8]})
        n_light = sum(p.numel() for p in light.parameters())
        assert n_light == 12_083_097 < sum(p.numel() for p in default.parameters()) == 13_545_585


def test_inference_ends_with_a_uint8_mask_at_the_threshold():
    """The last post-processing step (what MONAI Label returns as the label) thresholds the probability map
    at ``threshold`` into uint8 0 / 1: a float32 copy of the full-grid map was a thin-slice scan's largest
    allocation."""
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "inference.json")
    parser.update({"bundle_root": str(BUNDLE), "threshold": 0.4})
    last = parser.get_parsed_content("postprocessing#transforms")[-1]
    assert type(last).__name__ == "AsDiscreted"
    prob = torch.tensor([[[[0.1, 0.39], [0.4, 0.95]]]])
    out = last({"pred": prob})["pred"]
    assert out.dtype == torch.uint8
    assert torch.equal(torch.as_tensor(out), torch.tensor([[[[0, 0], [1, 1]]]], dtype=torch.uint8))
