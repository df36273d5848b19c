"""data_prep.synth.anatomy: the procedural chest of the small cohort's cases (HU of tissues, lungs, airways)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def test_anatomy_intensities(cohort):
    _, _, cases = cohort
    for case in cases:
        hu, lung = case.hu_zyx.astype(float), case.lung_mask_zyx
        nz = hu.shape[0]
        assert 0.3e6 < lung.sum() * case.geometry.voxel_volume_mm3 < 5e6     # 0.3 - 5 litres (a small chest)
        nod = case.truth_instance_mask() > 0
        parenchyma = lung & ~nod & (hu < -600)
        assert -900 < hu[parenchyma].mean() < -800 and 25 < hu[parenchyma].std() < 70
        assert (lung & (hu > -200)).sum() > 0.01 * lung.sum()                   # vessels
        assert abs(hu[:, :3, :3].mean() + 1000) < 10                           # outside air
        assert (hu > 400).sum() > 0.002 * hu.size                               # ribs / spine
        centre = hu[:, 40:72, 40:72]
        assert (centre > 0).mean() > 0.3                                       # mediastinum soft tissue
        # Both lungs: left and right halves of the lung mask are of similar size.
        half = lung.shape[2] // 2
        left, right = lung[:, :, :half].sum(), lung[:, :, half:].sum()
        assert 0.5 < left / right < 2
        # Trachea: air (< -900 HU) enclosed by the body on the top slice, away from the lungs.
        top = hu[nz - 1] < -900
        lab, n = ndimage.label(top)
        border = set(np.unique(np.r_[lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        inner = [k for k in range(1, n + 1) if k not in border and (lab == k).sum() >= 4]
        assert inner and not lung[nz - 1][np.isin(lab, inner)].all()
