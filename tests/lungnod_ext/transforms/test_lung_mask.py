"""Lung mask: a synthetic phantom with a known answer, the real LIDC-IDRI-0001 series, the transforms.

The real series is read in place (../shared/data/lidc); under CI=true its absence fails the tests (conftest).
"""

from __future__ import annotations

import logging
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from scipy import ndimage as ndi

from data_prep.nifti_io import write_nifti
from lungnod_ext.transforms.clahe import CLAHEd
from data_prep.coords import Geometry
from lungnod_ext.transforms.hu_window import HUWindowd
from lungnod_ext.transforms.lung_mask import (LungMask, LungMaskd, LungMaskWarning, close_slices_mm, compute_lung_mask,
                                   compute_lung_masks, dilate_mask_mm, fill_holes_per_slice, lung_core_mask,
                                   reverse_axes_3d)

PHANTOM_SPACING_ZYX = (2.5, 0.8, 0.8)
LUNA16_NODULE_LPS = (56.2084, 86.3434, -115.8676)  # LIDC-IDRI-0001's nodule (luna16_annotations.csv), 23.35 mm


def _distance_to_segment(points: np.ndarray, a, b) -> np.ndarray:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ab = b - a
    t = np.clip(((points - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[..., None] * ab), axis=-1)


def make_phantom(junction: bool = False, seed: int = 0):
    """(z, y, x) int16 HU: air -1000, elliptic body 40 HU, two -850 HU ellipsoid lungs (with 40 HU vessels
    inside), a -1000 HU trachea from the top down to a carina and two main bronchi into the lungs, noise 20 HU.

    ``junction``: a thin -850 HU sheet joins the lungs in front of the mediastinum (lungs touching).
    Returns (hu, spacing_zyx, true lungs, trachea above the carina (> 8 mm), lung labels 1/2 by side).
    """
    shape = (64, 200, 280)
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, PHANTOM_SPACING_ZYX)], indexing="ij")
    zc, yc, xc = (np.array(shape) - 1) * np.array(PHANTOM_SPACING_ZYX) / 2
    hu = np.full(shape, -1000.0, dtype=np.float32)
    body = ((y - yc) / 70) ** 2 + ((x - xc) / 105) ** 2 <= 1
    hu[body] = 40
    sides = [((x - (xc + s * 50)) / 30) ** 2 + ((y - yc) / 45) ** 2 + ((z - (zc - 5)) / 55) ** 2 <= 1 for s in (-1, 1)]
    lungs = sides[0] | sides[1]
    if junction:
        lungs |= (np.abs(x - xc) <= 35) & (np.abs(y - (yc - 35)) <= 2) & (np.abs(z - (zc - 5)) <= 20)
    hu[lungs] = -850
    for s in (-1, 1):
        for dz in (-20, 0, 20):
            hu[(x - (xc + s * 50)) ** 2 + (y - yc - 10) ** 2 + (z - zc - dz) ** 2 <= 9] = 40  # 3 mm vessels
    points = np.stack([z, y, x], axis=-1)
    carina = (zc + 25, yc - 5, xc)
    trachea = _distance_to_segment(points, carina, (shape[0] * PHANTOM_SPACING_ZYX[0] + 10, yc - 5, xc)) <= 8
    bronchi = np.zeros(shape, dtype=bool)
    for s in (-1, 1):
        bronchi |= _distance_to_segment(points, carina, (zc + 5, yc - 5, xc + s * 48)) <= 5
    hu[trachea | bronchi] = -1000
    hu += np.random.default_rng(seed).normal(0, 20, shape).astype(np.float32)
    return hu.astype(np.int16), PHANTOM_SPACING_ZYX, lungs, trachea & (z >= carina[0] + 8)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def phantom():
    return make_phantom()


# ------------------------------------------------------------------------------------------------ phantom
def test_phantom_lungs_found_trachea_excluded(phantom):
    hu, spacing, lungs, trachea = phantom
    mask = compute_lung_mask(hu, spacing)
    assert mask.dtype == np.uint8 and mask.shape == hu.shape and set(np.unique(mask)) == {0, 1}
    assert _dice(mask, lungs) > 0.97
    assert trachea.sum() > 3000 and (mask.astype(bool) & trachea).sum() == 0
    labels, n = ndi.label(mask)
    volumes_ml = np.bincount(labels.ravel())[1:] * np.prod(spacing) / 1000
    assert n == 2 and np.all(np.abs(volumes_ml - 311) < 15), volumes_ml  # 4/3 pi 30 45 55 mm^3 = 311 mL each
    vessel_zyx = np.round(np.array([hu.shape[0] / 2 - 0.5, 99.5 + 10 / 0.8, 139.5 + 50 / 0.8])).astype(int)
    assert hu[tuple(vessel_zyx)] > -200 and mask[tuple(vessel_zyx)] == 1  # vessels inside the lung are filled


def test_phantom_touching_lungs_are_split_in_two(caplog):
    hu, spacing, lungs, trachea = make_phantom(junction=True)
    with caplog.at_level(logging.DEBUG, logger="lungnod_ext.transforms.lung_mask"):
        mask = compute_lung_mask(hu, spacing)
    assert "split by erosion" in caplog.text
    assert _dice(mask, lungs) > 0.97 and (mask.astype(bool) & trachea).sum() == 0
    labels, n = ndi.label(mask)
    sizes = np.bincount(labels.ravel())[1:]
    assert n == 2 and sizes.min() > 0.45 * sizes.sum()
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="lungnod_ext.transforms.lung_mask"):  # erosion not allowed deep enough
        mask = compute_lung_mask(hu, spacing, max_split_mm=1.6)
    assert "at the midline" in caplog.text
    assert _dice(mask, lungs) > 0.97 and ndi.label(mask)[1] == 2


def test_phantom_clahe_otsu_binarisation_agrees(phantom):
    hu, spacing, lungs, trachea = phantom
    mask = compute_lung_mask(hu, spacing, binarise="clahe_otsu")
    assert _dice(mask, lungs) > 0.95 and (mask.astype(bool) & trachea).sum() == 0


def test_no_lungs_gives_empty_mask_and_a_warning():
    body = np.full((20, 64, 64), -1000, dtype=np.int16)
    body[:, 8:56, 8:56] = 40
    for volume in (body, np.full((20, 64, 64), -1000, dtype=np.int16), np.zeros((20, 64, 64), dtype=np.int16)):
        with pytest.warns(LungMaskWarning):
            mask = compute_lung_mask(volume, (2.5, 0.8, 0.8))
        assert mask.shape == volume.shape and mask.dtype == np.uint8 and mask.sum() == 0


def test_bad_arguments_raise(phantom):
    hu, spacing, _, _ = phantom
    with pytest.raises(ValueError):
        compute_lung_mask(hu[0], spacing)
    with pytest.raises(ValueError):
        compute_lung_mask(hu, (0.8, 0.8))
    with pytest.raises(ValueError):
        compute_lung_mask(hu, spacing, binarise="kmeans")


def test_dilation_is_an_ellipsoid_in_mm():
    mask = np.zeros((21, 41, 41), dtype=bool)
    mask[10, 20, 20] = True
    grown = dilate_mask_mm(mask, (2.5, 1.0, 0.5), 5.0)
    z, y, x = np.nonzero(grown)
    assert (z.min(), z.max()) == (8, 12) and (y.min(), y.max()) == (15, 25) and (x.min(), x.max()) == (10, 30)
    assert not grown[12, 25, 20] and grown[12, 20, 20]  # corner of the box is outside the ellipsoid
    assert np.array_equal(dilate_mask_mm(mask, (2.5, 1.0, 0.5), 0.0), mask)


def test_lung_core_takes_in_juxta_pleural_bites_not_the_mediastinum():
    """A 10 mm solid nodule on the lateral pleura takes a bite out of the air mask; the 15 mm-closed lung
    core fills it, while the mediastinum between the lungs (40 mm wide) and the chest wall stay out."""
    hu, spacing, lungs, _ = make_phantom()
    shape = hu.shape
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    zc, yc, xc = (np.array(shape) - 1) * np.array(spacing) / 2
    wall_x = xc + 50 + 30                                       # the right lung's lateral edge at its centre
    nodule = ((z - (zc - 5)) ** 2 + (y - yc) ** 2 + (x - wall_x) ** 2 <= 5.0 ** 2) & lungs
    hu = hu.copy()
    hu[nodule] = 40
    air_mask = compute_lung_mask(hu, spacing).astype(bool)
    core = lung_core_mask(hu, spacing, closing_mm=15.0).astype(bool)
    assert (air_mask & nodule).mean() < 0.05 * nodule.mean()   # the air mask leaves the bite out
    # the core takes it in, but for the voxel column on the pleura itself (the air mask's own edge there)
    assert (core & nodule).sum() >= 0.7 * nodule.sum()
    assert not (air_mask & ~core).any()                        # closing only adds
    mediastinum = (np.abs(x - xc) <= 5) & (np.abs(y - yc) <= 5) & (np.abs(z - (zc - 5)) <= 5)
    assert not (core & mediastinum).any()
    chest_wall = (x > wall_x + 8) & (np.abs(y - yc) <= 5) & (np.abs(z - (zc - 5)) <= 5) & (hu > -500)
    assert chest_wall.any() and not (core & chest_wall).any()
    assert lung_core_mask(hu, spacing, closing_mm=0.0).astype(bool).tolist() == air_mask.tolist()
    with pytest.warns(LungMaskWarning):
        assert not lung_core_mask(np.full((8, 32, 32), 40, np.int16), (2.5, 1.0, 1.0)).any()



def test_lung_mask_transform_gives_the_core_from_the_same_analysis():
    """LungMaskd(core_key=...): the grown mask as without it, and beside it the air mask (compute_lung_masks'
    second output, before dilate_mm) closed slice by slice: the juxta-pleural nodule's bite is in that core,
    the mediastinum is not; the core is never grown by dilate_mm."""
    hu, spacing, lungs, _ = make_phantom()
    shape = hu.shape
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    zc, yc, xc = (np.array(shape) - 1) * np.array(spacing) / 2
    nodule = ((z - (zc - 5)) ** 2 + (y - yc) ** 2 + (x - (xc + 80)) ** 2 <= 5.0 ** 2) & lungs
    hu = hu.copy()
    hu[nodule] = 40
    grown, air = compute_lung_masks(hu, spacing, dilate_mm=10.0)
    assert np.array_equal(air, compute_lung_mask(hu, spacing))
    assert np.array_equal(grown, compute_lung_mask(hu, spacing, dilate_mm=10.0)) and grown.sum() > 1.2 * air.sum()
    affine = torch.diag(torch.tensor([-spacing[2], -spacing[1], spacing[0], 1.0], dtype=torch.float64))
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(hu.transpose(2, 1, 0))[None]), affine=affine)
    out = LungMaskd(keys="image", output_key="roi", dilate_mm=10.0, core_key="core", core_closing_mm=15.0)(
        {"image": image})
    assert isinstance(out["core"], MetaTensor) and out["core"].dtype == torch.uint8
    assert np.array_equal(out["roi"].numpy()[0].transpose(2, 1, 0), grown)
    core = out["core"].numpy()[0].transpose(2, 1, 0).astype(bool)
    assert np.array_equal(core, close_slices_mm(air, spacing[1:], 15.0).astype(bool))
    assert (core & nodule).sum() >= 0.7 * nodule.sum() and not (air.astype(bool) & ~core).any()
    mediastinum = (np.abs(x - xc) <= 5) & (np.abs(y - yc) <= 5) & (np.abs(z - (zc - 5)) <= 5)
    assert not (core & mediastinum).any()
    assert np.array_equal(close_slices_mm(air, spacing[1:], 0.0), air)
    # pixels finer than pixel_mm are closed on every f-th row and column: 0.8 mm pixels with pixel_mm 1.6
    # -> every 2nd; the result still holds the mask, fills the bite and stays out of the mediastinum
    coarse = close_slices_mm(air, spacing[1:], 15.0, pixel_mm=1.6).astype(bool)
    assert not (air.astype(bool) & ~coarse).any()
    assert 2 * (coarse & core).sum() / (coarse.sum() + core.sum()) > 0.98
    assert (coarse & nodule).sum() >= 0.7 * nodule.sum() and not (coarse & mediastinum).any()
    with pytest.raises(ValueError, match="core_key"):
        LungMaskd(keys=["image", "ct"], output_key=["m1", "m2"], core_key="core")


def test_fill_holes_per_slice_fills_enclosed_background_only():
    mask = np.zeros((2, 9, 9), dtype=bool)
    mask[0, 2:7, 2:7] = True
    mask[0, 4, 4] = False  # enclosed: filled
    mask[1, 2:7, 2:7] = True
    mask[1, 4, 2:5] = False  # open to the outside: kept
    filled = fill_holes_per_slice(mask)
    assert filled[0, 4, 4] and filled[0].sum() == 25
    assert np.array_equal(filled[1], mask[1])


# ------------------------------------------------------------------------------------------------ transforms
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.float64, bool])
def test_reverse_axes_3d_equals_numpy_transpose(dtype):
    volume = (np.random.default_rng(0).random((5, 7, 3)) * 100).astype(dtype)
    out = reverse_axes_3d(volume)
    assert out.dtype == volume.dtype and out.flags.c_contiguous
    assert np.array_equal(out, volume.transpose(2, 1, 0))
    assert np.array_equal(reverse_axes_3d(volume[:, ::2]), volume[:, ::2].transpose(2, 1, 0))  # strided input


def test_lungmask_transform_on_channel_first_arrays(phantom):
    hu, spacing, lungs, _ = phantom
    expected = compute_lung_mask(hu, spacing).transpose(2, 1, 0)[None]  # (1, X, Y, Z)
    image_xyz = np.ascontiguousarray(hu.transpose(2, 1, 0))[None]
    spacing_xyz = spacing[::-1]
    out = LungMask(spacing_mm=spacing_xyz)(image_xyz)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and np.array_equal(out, expected)
    affine = torch.diag(torch.tensor([-spacing_xyz[0], -spacing_xyz[1], spacing_xyz[2], 1.0], dtype=torch.float64))
    meta_image = MetaTensor(torch.from_numpy(image_xyz), affine=affine, meta={"filename_or_obj": "phantom.nii.gz"})
    meta_out = LungMask()(meta_image)  # spacing from the affine
    assert isinstance(meta_out, MetaTensor) and meta_out.dtype == torch.uint8
    torch.testing.assert_close(meta_out.affine, affine)
    assert meta_out.meta["filename_or_obj"] == "phantom.nii.gz"
    assert np.array_equal(meta_out.numpy(), expected)
    plain = LungMask(spacing_mm=spacing_xyz)(torch.from_numpy(image_xyz))
    assert type(plain) is torch.Tensor and np.array_equal(plain.numpy(), expected)
    with pytest.raises(ValueError):
        LungMask()(image_xyz)  # no spacing, no affine
    with pytest.raises(ValueError):
        LungMask(spacing_mm=spacing_xyz)(np.concatenate([image_xyz, image_xyz]))  # two channels


def test_dictionary_pipeline_from_nifti(phantom, tmp_path):
    """LoadImaged -> (1, X, Y, Z) as the docs say; LungMaskd, HUWindowd and CLAHEd chain on it."""
    hu, spacing, lungs, _ = phantom
    geometry = Geometry(origin=(-110.0, -80.0, -300.0), spacing=spacing[::-1], shape=hu.shape[::-1])
    path = write_nifti(tmp_path / "phantom.nii.gz", hu, geometry)
    pipeline = Compose([
        LoadImaged(keys="image", image_only=True), EnsureChannelFirstd(keys="image"),
        LungMaskd(keys="image", output_key="lung_mask", dilate_mm=3.0),
        HUWindowd(keys="image", preset="lung"), CLAHEd(keys=["image", "absent"], allow_missing_keys=True),
    ])
    out = pipeline({"image": str(path)})
    image, mask = out["image"], out["lung_mask"]
    assert image.shape == mask.shape == (1,) + hu.shape[::-1]
    assert mask.dtype == torch.uint8 and image.dtype == torch.float32
    np.testing.assert_allclose(mask.affine.numpy(), nib.load(path).affine, atol=1e-5)
    undilated = compute_lung_mask(hu, spacing).astype(bool)
    mask_zyx = mask.numpy()[0].transpose(2, 1, 0).astype(bool)
    assert (mask_zyx & undilated).sum() == undilated.sum() and mask_zyx.sum() > 1.1 * undilated.sum()
    with pytest.raises(ValueError):
        LungMaskd(keys=["image", "other"], output_key="lung_mask")
    missing = LungMaskd(keys=["image", "ct"], output_key=["m1", "m2"], spacing_mm=spacing[::-1],
                        allow_missing_keys=True)({"image": hu.transpose(2, 1, 0)[None]})
    assert set(missing) == {"image", "m1"}


# ------------------------------------------------------------------------------------------------ real CT
@pytest.fixture(scope="module")
def lidc_ct(lidc_series_dir):
    """LIDC-IDRI-0001 as (z, y, x) int16 HU (slices sorted by ImagePositionPatient z, < -1024 clipped), geometry."""
    import pydicom
    import SimpleITK as sitk

    files = sorted(lidc_series_dir.glob("*.dcm"), key=lambda f: float(pydicom.dcmread(
        f, stop_before_pixels=True, specific_tags=["ImagePositionPatient"]).ImagePositionPatient[2]))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    image = reader.Execute()
    hu = np.maximum(sitk.GetArrayFromImage(image), -1024).astype(np.int16)
    return hu, Geometry.from_sitk(image)


@pytest.fixture(scope="module")
def lidc_mask(lidc_ct):
    hu, geometry = lidc_ct
    spacing_zyx = geometry.spacing[::-1]
    compute_lung_mask(hu, spacing_zyx)  # warm-up: the first call pays page faults for fresh buffers
    start = time.perf_counter()
    mask = compute_lung_mask(hu, spacing_zyx)
    return mask, time.perf_counter() - start


def test_lidc_two_lungs_of_plausible_volume(lidc_ct, lidc_mask):
    hu, geometry = lidc_ct
    mask, seconds = lidc_mask
    assert hu.shape == (133, 512, 512)
    labels, n = ndi.label(mask)
    litres = np.sort(np.bincount(labels.ravel())[1:] * geometry.voxel_volume_mm3 / 1e6)[::-1]
    assert litres[0] > 0.5 and litres[1] > 0.5, litres  # measured 1.96 L and 1.72 L
    assert litres[2:].sum() < 0.02  # nothing else of note
    assert 2.0 < mask.sum() * geometry.voxel_volume_mm3 / 1e6 < 8.0  # measured 3.69 L
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    (_, _, x_first), (_, _, x_second) = ndi.center_of_mass(mask, labels, np.argsort(sizes)[::-1][:2])
    assert abs(x_first - x_second) * geometry.spacing[0] > 100  # one lung each side: centroids > 10 cm apart
    assert seconds < 6.0, f"lung mask took {seconds:.2f} s"  # measured ~0.6 s warm on 2 cores


def test_lidc_mask_excludes_body_wall(lidc_ct, lidc_mask):
    hu, _ = lidc_ct
    mask = lidc_mask[0].astype(bool)
    assert (hu[mask] > -300).mean() < 0.02  # measured 0.010 (vessel interiors filled in)
    assert np.median(hu[mask]) < -750


def _track_trachea(hu: np.ndarray, n_slices: int = 24) -> np.ndarray:
    """Trachea lumen (< -900 HU) from the top slices down, found without the lung-mask code: in the most
    superior slice that has one, the 50-400 mm^2 air region closest to the image centre (within 40 mm), then
    in each lower slice the air region overlapping it, while it stays 50-400 mm^2."""
    pixel_mm2 = 0.703125**2
    trachea = np.zeros(hu.shape, dtype=bool)
    previous = None
    for k in range(hu.shape[0] - 1, hu.shape[0] - 1 - n_slices, -1):  # last index = most superior
        labels, n = ndi.label(hu[k] < -900)
        areas = np.bincount(labels.ravel()) * pixel_mm2
        if previous is None:
            centres = ndi.center_of_mass(np.ones_like(labels), labels, range(1, n + 1))
            fits = [(np.hypot(cy - 255.5, cx - 255.5) * 0.703125, lab) for lab, (cy, cx) in enumerate(centres, 1)
                    if 50 <= areas[lab] <= 400]
            fits = [f for f in fits if f[0] < 40]
            if not fits:
                continue
            chosen = min(fits)[1]
        else:
            under = labels[previous & (labels > 0)]
            if under.size == 0:
                break
            chosen = np.bincount(under).argmax()
            if not 50 <= areas[chosen] <= 400:
                break
        previous = labels == chosen
        trachea[k] = previous
    return trachea


def test_lidc_mask_excludes_trachea(lidc_ct, lidc_mask):
    hu, _ = lidc_ct
    trachea = _track_trachea(hu)
    slices = np.flatnonzero(trachea.any(axis=(1, 2)))
    assert len(slices) >= 20, slices  # a 50+ mm stretch of trachea above the carina
    assert (lidc_mask[0].astype(bool) & trachea).sum() == 0


def test_lidc_nodule_is_covered_after_dilation(lidc_ct):
    """The LUNA16 nodule (23 mm, juxta-pleural) sits partly outside the plain mask; dilate_mm=8 covers it."""
    hu, geometry = lidc_ct
    spacing_zyx = geometry.spacing[::-1]
    i, j, k = np.rint(geometry.world_to_voxel(LUNA16_NODULE_LPS)).astype(int)
    assert (i, j, k) == (316, 367, 90)
    box = np.s_[k - 6:k + 7, j - 25:j + 26, i - 25:i + 26]
    kk, jj, ii = np.mgrid[box]
    dist_mm = np.linalg.norm(geometry.voxel_to_world(np.stack([ii, jj, kk], -1)) - LUNA16_NODULE_LPS, axis=-1)
    nodule = dist_mm <= 23.35 / 2
    plain = compute_lung_mask(hu, spacing_zyx)[box].astype(bool)
    grown = compute_lung_mask(hu, spacing_zyx, dilate_mm=8.0)[box].astype(bool)
    assert plain[nodule].mean() < 0.6  # measured 0.40: the plain mask stops at the nodule's surface
    assert grown[nodule].mean() > 0.99 and grown[6, 25, 25]  # nodule centre and whole sphere covered


def test_lidc_clahe_otsu_matches_hu_threshold(lidc_ct, lidc_mask):
    hu, geometry = lidc_ct
    mask = compute_lung_mask(hu, geometry.spacing[::-1], binarise="clahe_otsu")
    assert _dice(mask, lidc_mask[0]) > 0.95  # measured 0.98


def test_lidc_transform_matches_pure_function(lidc_ct, lidc_mask):
    """As MONAI holds the NIfTI: (1, X, Y, Z) MetaTensor with the RAS affine; same mask, transposed."""
    hu, geometry = lidc_ct
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(hu.transpose(2, 1, 0))[None]),
                       affine=torch.as_tensor(geometry.affine_ras()))
    out = LungMask()(image)
    assert out.shape == (1, 512, 512, 133)
    assert np.array_equal(out.numpy()[0].transpose(2, 1, 0), lidc_mask[0])
