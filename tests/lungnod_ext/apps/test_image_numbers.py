"""lungnod_ext.apps.pipeline.add_image_numbers: the DICOM image number of each candidate."""

from __future__ import annotations

from lungnod_ext.apps.pipeline import add_image_numbers


def test_the_number_of_the_axes_slice_else_of_the_centre_slice():
    numbers = [133 - k for k in range(133)]          # InstanceNumber 1 = the top slice, k = 0 the bottom one
    cands = [{"id": 1, "axes_slice_k": 89, "centre_voxel": [1.0, 2.0, 88.6]},
             {"id": 2, "centre_voxel": [1.0, 2.0, 10.4]},          # not measured: its centre's slice
             {"id": 3, "axes_slice_k": 200, "centre_voxel": [0.0, 0.0, 200.0]}]    # off the list: none
    add_image_numbers(cands, numbers)
    assert [c.get("image_number") for c in cands] == [44, 123, None]


def test_unknown_numbers_add_nothing():
    cands = [{"id": 1, "axes_slice_k": 1, "centre_voxel": [0.0, 0.0, 1.0]}]
    add_image_numbers(cands, None)
    add_image_numbers(cands, [])
    add_image_numbers(cands, [5, None])                # a file without InstanceNumber
    assert "image_number" not in cands[0]
