"""lungnod_ext.inference.slab_inferer: the 2-D U-Net run slice by slice, neighbouring slices as channels."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from lungnod_ext.inference.slab_inferer import SlabSliceInferer


def test_inferer_is_slice_by_slice_with_neighbours_and_keeps_metadata():
    """A network returning (next slice - previous slice) on odd-sized slices: the inferer pads them to 32,
    crops back, and each output slice sees its own neighbours; MetaTensor metadata survive."""
    torch.manual_seed(0)
    vol = torch.rand(1, 1, 37, 45, 9)
    affine = torch.diag(torch.tensor([1.5, 1.5, 2.0, 1.0], dtype=torch.float64))
    meta_vol = MetaTensor(vol, affine=affine)

    def net(x):
        assert x.shape[1] == 3 and x.shape[2] % 32 == 0 and x.shape[3] % 32 == 0
        return x[:, 2:3] - x[:, 0:1]

    out = SlabSliceInferer(slab=3, sw_batch_size=4)(meta_vol, net)
    assert out.shape == (1, 1, 37, 45, 9)
    expected = torch.cat([vol[..., 1:2] - vol[..., 0:1], vol[..., 2:] - vol[..., :-2], vol[..., 8:9] - vol[..., 7:8]], -1)
    torch.testing.assert_close(out.as_tensor(), expected)
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, affine)


def test_inference_scales_merge_a_zoomed_pass_by_maximum():
    """A network that answers only blobs at least 6 px wide: at scale 1 a 4 px blob gets nothing; with
    scales (1, 1.5) the zoomed pass (6 px) finds it, mapped back onto the blob's pixels; a 10 px blob is
    found either way; the zoomed pass saw 1.5x the slice size, padded to 32."""
    vol = torch.zeros(1, 1, 48, 64, 3)
    vol[0, 0, 10:14, 10:14, 1] = 1.0          # 4 x 4 px
    vol[0, 0, 30:40, 40:50, 1] = 1.0          # 10 x 10 px
    seen = []

    def wide_blobs(x):
        """Logit 1 where a 6 x 6 box is all > 0.5 (centre-aligned), else -1."""
        seen.append(tuple(x.shape[-2:]))
        full = torch.nn.functional.avg_pool2d((x[:, 1:2] > 0.5).float(), 6, stride=1, padding=3)[..., 1:, 1:]
        return torch.where(full > 0.99, 1.0, -1.0)

    plain = SlabSliceInferer(slab=3, sw_batch_size=8)(vol, wide_blobs)
    assert plain[0, 0, 10:14, 10:14, 1].max() == -1.0 and plain[0, 0, 30:40, 40:50, 1].max() == 1.0
    seen.clear()
    both = SlabSliceInferer(slab=3, sw_batch_size=8, scales=(1.0, 1.5))(vol, wide_blobs)
    assert seen == [(64, 64), (96, 96)]                 # 48 x 64 as is, and 72 x 96 padded to 96 x 96
    assert both.shape == (1, 1, 48, 64, 3)
    assert both[0, 0, 10:14, 10:14, 1].max() > 0.0      # the small blob, found by the zoomed pass
    assert both[0, 0, 30:40, 40:50, 1].max() == 1.0
    assert both[0, 0, :5, :, :].max() == -1.0 and both[..., 0].max() == -1.0   # nothing where nothing is
    with pytest.raises(ValueError, match="positive"):
        SlabSliceInferer(scales=(0.0,))


def test_roi_runs_each_batch_on_the_box_around_its_region_only():
    """A region in slices 2-3 of a 10-slice volume (rows 40-49, columns 70-79 of 100 x 120): with
    sw_batch_size 2 and slab 3, batches 0-1 .. 4-5 see it (neighbours count), batches 6-9 do not and are
    never run; the boxes are the region grown by roi_margin 8, then to 32 px; inside them the output is
    that of the plain run (the network here is pixel-wise), outside it is outside_logit. An empty region
    runs everything."""
    torch.manual_seed(0)
    vol = torch.rand(1, 1, 100, 120, 10)
    roi = torch.zeros_like(vol, dtype=torch.bool)
    roi[0, 0, 40:50, 70:80, 2:4] = True
    seen = []

    def pixelwise(x):
        seen.append(tuple(x.shape))
        return 2.0 * x[:, 1:2] - 1.0

    inferer = SlabSliceInferer(slab=3, sw_batch_size=2, roi_margin=8, outside_logit=-30.0)
    plain = inferer(vol, pixelwise)
    seen.clear()
    boxed = inferer(vol, pixelwise, roi=roi)
    assert seen == [(2, 3, 32, 32)] * 3            # 26 x 26 px (10 + 2 x 8) grown to 32, slices 0-5
    rows, cols = slice(29, 61), slice(59, 91)      # centred on the grown region: 32 - 26 = 6 more, 3 a side
    torch.testing.assert_close(boxed[0, 0, rows, cols, :6], plain[0, 0, rows, cols, :6])
    outside = torch.ones_like(boxed, dtype=torch.bool)
    outside[0, 0, rows, cols, :6] = False
    assert torch.all(boxed[outside] == -30.0)
    seen.clear()
    torch.testing.assert_close(inferer(vol, pixelwise, roi=torch.zeros_like(roi)), plain)
    assert len(seen) == 5 and seen[0] == (2, 3, 128, 128)
    with pytest.raises(ValueError, match="grid"):
        inferer(vol, pixelwise, roi=roi[..., :5])


def test_segmentation_inference_config_passes_the_lung_mask_to_the_inferer():
    """inference.json: the evaluator's prepare_batch hands the grown lung mask to the inferer as ``roi``
    (``infer_lung_boxes``); the mask is cropped and padded with the image, so both share a grid."""
    import json
    from pathlib import Path

    from monai.bundle import ConfigParser
    from monai.engines import PrepareBatchExtraInput, default_prepare_batch

    bundle = Path(__file__).resolve().parents[3] / "bundles" / "lung_nodule_ct_segmentation"
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(bundle)})
    prepare = parser.get_parsed_content("prepare_batch")
    assert isinstance(prepare, PrepareBatchExtraInput) and prepare.extra_keys == {"roi": "lung_roi"}
    assert parser.get_parsed_content("inferer").roi_margin == 16
    assert parser["evaluator"]["prepare_batch"] == "@prepare_batch"
    transforms = {t["_target_"]: t for t in json.loads((bundle / "configs" / "inference.json").read_text())
                  ["preprocessing"]["transforms"]}
    assert "lung_roi" in transforms["CropForegroundd"]["keys"] and "lung_roi" in transforms["DivisiblePadd"]["keys"]
    parser.update({"infer_lung_boxes": False})
    assert parser.get_parsed_content("prepare_batch", lazy=False) is default_prepare_batch
