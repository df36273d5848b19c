"""lungnod_ext.inference.slab_inferer: the 2-D U-Net run slice by slice, neighbouring slices as channels."""

from __future__ import annotations

import math

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


def _two_blobs() -> torch.Tensor:
    """(1, 1, 96, 128, 3), slice 1: a faint 10 x 10 px blob (0.6) at rows / columns 20-29 and a bright
    5 x 5 px one (1.0) at rows 60-64, columns 90-94."""
    vol = torch.zeros(1, 1, 96, 128, 3)
    vol[0, 0, 20:30, 20:30, 1] = 0.6
    vol[0, 0, 60:65, 90:95, 1] = 1.0
    return vol


def _bright_wide_blobs(x: torch.Tensor) -> torch.Tensor:
    """A network: logit 5 * brightness - 4.5 where a 6 x 6 box of the centre slice is all > 0.5
    (centre-aligned), else -10."""
    centre = x[:, 1:2]
    full = torch.nn.functional.avg_pool2d((centre > 0.5).float(), 6, stride=1, padding=3)[..., 1:, 1:]
    return torch.where(full > 0.99, 5.0 * centre - 4.5, -10.0)


def test_zoom_threshold_runs_the_zoomed_pass_only_around_what_the_first_pass_flags():
    """Two blobs in a 96 x 128 slice, the network answering blobs at least 6 px wide with their
    brightness: a faint 10 px blob (logit -1.5, p 0.18) and a bright 5 px one (first pass: nothing). With
    zoom_threshold 0.1 only the faint blob's box is zoomed (its flagged 5 x 5 px with roi_margin 8 of
    context, ends on even pixels: 22 x 22 px, run at 1.5 as 33, padded to 64); on the flagged pixels grown
    by zoom_merge_margin 4 the output equals the full two-scale run's exactly; the small blob, which the
    first pass did not flag, stays as the first pass saw it; elsewhere nothing changes. A threshold outside
    (0, 1) is refused."""
    vol = _two_blobs()
    seen = []

    def wide_blobs(x):
        seen.append(tuple(x.shape[-2:]))
        return _bright_wide_blobs(x)

    both = SlabSliceInferer(slab=3, sw_batch_size=8, scales=(1.0, 1.5), roi_margin=8)(vol, wide_blobs)
    seen.clear()
    zoomed = SlabSliceInferer(slab=3, sw_batch_size=8, scales=(1.0, 1.5), roi_margin=8,
                              zoom_threshold=0.1)(vol, wide_blobs)
    assert seen == [(96, 128), (64, 64)]                # the whole slice, then the faint blob's box only
    plain = SlabSliceInferer(slab=3, sw_batch_size=8)(vol, wide_blobs)
    assert both[0, 0, 60:65, 90:95, 1].max() > plain[0, 0, 60:65, 90:95, 1].max() + 1.0   # the full run sees it ...
    torch.testing.assert_close(zoomed[0, 0, 60:65, 90:95], plain[0, 0, 60:65, 90:95])   # ... this one does not
    torch.testing.assert_close(zoomed[0, 0, 18:31, 18:31], both[0, 0, 18:31, 18:31], rtol=0, atol=0)
    assert (zoomed - plain)[0, 0, 18:31, 18:31, 1].max() > 1.0     # ... which differs from the first pass
    outside = torch.ones(96, 128, dtype=torch.bool)
    outside[18:31, 18:31] = False
    assert zoomed[0, 0][outside].sub(plain[0, 0][outside]).abs().max() == 0.0
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="zoom_threshold"):
            SlabSliceInferer(scales=(1.0, 1.5), zoom_threshold=bad)


def test_zoom_roi_adds_places_to_zoom_that_the_first_pass_did_not_flag():
    """The two blobs of the test above: a zoom_roi box around the bright 5 px blob (which the first pass
    does not flag) has the zoomed pass run there too, so both blobs now get what the full two-scale run
    gives them; without zoom_threshold the zoom_roi changes nothing (the whole box is zoomed anyway)."""
    vol = _two_blobs()
    zoom_roi = torch.zeros_like(vol, dtype=torch.uint8)
    zoom_roi[0, 0, 58:67, 88:97, 1] = 1
    wide_blobs = _bright_wide_blobs

    both = SlabSliceInferer(slab=3, sw_batch_size=8, scales=(1.0, 1.5), roi_margin=8)(vol, wide_blobs)
    guided = SlabSliceInferer(slab=3, sw_batch_size=8, scales=(1.0, 1.5), roi_margin=8,
                              zoom_threshold=0.1)(vol, wide_blobs, zoom_roi=zoom_roi)
    torch.testing.assert_close(guided[0, 0, 60:65, 90:95], both[0, 0, 60:65, 90:95], rtol=0, atol=0)
    torch.testing.assert_close(guided[0, 0, 18:31, 18:31], both[0, 0, 18:31, 18:31], rtol=0, atol=0)
    full = SlabSliceInferer(slab=3, sw_batch_size=8, scales=(1.0, 1.5), roi_margin=8)(vol, wide_blobs, zoom_roi=zoom_roi)
    torch.testing.assert_close(full, both, rtol=0, atol=0)
    with pytest.raises(ValueError, match="zoom_roi"):
        SlabSliceInferer(scales=(1.0, 1.5), zoom_threshold=0.1)(vol, wide_blobs, zoom_roi=zoom_roi[..., :2])
    # the same place as a world point in a MetaTensor's metadata (1.5 mm pixels, origin 10 mm): the box of
    # +-6 mm around pixel (62, 92) is 9 x 9 px as above, so the output is the same
    affine = torch.diag(torch.tensor([1.5, 1.5, 2.0, 1.0], dtype=torch.float64))
    affine[:3, 3] = 10.0
    points = torch.full((3, 3), float("nan"), dtype=torch.float64)
    points[0] = torch.tensor([10.0 + 62 * 1.5, 10.0 + 92 * 1.5, 10.0 + 1 * 2.0])
    meta_vol = MetaTensor(vol, affine=affine, meta={"zoom_points_ras": points})
    from_points = SlabSliceInferer(slab=3, sw_batch_size=8, scales=(1.0, 1.5), roi_margin=8, zoom_threshold=0.1,
                                   zoom_point_half_mm=6.0)(meta_vol, wide_blobs)
    torch.testing.assert_close(from_points.as_tensor(), guided, rtol=0, atol=0)


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
    (``infer_lung_boxes``); the mask is cropped and padded with the image, so both share a grid. The
    dot-filter peaks ride in the image's metadata (AddZoomPointsd, before the crop) for the zoomed pass."""
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
    inferer = parser.get_parsed_content("inferer")
    assert inferer.zoom_logit is not None and abs(1.0 / (1.0 + math.exp(-inferer.zoom_logit)) - 0.1) < 1e-9
    assert inferer.roi_margin == 16
    assert parser["evaluator"]["prepare_batch"] == "@prepare_batch"
    transforms = {t["_target_"]: t for t in json.loads((bundle / "configs" / "inference.json").read_text())
                  ["preprocessing"]["transforms"]}
    assert "lung_roi" in transforms["CropForegroundd"]["keys"] and "lung_roi" in transforms["DivisiblePadd"]["keys"]
    # the lung core of the same lung analysis rides along to the candidates on the CT's grid
    assert transforms["lungnod_ext.transforms.lung_mask.LungMaskd"]["core_key"] == "lung_core"
    assert "lung_core" in transforms["CropForegroundd"]["keys"] and "lung_core" in transforms["DivisiblePadd"]["keys"]
    post = {t["_target_"]: t for t in json.loads((bundle / "configs" / "inference.json").read_text())
            ["postprocessing"]["transforms"]}
    back = post["lungnod_ext.transforms.resample.ResampleToReferenced"]
    assert dict(zip(back["keys"], back["mode"]))["lung_core"] == "nearest"
    assert post["lungnod_ext.inference.candidates.ExtractCandidatesd"]["lung_core_key"] == "lung_core"
    order = list(transforms)
    assert order.index("lungnod_ext.transforms.lung_mask.LungMaskd") \
        < order.index("lungnod_ext.inference.zoom_points.AddZoomPointsd") \
        < order.index("lungnod_ext.transforms.hu_window.HUWindowd")            # on the resampled CT, in HU
    parser.update({"infer_lung_boxes": False})
    assert parser.get_parsed_content("prepare_batch", lazy=False) is default_prepare_batch
