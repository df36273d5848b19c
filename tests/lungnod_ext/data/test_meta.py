"""lungnod_ext.data.meta: the LPS geometry of a MONAI MetaTensor, whose affine may be RAS or LPS."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor

from data_prep.coords import Geometry
from lungnod_ext.data.meta import geometry_from_meta_tensor


def test_lps_space_meta_is_respected():
    g = Geometry((-150.0, -120.0, -300.0), (0.7, 0.7, 2.5), shape=(20, 20, 10))
    pred = MetaTensor(torch.zeros(1, 20, 20, 10), affine=torch.from_numpy(g.affine_lps()), meta={"space": "LPS"})
    assert np.allclose(geometry_from_meta_tensor(pred).affine_lps(), g.affine_lps())
