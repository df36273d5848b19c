"""Per-case inference output of the segmentation bundle, written as one unit.

``<output_dir>/<case>/``:

* ``<case>_mask.nii.gz``: uint8 nodule mask (1 = nodule) on the ORIGINAL image grid (same shape and
  affine as the input NIfTI, not the resampled one); ``<case>_prob.nii.gz`` optionally (float32).
* ``<case>_labels.nii.gz``: uint16 candidate ids (0 = background), same grid.
* ``<case>_candidates.json`` / ``.csv``: the candidate list of :mod:`lungnod_ext.inference.candidates`
  (centres in LPS mm and voxel (i, j, k)); empty list when nothing is found.
* ``overlays/``: one PNG per candidate and a montage (:func:`lungnod_ext.inference.overlays.write_candidate_overlays`).

Everything goes to a hidden temporary folder first, which is renamed to ``<case>`` at the end (a
previous result is replaced only then), so a failure leaves no partial case behind.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
from monai.transforms import MapTransform

from data_prep.nifti_io import write_nifti
from lungnod_ext.data.meta import case_id_from_meta, channel_view_zyx, geometry_from_meta_tensor
from lungnod_ext.inference.candidates import write_candidates
from lungnod_ext.inference.overlays import write_candidate_overlays


def replace_dir(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is moved aside first and deleted after."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_segmentation_report(case: str, prob_zyx: np.ndarray, hu_zyx: np.ndarray | None, labels_zyx: np.ndarray,
                              candidates: list[dict], geometry, output_dir, threshold: float = 0.5,
                              overlays: bool = True, save_prob: bool = False,
                              meta: Mapping | None = None) -> Path:
    """Write one case's outputs (see module doc) and return ``<output_dir>/<case>``.

    prob_zyx: (z, y, x) foreground probability on the original grid; hu_zyx: (z, y, x) HU (None: no
    overlays, ``mean_hu`` absent); labels_zyx: (z, y, x) candidate ids; geometry: LPS grid of all three.
    """
    out_root = Path(output_dir)
    out_root.mkdir(parents=True, exist_ok=True)
    final = out_root / case
    tmp = out_root / f".{case}.part-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        # each written volume is made once, C-ordered as write_nifti needs (the inputs are usually transposed
        # views: a plain astype would keep their layout and write_nifti copy it again)
        mask = np.empty(np.shape(prob_zyx), dtype=bool)
        np.greater_equal(prob_zyx, threshold, out=mask)
        write_nifti(tmp / f"{case}_mask.nii.gz", mask.view(np.uint8), geometry)
        del mask
        write_nifti(tmp / f"{case}_labels.nii.gz", np.ascontiguousarray(labels_zyx, dtype=np.uint16), geometry)
        if save_prob:
            write_nifti(tmp / f"{case}_prob.nii.gz", np.asarray(prob_zyx, dtype=np.float32), geometry)
        info = {"case": case, "threshold": threshold, "n_candidates": len(candidates),
                "mask": f"{case}_mask.nii.gz", **dict(meta or {})}
        write_candidates(candidates, tmp / f"{case}_candidates.json", tmp / f"{case}_candidates.csv", info)
        if overlays and hu_zyx is not None:
            write_candidate_overlays(np.asarray(hu_zyx), labels_zyx, candidates, geometry, tmp / "overlays", case)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


class WriteSegmentationReportd(MapTransform):
    """Bundle post-processing step: write a case's report (module doc) from the decollated dict.

    Reads ``pred_key`` (channel-first (1, X, Y, Z) probability MetaTensor, already inverted to the
    original grid), ``image_key`` (the unresampled HU copy), ``candidates_key`` and ``labels_key``
    (from :class:`lungnod_ext.inference.candidates.ExtractCandidatesd`). Adds ``"report_dir"`` to the dict.
    """

    def __init__(self, pred_key: str = "pred", image_key: str = "ct_hu", candidates_key: str = "candidates",
                 labels_key: str = "candidate_labels", output_dir: str = "./eval", threshold: float = 0.5,
                 overlays: bool = True, save_prob: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(pred_key, allow_missing_keys)
        self.pred_key, self.image_key = pred_key, image_key
        self.candidates_key, self.labels_key = candidates_key, labels_key
        self.output_dir, self.threshold = output_dir, threshold
        self.overlays, self.save_prob = overlays, save_prob

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        pred = d[self.pred_key]
        image = d.get(self.image_key)
        geometry = geometry_from_meta_tensor(image if image is not None else pred)
        prob = channel_view_zyx(pred)  # views: write_nifti makes the one copy NIfTI's layout needs
        if tuple(prob.shape) != geometry.shape_zyx:
            raise ValueError(f"prediction {prob.shape} is not on the original grid {geometry.shape_zyx}: "
                             "resample it to the image (ResampleToReferenced / Invertd) before the report writer")
        hu = channel_view_zyx(image) if image is not None else None
        labels = d.get(self.labels_key)
        labels_zyx = channel_view_zyx(labels) if labels is not None else np.zeros(prob.shape, np.uint16)
        source = str((image if image is not None else pred).meta.get("filename_or_obj", ""))
        case = case_id_from_meta(image if image is not None else pred)
        d["report_dir"] = str(write_segmentation_report(
            case, prob, hu, labels_zyx, list(d.get(self.candidates_key) or []), geometry, self.output_dir,
            self.threshold, self.overlays, self.save_prob, {"source": source}))
        return d
