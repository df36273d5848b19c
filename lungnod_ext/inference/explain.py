"""What drove the classifier's score: evidence maps for candidate patches (MONAI's visualisations).

:func:`evidence_maps` works with any torch patch classifier (2D input ``(B, C, H, W)`` or 3D
``(B, C, D, H, W)``, logits ``(B, n)``; the "nodule" logit is column ``class_index``, 0 by default) and
returns float32 maps in [0, 1] with the patches' spatial shape (1 = strongest evidence for "nodule"; a
patch without any evidence gets an all-zero map):

* ``method="occlusion"`` (default): ``monai.visualize.OcclusionSensitivity``; the evidence at a voxel is
  how much the nodule logit drops when a Gaussian-weighted occluder centred near it fades that region to
  0 (air, for patches windowed to [0, 1]). Model-agnostic and faithful: when the decision hangs on one
  bright blob, the map peaks on that blob. 3D patches: by default only the central axial slice is
  computed (what :func:`write_evidence_png` shows; about 30x cheaper than the cube), ``volume=True``
  computes the whole cube.
* ``method="gradcam"``: ``monai.visualize.GradCAM`` on the last Conv2d/Conv3d (or ``target_layer``),
  upsampled to the patch. MONAI's default post-processing maps a CAM's max to 0 and its min to 1
  (``default_normalizer``); we take the raw ReLU'd map instead, so high = evidence. GradCAM runs on a
  copy of the network: no hooks stay on the caller's network and in-place activations (which break
  PyTorch's full backward hooks) are switched off on the copy only.

:func:`write_evidence_png` saves the CT patch in the lung window beside the same patch with the map as a
semi-transparent heat overlay; 3D patches (and 3D maps) show their central axial slice.
"""

from __future__ import annotations

import copy
from pathlib import Path

import cv2
import numpy as np
import torch

from data_prep.images2d import LUNG_WINDOW_HU, window_to_uint8
from lungnod_ext.inference.overlays import write_png

METHODS = ("occlusion", "gradcam")
HEAT_OPACITY = 0.4


def last_conv_layer(network: torch.nn.Module) -> str:
    """Name (as in ``named_modules``) of the network's last Conv2d/Conv3d module: GradCAM's default target."""
    names = [n for n, m in network.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    if not names:
        raise ValueError("the network has no Conv2d/Conv3d layer to explain; give target_layer")
    return names[-1]


def _device(network: torch.nn.Module) -> torch.device:
    p = next(network.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _occlusion(network: torch.nn.Module, patches: torch.Tensor, class_index: int, volume: bool) -> np.ndarray:
    """Logit drop when occluded, >= 0: (N, *spatial), or (N, H, W) for 3D patches unless ``volume``."""
    from monai.visualize import OcclusionSensitivity

    spatial = patches.shape[2:]
    mask = [max(2, s // 4) for s in spatial]
    occ = OcclusionSensitivity(network, mask_size=mask, n_batch=64, verbose=False, mode="gaussian", overlap=0.5,
                               activate=False)
    central_only = len(spatial) == 3 and not volume
    # only the central axial slice; MONAI's b_box max is exclusive here (the crop uses it as an end index)
    b_box = [spatial[0] // 2, spatial[0] // 2 + 1, -1, -1, -1, -1] if central_only else None
    maps = []
    with torch.no_grad():
        for p in patches:
            x = p[None]
            base = float(network(x)[0, class_index])
            occ_map, _ = occ(x, b_box=b_box)        # (1, n_logits, *spatial), D cropped to 1 when central_only
            m = occ_map[0, class_index].cpu().numpy()
            maps.append(base - (m[0] if central_only else m))
    return np.clip(np.stack(maps), 0.0, None)


def _gradcam(network: torch.nn.Module, patches: torch.Tensor, class_index: int, target_layer: str | None) -> np.ndarray:
    """Raw (ReLU'd) GradCAM upsampled to the patch: (N, *spatial)."""
    from monai.visualize import GradCAM

    layer = target_layer or last_conv_layer(network)
    if layer not in dict(network.named_modules()):
        raise ValueError(f"target_layer {layer!r} is not a module of the network")
    work = copy.deepcopy(network).requires_grad_(True)   # frozen inference weights still need gradients here
    for module in work.modules():
        if getattr(module, "inplace", False):
            module.inplace = False
    cam = GradCAM(nn_module=work, target_layers=layer, postprocessing=lambda a: a)
    with torch.enable_grad():
        return cam(x=patches, class_idx=class_index).detach().cpu().numpy()[:, 0]


def _normalise(maps: np.ndarray) -> np.ndarray:
    """Each map min-max scaled to [0, 1]; a flat (or non-finite) map becomes zeros."""
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    out = np.zeros_like(maps)
    for i, m in enumerate(maps):
        lo, hi = float(m.min()), float(m.max())
        if hi > lo:
            out[i] = (m - lo) / (hi - lo)
    return out


def evidence_maps(network: torch.nn.Module, patches: torch.Tensor, method: str = "occlusion",
                  target_layer: str | None = None, class_index: int = 0, volume: bool = False) -> np.ndarray:
    """Evidence maps (module doc) for ``patches`` (N, C, H, W) or (N, C, D, H, W), e.g. CT windowed to [0, 1].

    Returns float32 in [0, 1]: (N, H, W) for 2D patches; (N, D, H, W) for 3D patches with GradCAM or with
    ``volume=True``; (N, H, W) (the central axial slice ``D // 2``) for 3D occlusion by default.
    ``target_layer``: GradCAM's layer name (default: the last convolution). The network's train/eval
    mode is restored afterwards.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if patches.ndim not in (4, 5):
        raise ValueError(f"patches must be (N, C, H, W) or (N, C, D, H, W), got shape {tuple(patches.shape)}")
    spatial = tuple(patches.shape[2:])
    out_spatial = spatial[1:] if len(spatial) == 3 and method == "occlusion" and not volume else spatial
    if patches.shape[0] == 0:
        return np.zeros((0, *out_spatial), np.float32)
    x = patches.detach().to(device=_device(network), dtype=torch.float32)
    was_training = network.training
    network.eval()
    try:
        if method == "occlusion":
            maps = _occlusion(network, x, class_index, volume)
        else:
            maps = _gradcam(network, x, class_index, target_layer)
    finally:
        network.train(was_training)
    if maps.shape != (patches.shape[0], *out_spatial):
        raise ValueError(f"evidence maps came out {maps.shape}, expected {(patches.shape[0], *out_spatial)}")
    return _normalise(maps)


def _central_slice(a: np.ndarray) -> np.ndarray:
    return a[a.shape[0] // 2] if a.ndim == 3 else a


def evidence_overlay(patch_hu: np.ndarray, evidence: np.ndarray, size: int = 192) -> tuple[np.ndarray, np.ndarray]:
    """(CT, CT + heat) RGB uint8 panels ``(size, size, 3)``: the patch (H, W) or its central axial slice
    (D, H, W) in the lung window, and the same with ``evidence`` in [0, 1] (same slicing rule) as jet colours
    at 40 % opacity."""
    grey = window_to_uint8(_central_slice(np.asarray(patch_hu)), LUNG_WINDOW_HU)
    heat = np.clip(np.nan_to_num(_central_slice(np.asarray(evidence, dtype=np.float32))) * 255.0, 0, 255)
    grey = cv2.resize(grey, (size, size), interpolation=cv2.INTER_LINEAR)
    heat = cv2.resize(heat.astype(np.uint8), (size, size), interpolation=cv2.INTER_LINEAR)
    ct_rgb = np.repeat(grey[:, :, None], 3, axis=2)
    colour = cv2.applyColorMap(heat, cv2.COLORMAP_JET)[:, :, ::-1]
    blend = ((1.0 - HEAT_OPACITY) * ct_rgb + HEAT_OPACITY * colour).astype(np.uint8)
    return ct_rgb, blend


def write_evidence_png(patch_hu: np.ndarray, evidence: np.ndarray, path, title: str = "", size: int = 192) -> Path:
    """PNG (atomic): left the patch in lung window, right with the evidence map as a heat overlay
    (:func:`evidence_overlay`), ``title`` written top left. Image ``(size, 2 * size + 4, 3)``."""
    ct_rgb, blend = evidence_overlay(patch_hu, evidence, size)
    image = np.concatenate([ct_rgb, np.full((size, 4, 3), 255, np.uint8), blend], axis=1)
    if title:
        cv2.putText(image, title, (5, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return write_png(path, np.ascontiguousarray(image))
