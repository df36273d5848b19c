"""ResampleToReference and SpacingFast: the separable path gives MONAI's grid_sample result (ResampleToMatch, Invertd) on
axis-parallel grids, oblique grids fall back to grid_sample, metadata comes from the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import (Compose, CropForegroundd, DivisiblePadd, EnsureChannelFirstd, Invertd, Orientationd,
                              ResampleToMatch, Spacingd)

from lungnod_ext.transforms.resample import ResampleToReference, ResampleToReferenced, SpacingFastd, axis_map


def _affine(linear, translation) -> torch.Tensor:
    a = np.eye(4)
    a[:3, :3] = linear
    a[:3, 3] = translation
    return torch.as_tensor(a, dtype=torch.float64)


def _image(shape, affine, seed=0, integer=False, space=None) -> MetaTensor:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 4, (1, *shape), generator=g).to(torch.uint8) if integer else torch.rand((1, *shape), generator=g)
    meta = {"filename_or_obj": f"/data/case{seed}.nii.gz"}
    if space:
        meta["space"] = space
    return MetaTensor(data, affine=affine, meta=meta)


# network grid: 1.5 mm RAS; original grid: 0.7 x 0.7 x 2.5 mm stored LPS-flipped (i -> left, j -> posterior)
SRC = _image((40, 36, 18), _affine(np.diag([1.5, 1.5, 2.5]), [-40.0, -30.0, -20.0]))
DST = _image((96, 88, 20), _affine(np.diag([-0.7, -0.7, 2.5]), [25.0, 28.0, -22.5]), seed=1)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_axis_parallel_matches_grid_sample(mode):
    src = _image(SRC.shape[1:], SRC.affine, integer=mode == "nearest")
    resampler = ResampleToReference(mode)
    ours = resampler(src, DST)
    monai = ResampleToMatch(mode=mode, padding_mode="zeros")(src, img_dst=DST)
    assert resampler.last_path == "separable"
    assert ours.shape == DST.shape and ours.dtype == src.dtype  # a uint8 mask stays uint8 (MONAI returns float)
    inside = (monai != 0).sum().item()
    assert 0.2 * ours.numel() < inside < ours.numel()  # the source covers part of the target, not all of it
    if mode == "nearest":
        assert torch.equal(ours.as_tensor().float(), monai.as_tensor())
    else:
        assert torch.allclose(ours.as_tensor(), monai.as_tensor(), atol=1e-5)
    assert torch.allclose(ours.affine, DST.affine) and ours.meta["filename_or_obj"] == DST.meta["filename_or_obj"]


def test_permuted_axes_and_lps_space():
    # target axes run (j, i, k) of the source, one flipped; the source affine is given in LPS
    src = _image((30, 34, 16), _affine(np.diag([1.2, 1.2, 2.0]), [-18.0, -20.0, -16.0]))
    lps = src.affine.clone()
    lps[:2, :] *= -1
    src_lps = MetaTensor(src.as_tensor(), affine=lps, meta={"space": "LPS"})
    dst = _image((44, 40, 20), _affine([[0, 0.9, 0], [-0.8, 0, 0], [0, 0, 1.6]], [-17.0, 15.0, -15.0]), seed=2)
    assert axis_map(src.affine.numpy(), dst.affine.numpy(), dst.shape[1:])[0][0] == 1  # target i runs along source j
    expected = ResampleToMatch(mode="bilinear", padding_mode="zeros")(src, img_dst=dst)
    for image in (src, src_lps):
        ours = ResampleToReference("bilinear")(image, dst)
        assert (expected != 0).float().mean() > 0.3
        assert torch.allclose(ours.as_tensor(), expected.as_tensor(), atol=1e-5)


def test_oblique_grids_fall_back_to_grid_sample():
    t = 0.2
    rotation = [[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]
    dst = _image((40, 40, 16), _affine(np.asarray(rotation) * 1.1, [-30.0, -25.0, -18.0]), seed=3)
    resampler = ResampleToReference("bilinear")
    ours = resampler(SRC, dst)
    assert resampler.last_path == "grid_sample"
    expected = ResampleToMatch(mode="bilinear", padding_mode="zeros")(SRC, img_dst=dst)
    assert (expected != 0).float().mean() > 0.3
    assert torch.allclose(ours.as_tensor(), expected.as_tensor(), atol=1e-6)
    assert torch.allclose(ours.affine, dst.affine)


def test_replaces_invertd_of_the_bundle_preprocessing():
    """The segmentation bundle's spatial chain (RAS, 1.5 mm, crop to a box, divisible pad) inverted by
    Invertd and by ResampleToReferenced: the same probabilities everywhere."""
    rng = np.random.default_rng(4)
    hu = torch.as_tensor(rng.normal(-700, 50, (120, 110, 24)), dtype=torch.float32)
    roi = torch.zeros_like(hu)
    roi[20:90, 15:95, 3:21] = 1
    affine = _affine(np.diag([-0.7, -0.7, 2.5]), [40.0, 35.0, -30.0])
    data = {"image": MetaTensor(hu, affine=affine, meta={"filename_or_obj": "ct.nii.gz"}),
            "roi": MetaTensor(roi, affine=affine)}
    pre = Compose([EnsureChannelFirstd(["image", "roi"], channel_dim="no_channel"),
                   Orientationd(["image", "roi"], axcodes="RAS"),
                   Spacingd(["image", "roi"], pixdim=(1.5, 1.5, -1), mode=("bilinear", "nearest")),
                   CropForegroundd("image", source_key="roi", k_divisible=[32, 32, 1]),
                   DivisiblePadd("image", k=[32, 32, 1])])
    reference = EnsureChannelFirstd("image", channel_dim="no_channel")(dict(data))["image"]
    d = pre(data)
    x = d["image"]
    smooth = torch.sigmoid(torch.sin(torch.arange(x.shape[1])[:, None, None] / 3.0)
                           + torch.cos(torch.arange(x.shape[2])[None, :, None] / 4.0)
                           + torch.arange(x.shape[3])[None, None, :] / 10.0)[None]
    pred = MetaTensor(smooth, affine=x.affine, meta=dict(x.meta))
    inverted = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)({**d, "pred": pred})["pred"]
    ours = ResampleToReferenced("pred", reference_key="ct_hu")({"pred": pred, "ct_hu": reference})["pred"]
    assert ours.shape == inverted.shape == reference.shape
    assert (inverted > 0).float().mean() > 0.4
    assert torch.allclose(ours.as_tensor(), inverted.as_tensor(), atol=1e-5)
    assert torch.allclose(ours.affine, reference.affine)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="mode"):
        ResampleToReference("bicubic")
    with pytest.raises(ValueError, match="MetaTensor"):
        ResampleToReference()(torch.zeros(1, 4, 4, 4), DST)
    with pytest.raises(KeyError, match="ct_hu"):
        ResampleToReferenced("pred", reference_key="ct_hu")({"pred": SRC})


def test_bundle_preprocessing_on_lidc_inverted_the_same(lidc_converted):
    """LIDC-IDRI-0001 through the segmentation bundle's own pre-processing (real LPS-stored grid, real lung
    crop): a prediction on the network grid comes back identical through Invertd and ResampleToReferenced."""
    from monai.bundle import ConfigParser

    from lungnod_ext.apps.pipeline import SEG_BUNDLE

    image = str(next((lidc_converted / "images").glob("*.nii.gz")))
    parser = ConfigParser()
    parser.read_config(str(SEG_BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(SEG_BUNDLE), "datalist": [{"image": image}]})
    pre = parser.get_parsed_content("preprocessing")
    d = pre({"image": image})
    x = d["image"]
    assert x.shape[1:3] != d["ct_hu"].shape[1:3]  # resampled and cropped
    i, j, k = (torch.arange(n, dtype=torch.float32) for n in x.shape[1:])
    blobs = torch.sin(i[:, None, None] / 7.0) * torch.cos(j[None, :, None] / 5.0) + torch.sin(k[None, None, :] / 9.0)
    pred = MetaTensor(torch.sigmoid(4 * blobs)[None], affine=x.affine, meta=dict(x.meta))
    inverted = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)({**d, "pred": pred})["pred"]
    resampled = ResampleToReferenced("pred", reference_key="ct_hu")({"pred": pred, "ct_hu": d["ct_hu"]})["pred"]
    assert resampled.shape == inverted.shape == d["ct_hu"].shape
    assert 0.05 < float((inverted >= 0.5).float().mean()) < 0.5
    assert float((resampled.as_tensor() - inverted.as_tensor()).abs().max()) < 1e-5
    assert torch.equal(resampled.as_tensor() >= 0.5, inverted.as_tensor() >= 0.5)


@pytest.mark.parametrize("pixdim", [(1.5, 1.5, 2.0), (1.5, 1.5, -1), (0.9, 1.3, 1.1)])
def test_spacing_fast_matches_monai_spacing(pixdim):
    """Same grid (affine, shape) and the same values as MONAI's Spacingd (border padding), for a CT stored
    LPS-flipped (x, y reversed by Orientationd to RAS), trilinear for the image and nearest for a mask."""
    rng = np.random.default_rng(5)
    hu = torch.as_tensor(rng.normal(-700, 200, (70, 64, 23)), dtype=torch.float32)
    roi = (torch.as_tensor(rng.random((70, 64, 23))) > 0.6).float()
    affine = _affine(np.diag([-0.7, -0.8, 1.25]), [40.0, 35.0, -30.0])
    data = {"image": MetaTensor(hu, affine=affine, meta={"filename_or_obj": "ct.nii.gz"}),
            "roi": MetaTensor(roi, affine=affine), "image_path": "ct.nii.gz"}
    pre = Compose([EnsureChannelFirstd(["image", "roi"], channel_dim="no_channel"),
                   Orientationd(["image", "roi"], axcodes="RAS")])
    d = pre(data)
    theirs = Spacingd(["image", "roi"], pixdim=pixdim, mode=("bilinear", "nearest"))(
        {k: v for k, v in d.items() if k != "image_path"})
    fast = SpacingFastd(["image", "roi"], pixdim=pixdim, mode=("bilinear", "nearest"))
    ours = fast(dict(d))
    assert all(r.last_path == "separable" for r in fast.resamplers)
    assert ours["image_path"] == "ct.nii.gz"          # MONAI Label's string entry is left alone
    for key, atol in (("image", 1e-3), ("roi", 0.0)):
        assert ours[key].shape == theirs[key].shape
        assert torch.allclose(ours[key].affine.double(), theirs[key].affine.double(), atol=1e-9)
        assert torch.allclose(ours[key].as_tensor(), theirs[key].as_tensor(), atol=atol)
    back = fast.inverse(ours)             # Invertd-style: the recorded Spacing operation undone
    assert back["image"].shape == d["image"].shape and torch.allclose(back["image"].affine.double(), d["image"].affine.double())
