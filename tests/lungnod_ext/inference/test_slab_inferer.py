"""lungnod_ext.inference.slab_inferer: the 2-D U-Net run slice by slice, neighbouring slices as channels."""

from __future__ import annotations

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
