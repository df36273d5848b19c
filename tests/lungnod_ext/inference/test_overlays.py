"""Overlays: contour drawing, radiological orientation for any axis-aligned grid, candidate PNGs, and a render
of the real LIDC-IDRI-0001 nodule (read in place; under CI=true its absence fails, see conftest)."""

from __future__ import annotations

import cv2
import numpy as np
import pydicom
import pytest
from scipy import ndimage as ndi

from data_prep.masks import sphere_mask
from lungnod_ext.inference.candidates import extract_candidates
from data_prep.coords import Geometry
from lungnod_ext.inference.overlays import CONTOUR_RGB, DisplayOrientation, overlay_slice, write_candidate_overlays

LUNA16_NODULE_LPS = (56.2084, 86.3434, -115.8676)  # LIDC-IDRI-0001 (luna16_annotations.csv)
LUNA16_NODULE_DIAMETER_MM = 23.35


def read_png(path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return bgr[:, :, ::-1]


def contour_pixels(rgb: np.ndarray) -> np.ndarray:
    return np.all(rgb == np.array(CONTOUR_RGB, dtype=np.uint8), axis=-1)


def disk(shape, centre, radius) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


# ------------------------------------------------------------------------------------------------ drawing
def test_overlay_slice_draws_a_contour_not_a_blob():
    hu = np.full((100, 120), -800.0)
    mask = disk(hu.shape, (50, 60), 15)
    hu[mask] = 40
    rgb = overlay_slice(hu, mask)
    assert rgb.shape == (100, 120, 3) and rgb.dtype == np.uint8
    on = contour_pixels(rgb)
    assert on.sum() > 60                                  # about the circumference 2 pi 15 ~ 94
    assert not on[50, 60] and not on[~mask].any()        # outline only, drawn on the mask's boundary pixels
    assert rgb[50, 60].tolist() == [236, 236, 236]        # interior keeps its grey (40 HU in the lung window)
    boundary = mask & ~ndi.binary_erosion(mask)           # mask pixels with a 4-neighbour outside
    assert not on[~boundary].any() and on[boundary].mean() > 0.9
    # no mask / empty mask: plain grey picture
    plain = overlay_slice(hu, None)
    assert np.array_equal(plain[..., 0], plain[..., 1]) and not contour_pixels(plain).any()
    assert not contour_pixels(overlay_slice(hu, np.zeros_like(mask))).any()


def test_overlay_slice_text_scale_bar_and_square_pixels():
    hu = np.full((100, 200), -1000.0)
    rgb = overlay_slice(hu, None, text_lines=["cand 3  p=0.91  12.3 mm"], spacing_mm=(1.0, 0.5))
    assert rgb.shape == (200, 200, 3)                     # rows resampled to 0.5 mm: square pixels
    white = np.all(rgb >= 200, axis=-1)                   # on a black (-1000 HU) background
    assert white[:30, :150].sum() > 50                    # the text line, top left
    assert white[170:, 100:].sum() > 50                   # the scale bar, bottom right
    assert not white[60:140, 20:180].any()
    assert overlay_slice(hu, None, zoom=2.0).shape == (200, 400, 3)
    assert overlay_slice(hu, None, out_shape=(64, 32)).shape == (64, 32, 3)
    with pytest.raises(ValueError, match="differs"):
        overlay_slice(hu, np.zeros((3, 3)))


# ------------------------------------------------------------------------------------------------ orientation
def test_display_orientation_of_standard_flipped_and_swapped_grids():
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4)           # (z, y, x)
    std = DisplayOrientation.from_geometry(Geometry((0, 0, 0), (1, 1, 1), shape=(4, 3, 2)))
    assert std.perm == (0, 1, 2) and std.flip == (False, False, False) and np.array_equal(std.apply(arr), arr)
    flipped = Geometry((0, 0, 0), (0.5, 0.7, 2.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1), (4, 3, 2))
    o = DisplayOrientation.from_geometry(flipped)           # i -> Right, j -> Anterior: flip columns and rows
    assert o.flip == (False, True, True) and np.array_equal(o.apply(arr), arr[:, ::-1, ::-1])
    assert o.spacing == (2.0, 0.7, 0.5)
    assert o.voxel_to_view([0, 0, 1]).tolist() == [1, 2, 3]
    ijk = np.array([[1.5, 2.0, 0.0], [3.0, 0.25, 1.0]])
    assert np.allclose(o.view_to_voxel(o.voxel_to_view(ijk)), ijk)
    swapped = Geometry((0, 0, 0), (1, 1, 1), (0, 1, 0, 1, 0, 0, 0, 0, 1), (4, 3, 2))  # i -> P, j -> L
    s = DisplayOrientation.from_geometry(swapped)
    assert s.perm == (0, 2, 1) and np.array_equal(s.apply(arr), arr.transpose(0, 2, 1))
    assert np.allclose(s.view_to_voxel(s.voxel_to_view(ijk)), ijk)
    oblique = Geometry((0, 0, 0), (1, 1, 1), (0.7071, 0.7071, 0, 0.7071, 0.7071, 0, 0, 0, 1), (4, 3, 2))
    with pytest.raises(ValueError, match="oblique"):
        DisplayOrientation.from_geometry(oblique)


def _phantom(shape_ijk=(96, 80, 12)):
    g = Geometry((-40.0, -30.0, -100.0), (0.8, 0.8, 2.5), shape=shape_ijk)
    hu = np.full(g.shape_zyx, -850, dtype=np.int16)
    hu[:, :, :6] = 40                                       # "mediastinum" on the patient's right side only
    nodule = sphere_mask(g, g.voxel_to_world((70, 30, 6)), 12.0)  # on the patient's left, anterior
    hu[nodule.astype(bool)] = 30
    return g, hu, nodule


def test_flipped_grid_renders_exactly_like_the_standard_one(tmp_path):
    """The same patient stored with i -> Right and j -> Anterior must look the same on screen."""
    g, hu, mask = _phantom()
    ni, nj, _ = g.shape
    g_flip = Geometry(tuple(g.voxel_to_world((ni - 1, nj - 1, 0))), g.spacing, (-1, 0, 0, 0, -1, 0, 0, 0, 1), g.shape)
    hu_flip, mask_flip = hu[:, ::-1, ::-1].copy(), mask[:, ::-1, ::-1].copy()
    assert np.allclose(g_flip.voxel_to_world((0, 0, 0)), g.voxel_to_world((ni - 1, nj - 1, 0)))
    cands = extract_candidates(mask.astype(np.float32), g, hu_zyx=hu)
    cands_flip = extract_candidates(mask_flip.astype(np.float32), g_flip, hu_zyx=hu_flip)
    assert len(cands) == 1 and np.allclose(cands[0]["centre_lps"], cands_flip[0]["centre_lps"])
    assert cands_flip[0]["centre_voxel"] == pytest.approx([ni - 1 - 70, nj - 1 - 30, 6])
    a = write_candidate_overlays(hu, mask, cands, g, tmp_path / "std", "case")
    b = write_candidate_overlays(hu_flip, mask_flip, cands_flip, g_flip, tmp_path / "flip", "case")
    assert [p.name for p in a] == [p.name for p in b] == ["case_cand001.png", "case_montage.png"]
    for pa, pb in zip(a, b):
        assert np.array_equal(read_png(pa), read_png(pb)), pa.name
    # radiological: the nodule (patient's left) on the image's right, the mediastinum side on its left
    full = read_png(a[0])[:, : g.shape[0]]
    cols = np.nonzero(contour_pixels(full))[1]
    assert cols.min() > g.shape[0] // 2
    assert full[40, 2, 0] > full[40, g.shape[0] - 3, 0]     # dense (40 HU) left edge, lung (-850 HU) right edge


def test_no_candidates_gives_a_montage_of_slices(tmp_path):
    g, hu, mask = _phantom()
    paths = write_candidate_overlays(hu, mask, [], g, tmp_path, "quiet", montage_slices=3, montage_tile=128)
    assert [p.name for p in paths] == ["quiet_montage.png"]
    img = read_png(paths[0])
    assert img.shape == (107, 3 * 128 + 2 * 2, 3)          # tiles keep the 96 x 80 (0.8 mm) slice aspect
    assert contour_pixels(img[:, 130:258]).any()           # the middle slice cuts the nodule
    assert not list(tmp_path.glob(".*part"))


# ------------------------------------------------------------------------------------------------ real data
@pytest.fixture(scope="module")
def lidc_volume(lidc_series_dir):
    """LIDC-IDRI-0001 read with SimpleITK in ImagePositionPatient z order, HU clipped below at -1024."""
    import SimpleITK as sitk

    files = sorted(lidc_series_dir.glob("*.dcm"),
                   key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    image = reader.Execute()
    hu = np.maximum(sitk.GetArrayFromImage(image), -1024).astype(np.int16)
    return hu, Geometry.from_sitk(image)


def test_real_lidc_nodule_overlay(lidc_volume, tmp_path):
    hu, g = lidc_volume
    assert hu.shape == (133, 512, 512) and g.spacing[2] == pytest.approx(2.5)
    mask = sphere_mask(g, LUNA16_NODULE_LPS, LUNA16_NODULE_DIAMETER_MM)
    cands = extract_candidates(mask.astype(np.float32), g, hu_zyx=hu)
    assert len(cands) == 1
    c = cands[0]
    assert np.linalg.norm(np.subtract(c["centre_lps"], LUNA16_NODULE_LPS)) < 0.2
    assert c["diameter_mm"] == pytest.approx(LUNA16_NODULE_DIAMETER_MM, abs=0.3)
    assert -400 < c["mean_hu"] < 100                       # a solid nodule with some lung inside the sphere

    paths = write_candidate_overlays(hu, mask, cands, g, tmp_path, "LIDC-IDRI-0001")
    assert [p.name for p in paths] == ["LIDC-IDRI-0001_cand001.png", "LIDC-IDRI-0001_montage.png"]
    img = read_png(paths[0])
    assert img.shape == (512, 512 + 4 + 512, 3)
    i, j, _ = g.world_to_voxel(LUNA16_NODULE_LPS)           # standard LPS grid: column i, row j on screen
    rows, cols = np.nonzero(contour_pixels(img[:, :512]))
    r_px = LUNA16_NODULE_DIAMETER_MM / 2 / g.spacing[0]
    dist = np.hypot(rows - j, cols - i)
    assert rows.size > 60 and dist.max() < r_px + 3 and dist.min() > r_px - 8
    assert cols.min() > 256                                 # patient's left (LPS x > 0) on the image's right
    assert contour_pixels(img[:, 516:]).sum() > 200          # the zoomed crop shows the contour too
    assert read_png(paths[1]).shape == (256, 256, 3)
