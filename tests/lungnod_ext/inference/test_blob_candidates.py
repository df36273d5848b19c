"""lungnod_ext.inference.blob_candidates: the dot filter's small-nodule candidates beside the segmenter's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from data_prep.coords import Geometry
from lungnod_ext.inference.blob_candidates import AddBlobCandidatesd, add_blob_candidates, dot_enhancement, find_blob_candidates

SPACING_XYZ = (0.7, 0.7, 1.25)          # mm, a thin-slice chest CT's


def _phantom():
    """(z, y, x) HU: lung (-850) with a 5 mm solid nodule (0 HU) at (z 20, y 40, x 40), a 4 mm vessel along z
    at (y 40, x 90) and a 12 mm solid nodule at (z 20, y 90, x 40); its geometry (LPS, origin 0)."""
    shape = (40, 130, 130)
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, SPACING_XYZ[::-1])], indexing="ij")
    hu = np.full(shape, -850.0, np.float32)
    hu[(z - 25.0) ** 2 + (y - 28.0) ** 2 + (x - 28.0) ** 2 <= 2.5 ** 2] = 0.0
    hu[(y - 28.0) ** 2 + (x - 63.0) ** 2 <= 2.0 ** 2] = 0.0
    hu[(z - 25.0) ** 2 + (y - 63.0) ** 2 + (x - 28.0) ** 2 <= 6.0 ** 2] = 0.0
    hu = np.rint(hu + np.random.default_rng(0).normal(0, 10, shape)).astype(np.int16)
    geometry = Geometry(origin=(0.0, 0.0, 0.0), spacing=SPACING_XYZ, shape=shape[::-1])
    return hu, geometry


def _transform_data(hu_zyx, **extra) -> dict:
    """The post-processing data AddBlobCandidatesd sees for a (z, y, x) HU phantom on ``SPACING_XYZ``: (1, X, Y, Z)
    MetaTensors (RAS affine of an LPS origin 0; ``meta`` for the CT if given), a zero prediction and label map,
    no candidates, plus ``extra`` items."""
    affine = torch.as_tensor(np.diag([-SPACING_XYZ[0], -SPACING_XYZ[1], SPACING_XYZ[2], 1.0]))
    meta = extra.pop("meta", None)

    def tensor(zyx, dtype, **kw):
        return MetaTensor(torch.as_tensor(np.ascontiguousarray(zyx.transpose(2, 1, 0))[None], dtype=dtype),
                          affine=affine, **kw)

    zeros = np.zeros(hu_zyx.shape)
    return {"pred": tensor(zeros, torch.float32), "ct_hu": tensor(hu_zyx, torch.float32, **({"meta": meta} if meta else {})),
            "candidate_labels": tensor(zeros, torch.int32), "candidates": [], **extra}


def test_dot_filter_answers_a_sphere_and_not_a_vessel():
    """At the sphere's centre the response is large; along the vessel (one eigenvalue about 0) it is under
    a tenth of that; in flat lung it is 0. The best scale of the 5 mm sphere is about d / (2 sqrt 3)."""
    hu, g = _phantom()
    spacing_zyx = SPACING_XYZ[::-1]
    response, sigma = dot_enhancement(hu.astype(np.float32), spacing_zyx)
    sphere = (20, 40, 40)             # 25 mm, 28 mm, 28 mm
    vessel_max = response[5:35, 37:44, 87:94].max()
    assert response[sphere] > 50.0
    assert vessel_max < 0.1 * response[sphere]
    assert response[:, 110:, 100:].max() == 0.0
    assert 1.0 <= sigma[sphere] <= 2.0


def test_dot_filter_scales_in_threads_give_the_same_response():
    """The scales computed in 1, 2 or 4 threads merge in scale order: identical response and best scale."""
    hu, _ = _phantom()
    vol = hu.astype(np.float32)
    one = dot_enhancement(vol, SPACING_XYZ[::-1], workers=1, floor=5.0)
    for workers in (2, 4):
        other = dot_enhancement(vol, SPACING_XYZ[::-1], workers=workers, floor=5.0)
        assert np.array_equal(one[0], other[0]) and np.array_equal(one[1], other[1])
    assert one[0].max() > 50.0


def test_dot_filter_in_chunks_gives_the_same_response(monkeypatch):
    """The Hessian worked out 500 voxels at a time (what keeps a thin-slice scan's memory down)
    answers exactly as in one go, with and without the floor that skips weak answers."""
    from lungnod_ext.inference import blob_candidates

    hu, _ = _phantom()
    vol = hu.astype(np.float32)
    for floor in (0.0, 5.0):
        whole = dot_enhancement(vol, SPACING_XYZ[::-1], workers=1, floor=floor)
        monkeypatch.setattr(blob_candidates, "CHUNK_VOXELS", 500)
        chunked = dot_enhancement(vol, SPACING_XYZ[::-1], workers=1, floor=floor)
        monkeypatch.setattr(blob_candidates, "CHUNK_VOXELS", 1 << 20)
        assert (whole[0] > 0).sum() > 500            # more voxels answer than one chunk holds
        assert np.array_equal(whole[0], chunked[0]) and np.array_equal(whole[1], chunked[1])


def test_blob_candidates_find_both_nodules_first_and_outline_them():
    """Strongest first: the two nodules are the top two candidates; their regions' equivalent diameters are
    within 1 mm of the truth and their centres within 1 mm; the vessel is not among the top two."""
    hu, g = _phantom()
    found = find_blob_candidates(hu, g, max_candidates=10)
    top = {round(c["centre_lps"][1]): c for c, _, _ in found[:2]}
    assert sorted(top) == [28, 63]
    for y, d in ((28, 5.0), (63, 12.0)):
        c = top[y]
        assert np.linalg.norm(np.subtract(c["centre_lps"], [28.0, y, 25.0])) < 1.0
        assert abs(c["diameter_mm"] - d) < 1.0
        assert c["detector"] == "blob" and c["blob_rank"] in (0, 1)
    assert all(abs(c["centre_lps"][0] - 63.0) > 3.0 for c, _, _ in found[:2])


def test_add_blob_candidates_skips_what_the_segmenter_has_and_continues_ids():
    """The 12 mm nodule is already the segmenter's candidate 1 (its voxels in the label map): only the 5 mm
    one is added, as id 2 with its region written into the label map and its probability from prob."""
    hu, g = _phantom()
    spacing = np.asarray(SPACING_XYZ[::-1])
    zz, yy, xx = np.meshgrid(*[np.arange(n) * s for n, s in zip(hu.shape, spacing)], indexing="ij")
    big = (zz - 25.0) ** 2 + (yy - 63.0) ** 2 + (xx - 28.0) ** 2 <= 6.5 ** 2
    labels = big.astype(np.int32)
    prob = np.where(big, 0.9, 0.02).astype(np.float32)
    seg = [{"id": 1, "centre_lps": [28.0, 63.0, 25.0], "max_prob": 0.9}]
    out = add_blob_candidates(seg, labels, prob, hu, g, max_candidates=1)
    assert [c["id"] for c in out] == [1, 2]
    assert out[0]["detector"] == "segmentation"
    new = out[1]
    assert new["detector"] == "blob" and round(new["centre_lps"][1]) == 28
    assert new["max_prob"] == pytest.approx(0.02)
    assert (labels == 2).sum() == new["n_voxels"] and 30 < new["n_voxels"] < 300
    assert labels[big].min() == 1


def test_transform_works_on_monai_tensors_and_can_be_switched_off():
    """AddBlobCandidatesd on (1, X, Y, Z) MetaTensors: the label tensor is written in place; with
    ``enabled`` False, or without the HU image under allow_missing_keys, the data pass unchanged."""
    hu, g = _phantom()
    data = _transform_data(hu)
    out = AddBlobCandidatesd(lung_mask_key=None, max_candidates=3)(data)
    assert [c["id"] for c in out["candidates"]][:2] == [1, 2]
    assert int(out["candidate_labels"].max()) == len(out["candidates"])
    off = AddBlobCandidatesd(lung_mask_key=None, enabled=False)({**data, "candidates": []})
    assert off["candidates"] == []
    missing = AddBlobCandidatesd(lung_mask_key=None, allow_missing_keys=True)(
        {"pred": data["pred"], "candidates": [], "candidate_labels": data["candidate_labels"]})
    assert missing["candidates"] == []
    with pytest.raises(KeyError):
        AddBlobCandidatesd(lung_mask_key=None)({"pred": data["pred"], "candidates": []})
    # a peak count that is no whole number >= 0 (a config typo) is refused, naming the config id
    for name, config_id in (("max_candidates", "blob_max_candidates"), ("faint_max_candidates", "blob_faint_candidates")):
        for bad in (-1, 2.5, True, "30"):
            with pytest.raises(ValueError, match=f"{name} \\(segmentation config {config_id}\\) must be a whole number"):
                AddBlobCandidatesd(**{name: bad})
    # so is a slice profile that is no thickness in mm (null: off)
    for bad in (0, -2.5, True, "2.5"):
        with pytest.raises(ValueError, match="slice_profile_mm \\(segmentation config blob_slice_profile_mm\\) must be"):
            AddBlobCandidatesd(slice_profile_mm=bad)
    assert AddBlobCandidatesd(slice_profile_mm=None).options["slice_profile_mm"] is None
    assert AddBlobCandidatesd(slice_profile_mm=2).options["slice_profile_mm"] == 2


def test_a_blob_connected_to_a_candidate_is_that_candidate():
    """The U-Net's segment covers only half of the 12 mm nodule: the dot filter's peak on the other half
    grows into that segment, so it is not a second candidate; the 5 mm nodule still is one."""
    hu, g = _phantom()
    spacing = np.asarray(SPACING_XYZ[::-1])
    zz, yy, xx = np.meshgrid(*[np.arange(n) * s for n, s in zip(hu.shape, spacing)], indexing="ij")
    half = ((zz - 25.0) ** 2 + (yy - 63.0) ** 2 + (xx - 28.0) ** 2 <= 6.0 ** 2) & (xx < 28.0)
    labels = half.astype(np.int32)
    out = add_blob_candidates([{"id": 1, "centre_lps": [25.0, 63.0, 25.0]}], labels, None, hu, g, max_candidates=10)
    blobs = [c for c in out if c["detector"] == "blob"]
    assert blobs and all(abs(c["centre_lps"][1] - 63.0) > 8.0 for c in blobs)
    assert any(np.linalg.norm(np.subtract(c["centre_lps"], [28.0, 28.0, 25.0])) < 1.0 for c in blobs)
    assert labels[half].min() == 1 and set(np.unique(labels[~half])) <= {0} | {c["id"] for c in blobs}


@pytest.mark.parametrize("shape,zoom", [((40, 61, 57), (1.0, 0.7, 0.7)), ((23, 30, 31), (0.5, 0.81, 1.0))])
def test_zoom_matches_scipy_linear_zoom(shape, zoom):
    """The dot filter's resampling to its grid: scipy's order-1 zoom with corners aligned, by torch."""
    from scipy import ndimage as ndi

    from lungnod_ext.inference.blob_candidates import _zoom_linear

    vol = np.random.default_rng(2).normal(-600, 300, shape).astype(np.float32)
    ours = _zoom_linear(vol, np.asarray(zoom))
    theirs = ndi.zoom(vol, zoom, order=1, mode="nearest", grid_mode=False)
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() < 1e-2          # HU; float32 rounding only


def _faint_phantom():
    """(z, y, x) HU on the thin-slice grid: lung (-850) with six 6 mm solid spheres (0 HU, what vessel crossings
    answer like) along x at y 28 mm and one 6 mm ground-glass sphere (-600 HU) at (z 25, y 63, x 28) mm."""
    shape = (40, 130, 130)
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, SPACING_XYZ[::-1])], indexing="ij")
    hu = np.full(shape, -850.0, np.float32)
    for cx in (10.0, 22.0, 34.0, 46.0, 58.0, 70.0):
        hu[(z - 25.0) ** 2 + (y - 28.0) ** 2 + (x - cx) ** 2 <= 3.0 ** 2] = 0.0
    hu[(z - 25.0) ** 2 + (y - 63.0) ** 2 + (x - 28.0) ** 2 <= 3.0 ** 2] = -600.0
    hu = np.rint(hu + np.random.default_rng(1).normal(0, 10, shape)).astype(np.int16)
    return hu, Geometry(origin=(0.0, 0.0, 0.0), spacing=SPACING_XYZ, shape=shape[::-1])


def test_faint_quota_adds_the_ground_glass_blob_the_solid_ones_outrank():
    """The ground-glass sphere answers about a quarter of a solid one (its contrast is 250 HU, not 850), so the
    six solid spheres take the top six peaks: with max_candidates 6 it is no candidate. A faint quota of 1 adds
    it, as detector "faint", centre within 1 mm, its rank among all peaks (6 or lower) as blob_rank; the solid
    peaks never enter the quota (their smoothed HU is above the faint band)."""
    hu, g = _faint_phantom()
    ground_glass = [28.0, 63.0, 25.0]
    plain = find_blob_candidates(hu, g, max_candidates=6)
    assert len(plain) == 6 and all(c["detector"] == "blob" for c, _, _ in plain)
    assert all(np.linalg.norm(np.subtract(c["centre_lps"], ground_glass)) > 10.0 for c, _, _ in plain)
    quota = find_blob_candidates(hu, g, max_candidates=6, faint_max_candidates=1)
    assert [c["detector"] for c, _, _ in quota] == ["blob"] * 6 + ["faint"]
    faint = quota[-1][0]
    assert np.linalg.norm(np.subtract(faint["centre_lps"], ground_glass)) < 1.0
    assert faint["blob_rank"] >= 6 and 4.5 < faint["diameter_mm"] < 7.5
    assert -700.0 < faint["mean_hu"] < -500.0
    assert [c["blob_rank"] for c, _, _ in quota[:6]] == list(range(6))
    # fewer solid peaks than the quota's start: the ground-glass one is then a plain top peak, not "faint"
    wide = find_blob_candidates(hu, g, max_candidates=7, faint_max_candidates=3)
    assert [c["detector"] for c, _, _ in wide].count("faint") == 0
    assert any(np.linalg.norm(np.subtract(c["centre_lps"], ground_glass)) < 1.0 for c, _, _ in wide)
    # a band that leaves the ground glass out adds nothing
    none = find_blob_candidates(hu, g, max_candidates=6, faint_max_candidates=1, faint_hu=(-500.0, -300.0))
    assert len(none) == 6


def test_smoothed_value_at_points_matches_the_whole_volume_filter():
    """The faint quota's HU at a peak: a Gaussian worked out around the point alone equals scipy's filter of
    the whole volume there (away from its edges)."""
    from scipy import ndimage as ndi

    from lungnod_ext.inference.blob_candidates import _smoothed_at

    vol = np.random.default_rng(2).normal(-700, 100, (20, 40, 40)).astype(np.float32)
    spacing = np.array([2.5, 1.0, 1.0])
    points = np.array([[10, 20, 20], [5, 12, 30], [14, 30, 9]])
    whole = ndi.gaussian_filter(vol, sigma=1.0 / spacing, truncate=3.0, mode="nearest")
    assert np.allclose(_smoothed_at(vol, spacing, points, 1.0), whole[tuple(points.T)], atol=0.5)


def _small_dot_phantom(spacing_xyz):
    """(z, y, x) HU on a grid of ``spacing_xyz``: lung (-850) with a 6 mm solid sphere at (z 25, y 28, x 28) mm,
    a 3 mm solid dot at (25, 63, 63) and a 3 mm faint dot (-550 HU) at (25, 63, 28); its geometry."""
    shape = (int(50 / spacing_xyz[2]), 130, 130)
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing_xyz[::-1])], indexing="ij")
    hu = np.full(shape, -850.0, np.float32)
    hu[(z - 25.0) ** 2 + (y - 28.0) ** 2 + (x - 28.0) ** 2 <= 3.0 ** 2] = 0.0
    hu[(z - 25.0) ** 2 + (y - 63.0) ** 2 + (x - 63.0) ** 2 <= 1.5 ** 2] = 0.0
    hu[(z - 25.0) ** 2 + (y - 63.0) ** 2 + (x - 28.0) ** 2 <= 1.5 ** 2] = -550.0
    hu = np.rint(hu + np.random.default_rng(0).normal(0, 10, shape)).astype(np.int16)
    return hu, Geometry(origin=(0.0, 0.0, 0.0), spacing=tuple(spacing_xyz), shape=shape[::-1])


def test_slice_profile_dims_thin_slice_dots_and_keeps_their_outlines():
    """On 1.25 mm slices seen at a 2.5 mm slice profile the 3 mm dots answer half as strongly (117 -> 55 HU, 40
    -> 19 HU) and the 6 mm sphere keeps three quarters (213 -> 164 HU); the same three peaks, the same centres,
    and the regions, grown on the unfiltered CT, are unchanged (diameters 6.1 / 3.0 / 3.0 mm)."""
    hu, g = _small_dot_phantom(SPACING_XYZ)
    thin = find_blob_candidates(hu, g, max_candidates=5)
    seen = find_blob_candidates(hu, g, max_candidates=5, slice_profile_mm=2.5)
    assert len(thin) == len(seen) == 3
    for (a, _, region_a), (b, _, region_b) in zip(thin, seen):
        assert a["centre_lps"] == b["centre_lps"] and a["diameter_mm"] == b["diameter_mm"]
        assert np.array_equal(region_a, region_b)
    ratio = [b["blob_response"] / a["blob_response"] for (a, _, _), (b, _, _) in zip(thin, seen)]
    assert [round(c["diameter_mm"]) for c, _, _ in thin] == [6, 3, 3]
    assert 0.7 < ratio[0] < 0.85                     # the 6 mm sphere
    assert ratio[1] < 0.55 and ratio[2] < 0.55       # the 3 mm dots, solid and faint
    assert thin[0][0]["blob_response"] > 200.0 and thin[2][0]["blob_response"] > 35.0


def test_slice_profile_is_the_filter_of_the_blurred_volume_and_off_for_thick_slices():
    """The peaks with ``slice_profile_mm`` are those of the clipped CT blurred along z by
    ``slice_profile_sigma`` (to the HU); on 2.5 mm slices a 2.5 mm profile changes nothing."""
    from scipy import ndimage as ndi

    from data_prep.slice_profile import slice_profile_sigma
    from lungnod_ext.inference.blob_candidates import HU_CLIP, dot_filter_peaks

    hu, g = _small_dot_phantom(SPACING_XYZ)
    spacing_zyx = SPACING_XYZ[::-1]
    blurred = ndi.gaussian_filter1d(np.clip(hu.astype(np.float32), *HU_CLIP), slice_profile_sigma(1.25, 2.5),
                                    axis=0, mode="nearest")
    by_hand = dot_filter_peaks(blurred, spacing_zyx, max_peaks=5)
    built_in = dot_filter_peaks(hu, spacing_zyx, max_peaks=5, slice_profile_mm=2.5)
    assert np.array_equal(by_hand.centres_zyx, built_in.centres_zyx)
    assert np.allclose(by_hand.response, built_in.response, atol=1e-3)
    # a float32 C-ordered input (which needs no conversion) is filtered in a copy: the caller's CT is unchanged
    ct = hu.astype(np.float32)
    ct[0, :5] = -1024.0                          # air and bone, which the filter clips
    ct[-1, -5:] = 700.0
    kept = ct.copy()
    dot_filter_peaks(ct, spacing_zyx, max_peaks=5, slice_profile_mm=2.5)
    assert np.array_equal(ct, kept)
    hu, g = _small_dot_phantom((0.7, 0.7, 2.5))
    plain = find_blob_candidates(hu, g, max_candidates=5)
    same = find_blob_candidates(hu, g, max_candidates=5, slice_profile_mm=2.5)
    assert len(plain) == 3 and [c for c, _, _ in plain] == [c for c, _, _ in same]


def test_an_overlapping_reconstruction_is_blurred_only_by_what_its_thickness_lacks():
    """2.5 mm slices every 1.25 mm (DICOM SliceThickness 2.5) already have the 2.5 mm profile: with their
    thickness the filter sees them as they are (the same peaks and responses as without a profile), where the
    spacing alone would have blurred them to about 3.3 mm; 1.25 mm slices every 1.25 mm (thickness 1.25) are
    blurred as before; a thickness of 1.8 mm is blurred by sqrt(2.5^2 - 1.8^2) mm (FWHM), less than 1.25 mm
    slices."""
    from data_prep.slice_profile import slice_profile_sigma
    from lungnod_ext.inference.blob_candidates import dot_filter_peaks

    hu, _ = _small_dot_phantom(SPACING_XYZ)
    spacing_zyx = SPACING_XYZ[::-1]
    plain = dot_filter_peaks(hu, spacing_zyx, max_peaks=5)
    overlapping = dot_filter_peaks(hu, spacing_zyx, max_peaks=5, slice_profile_mm=2.5, slice_thickness_mm=2.5)
    assert np.array_equal(plain.centres_zyx, overlapping.centres_zyx)
    assert np.array_equal(plain.response, overlapping.response)
    by_spacing = dot_filter_peaks(hu, spacing_zyx, max_peaks=5, slice_profile_mm=2.5)
    same_as_spacing = dot_filter_peaks(hu, spacing_zyx, max_peaks=5, slice_profile_mm=2.5, slice_thickness_mm=1.25)
    assert np.array_equal(by_spacing.response, same_as_spacing.response)
    assert by_spacing.response[2] < 0.55 * plain.response[2]           # the faint 3 mm dot, dimmed by the spacing's blur
    partly = dot_filter_peaks(hu, spacing_zyx, max_peaks=5, slice_profile_mm=2.5, slice_thickness_mm=1.8)
    assert np.all(by_spacing.response < partly.response) and np.all(partly.response < plain.response)
    assert slice_profile_sigma(1.25, 2.5, 2.5) is None and slice_profile_sigma(1.25, 2.5, None) == slice_profile_sigma(1.25, 2.5)
    assert slice_profile_sigma(1.25, 2.5, 1.8) == pytest.approx((2.5 ** 2 - 1.8 ** 2) ** 0.5 / 2.355 / 1.25)
    assert slice_profile_sigma(2.0, 2.5, 1.0) == slice_profile_sigma(2.0, 2.5)   # thinner than the spacing: the spacing


def test_the_transform_reads_the_items_slice_thickness():
    """AddBlobCandidatesd takes ``slice_thickness_mm`` from the data item (a float, or a 0-d tensor after
    MONAI's collation): 2.5 mm on this 1.25 mm phantom gives the unblurred filter's responses; absent, None or
    not a thickness: the slice spacing (blurred); ``slice_thickness_key`` None ignores it."""
    hu, g = _small_dot_phantom(SPACING_XYZ)

    def run(transform, **extra):
        return [round(c["blob_response"], 3) for c in transform(_transform_data(hu, **extra))["candidates"]]

    profile = AddBlobCandidatesd(lung_mask_key=None, max_candidates=5, slice_profile_mm=2.5)
    unblurred = run(AddBlobCandidatesd(lung_mask_key=None, max_candidates=5, slice_profile_mm=None))
    blurred = run(profile)
    assert len(unblurred) == len(blurred) == 3 and blurred[2] < 0.55 * unblurred[2]
    assert run(profile, slice_thickness_mm=2.5) == unblurred
    assert run(profile, slice_thickness_mm=torch.tensor(2.5, dtype=torch.float64)) == unblurred
    for unknown in (None, float("nan"), 0.0, "thick"):
        assert run(profile, slice_thickness_mm=unknown) == blurred
    ignoring = AddBlobCandidatesd(lung_mask_key=None, max_candidates=5, slice_profile_mm=2.5, slice_thickness_key=None)
    assert run(ignoring, slice_thickness_mm=2.5) == blurred


def test_without_the_items_thickness_the_transform_reads_what_is_recorded_beside_the_file(tmp_path):
    """An item with no ``slice_thickness_mm`` (MONAI Label hands the bare image): the thickness recorded beside the
    image's source file (``filename_or_obj``; here a dcm2niix sidecar saying 2.5 mm) is used; the item's own value
    wins over it."""
    import json

    hu, g = _small_dot_phantom(SPACING_XYZ)
    source = tmp_path / "scan.nii.gz"
    (tmp_path / "scan.json").write_text(json.dumps({"SliceThickness": 2.5}))

    def run(**extra):
        data = _transform_data(hu, meta={"filename_or_obj": str(source)}, **extra)
        out = AddBlobCandidatesd(lung_mask_key=None, max_candidates=5, slice_profile_mm=2.5)(data)
        return [round(c["blob_response"], 3) for c in out["candidates"]]

    unblurred = [round(c["blob_response"], 3) for c, _, _ in find_blob_candidates(hu, g, max_candidates=5)]
    blurred = [round(c["blob_response"], 3) for c, _, _ in find_blob_candidates(hu, g, max_candidates=5,
                                                                                  slice_profile_mm=2.5)]
    assert run() == unblurred != blurred
    assert run(slice_thickness_mm=1.25) == blurred
