"""What drove the classifier's score: evidence maps for candidate patches (MONAI's visualisations).

:func:`evidence_maps` returns, for a patch classifier with a logit output ``(B, 1)``, maps of the
patches' shape in [0, 1] (1 = strongest evidence for "nodule"; a flat map is all zeros):

* ``method="occlusion"`` (default): ``monai.visualize.OcclusionSensitivity``; the evidence at a voxel is
  how much the nodule logit drops when the region around it is blurred away. Model-agnostic and
  faithful: on a test where the decision hangs on one bright blob, the map peaks on that blob.
* ``method="gradcam"``: ``monai.visualize.GradCAM`` on the last convolution (cheap, but on small
  networks that decide from global statistics it can highlight the background instead). :func:`write_evidence_png` saves the CT patch
(lung window) beside the same patch with the map as a heat overlay; 3D patches show their central
axial slice.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from lungnod_ext.overlays import LUNG_WINDOW_HU, window_to_uint8, write_png


def last_conv_layer(network: torch.nn.Module) -> str:
    """Name of the network's last Conv2d/Conv3d module (GradCAM's default target)."""
    names = [n for n, m in network.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    if not names:
        raise ValueError("the network has no convolution to explain")
    return names[-1]


def _occlusion(network: torch.nn.Module, patches: torch.Tensor) -> np.ndarray:
    from monai.visualize import OcclusionSensitivity

    spatial = patches.shape[2:]
    mask = [max(2, s // 4) for s in spatial]
    occ = OcclusionSensitivity(network, mask_size=mask, n_batch=64, verbose=False, mode="gaussian", overlap=0.5,
                               activate=False)
    # 3D: only the central axial slice (what the picture shows); MONAI's b_box max is exclusive here
    b_box = None if len(spatial) == 2 else [spatial[0] // 2, spatial[0] // 2 + 1, -1, -1, -1, -1]
    maps = []
    with torch.no_grad():
        for p in patches:
            base = float(network(p[None].float())[0, 0])
            occ_map, _ = occ(p[None].float(), b_box=b_box)
            m = occ_map[0, 0].cpu().numpy()  # (1, n_classes=1, *spatial or 1 x H x W)
            maps.append(base - (m[0] if b_box else m))  # logit drop when occluded
    return np.clip(np.stack(maps), 0.0, None)


def _gradcam(network: torch.nn.Module, patches: torch.Tensor, target_layer: str | None) -> np.ndarray:
    from monai.visualize import GradCAM

    cam = GradCAM(nn_module=network, target_layers=target_layer or last_conv_layer(network))
    with torch.enable_grad():
        return cam(x=patches.float(), class_idx=0).detach().cpu().numpy()[:, 0]


def evidence_maps(network: torch.nn.Module, patches: torch.Tensor, method: str = "occlusion",
                  target_layer: str | None = None) -> np.ndarray:
    """Evidence maps for ``patches`` (N, 1, *spatial) windowed to [0, 1] -> float32 in [0, 1]: (N, H, W) for 2D
    patches and for 3D occlusion (the central axial slice, about 30x cheaper), (N, D, H, W) for 3D GradCAM."""
    if method not in ("occlusion", "gradcam"):
        raise ValueError(f"method must be 'occlusion' or 'gradcam', got {method!r}")
    if patches.shape[0] == 0:
        return np.zeros((0, *patches.shape[2:]), np.float32)
    was_training = network.training
    network.eval()
    try:
        maps = _occlusion(network, patches) if method == "occlusion" else _gradcam(network, patches, target_layer)
    finally:
        network.train(was_training)
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32))
    out = np.zeros_like(maps)
    for i, m in enumerate(maps):
        lo, hi = float(m.min()), float(m.max())
        if hi > lo:
            out[i] = (m - lo) / (hi - lo)
    return out


def _central_slice(a: np.ndarray) -> np.ndarray:
    return a[a.shape[0] // 2] if a.ndim == 3 else a


def write_evidence_png(patch_hu: np.ndarray, evidence: np.ndarray, path, title: str = "", size: int = 192) -> Path:
    """PNG: left the patch in lung window, right with the evidence map (jet colours, 40 % opacity); 3D patches
    (and 3D maps) show their central axial slice."""
    grey = window_to_uint8(_central_slice(np.asarray(patch_hu)), LUNG_WINDOW_HU)
    heat = np.clip(_central_slice(np.asarray(evidence)) * 255.0, 0, 255).astype(np.uint8)
    grey = cv2.resize(grey, (size, size), interpolation=cv2.INTER_LINEAR)
    heat = cv2.resize(heat, (size, size), interpolation=cv2.INTER_LINEAR)
    ct_rgb = np.repeat(grey[:, :, None], 3, axis=2)
    colour = cv2.applyColorMap(heat, cv2.COLORMAP_JET)[:, :, ::-1]
    blend = (0.6 * ct_rgb + 0.4 * colour).astype(np.uint8)
    image = np.concatenate([ct_rgb, np.full((size, 4, 3), 255, np.uint8), blend], axis=1)
    if title:
        cv2.putText(image, title, (5, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return write_png(path, np.ascontiguousarray(image))
