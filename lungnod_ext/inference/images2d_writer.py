"""Outputs of the 2D overlay (``configs/inference_images2d.json``): per input image ``<stem>_mask.png``
(uint8 0 / 255, the input's size), ``<stem>_overlay.png`` (the image in grey, the predicted nodule outline
in green, its pixel count written on it) and ``predictions.json``, one JSON line per image of this run
(rewritten atomically after each image, so a rerun into the same folder leaves no stale lines).
Arrays are (row, column) = (y, x) as image files hold them.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from pathlib import Path

import cv2
import numpy as np
import torch
from monai.transforms import MapTransform

from data_prep.images2d import write_image_png
from data_prep.nifti_io import write_text_atomic
from lungnod_ext.inference.overlays import overlay_slice, write_png


def _plane(x) -> np.ndarray:
    """(1, H, W) tensor / array -> (H, W) float32 numpy."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.asarray(arr, dtype=np.float32).reshape(arr.shape[-2:])


class WriteMask2Dd(MapTransform):
    """Post-processing: ``pred_key`` (1, h, w) probability at the network's size -> the outputs above, at the
    size of ``image_key`` (1, H, W), the unresized grey input in [0, 1]; ``mask >= threshold``."""

    def __init__(self, pred_key: str = "pred", image_key: str = "image_original", output_dir: str = "./eval",
                 threshold: float = 0.5) -> None:
        super().__init__(pred_key)
        self.pred_key, self.image_key = pred_key, image_key
        self.output_dir, self.threshold = Path(output_dir), float(threshold)
        self.rows: list[dict] = []

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        image = _plane(d[self.image_key])
        prob = cv2.resize(_plane(d[self.pred_key]), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
        mask = prob >= self.threshold
        source = Path(str(getattr(d[self.image_key], "meta", {}).get("filename_or_obj", "image.png")))
        stem = source.name.split(".")[0]
        write_image_png(self.output_dir / f"{stem}_mask.png", mask.astype(np.uint8) * 255)
        text = [f"{stem}: {int(mask.sum())} nodule px"]
        write_png(self.output_dir / f"{stem}_overlay.png", overlay_slice(image, mask, window=(0.0, 1.0), text_lines=text))
        self.rows.append({"image": str(source), "mask": f"{stem}_mask.png", "overlay": f"{stem}_overlay.png",
                          "nodule_pixels": int(mask.sum()), "max_prob": float(prob.max())})
        write_text_atomic(self.output_dir / "predictions.json", "".join(json.dumps(r) + "\n" for r in self.rows))
        d["mask_path"] = str(self.output_dir / f"{stem}_mask.png")
        return d
