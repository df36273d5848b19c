"""The anchor users would pick instead: the MONAI model zoo's ``lung_nodule_ct_detection`` RetinaNet, built
from MONAI with the zoo bundle's published inference configuration, with random weights (timing only),
run on one CT at the zoo's resolution.

MONAI's detection networks import torchvision (its IntermediateLayerGetter), which does not import beside
the project's torch 2.13.0+cpu; run this with the MONAI Label venv's python (torch 2.14.1 + torchvision
0.29.1, built by tests/ecosystem/monailabel_env.sh), as bench_pipeline.py does.

    python tests/benchmarks/zoo_retinanet_anchor.py <ct.nii.gz> [--threads 2] [--windows N]

What is reproduced from the zoo's ``configs/inference.json`` (model-zoo, lung_nodule_ct_detection):
ResNet-50 3D backbone (``conv1_t_stride [2,2,1]``, ``conv1_t_size [7,7,7]``), FPN feature extractor on
layers [1, 2], RetinaNet with 3 anchors per location and ``size_divisible [16,16,8]``,
``AnchorGeneratorWithAnchorShape`` (feature_map_scales [1,2,4], base anchor shapes [6,8,4], [8,6,5],
[10,10,6]), box selector (score 0.02, top-k 1000, NMS 0.22, 300 detections), sliding window
512x512x192 with overlap 0.25 (sw_batch_size 1, constant blending); preprocessing RAS orientation,
spacing 0.703125 x 0.703125 x 1.25 mm, intensity -1024..300 HU -> [0, 1]. No AMP: this is a CPU run.

``--windows N`` runs only the first N sliding windows' worth of z extent (a shorter volume), to check the
script quickly; the benchmark runs the whole volume. Prints one JSON line: seconds per stage, the
resampled shape, the number of sliding windows and of boxes.
"""

from __future__ import annotations

import argparse
import json
import math
import time

ZOO_SPACING_MM = (0.703125, 0.703125, 1.25)
ZOO_ROI = (512, 512, 192)
ZOO_OVERLAP = 0.25


def n_windows(shape, roi=ZOO_ROI, overlap=ZOO_OVERLAP) -> int:
    """Sliding windows MONAI places over ``shape`` (per axis: 1 if it fits, else ceil((s - r) / step) + 1)."""
    total = 1
    for s, r in zip(shape, roi):
        step = max(int(r * (1 - overlap)), 1)
        total *= 1 if s <= r else math.ceil((s - r) / step) + 1
    return total


def build_detector():
    """The zoo bundle's ``network_def`` + ``detector`` + ``detector_ops``, random weights, eval mode."""
    import torch
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.networks.retinanet_network import RetinaNet, resnet_fpn_feature_extractor
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
    from monai.networks.nets import resnet

    torch.manual_seed(0)
    backbone = resnet.resnet50(spatial_dims=3, n_input_channels=1, conv1_t_stride=[2, 2, 1], conv1_t_size=[7, 7, 7])
    features = resnet_fpn_feature_extractor(backbone, 3, False, [1, 2], None)
    network = RetinaNet(spatial_dims=3, num_classes=1, num_anchors=3, feature_extractor=features,
                        size_divisible=[16, 16, 8])
    anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=[1, 2, 4],
                                             base_anchor_shapes=[[6, 8, 4], [8, 6, 5], [10, 10, 6]])
    detector = RetinaNetDetector(network=network, anchor_generator=anchors, debug=False)
    detector.set_target_keys(box_key="box", label_key="label")
    detector.set_box_selector_parameters(score_thresh=0.02, topk_candidates_per_level=1000, nms_thresh=0.22,
                                         detections_per_img=300)
    detector.set_sliding_window_inferer(roi_size=list(ZOO_ROI), overlap=ZOO_OVERLAP, sw_batch_size=1,
                                        mode="constant", device="cpu")
    detector.eval()
    return detector


def preprocess(path: str):
    """The zoo's preprocessing: (1, x, y, z) float32 in [0, 1] at 0.703125 x 0.703125 x 1.25 mm, RAS."""
    from monai.transforms import (Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, Orientationd,
                                  ScaleIntensityRanged, Spacingd)

    pre = Compose([LoadImaged(keys="image"), EnsureChannelFirstd(keys="image"),
                   Orientationd(keys="image", axcodes="RAS"), Spacingd(keys="image", pixdim=ZOO_SPACING_MM),
                   ScaleIntensityRanged(keys="image", a_min=-1024.0, a_max=300.0, b_min=0.0, b_max=1.0, clip=True),
                   EnsureTyped(keys="image")])
    return pre({"image": path})["image"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--windows", type=int, default=0, help="only this many windows' worth of z (0: all)")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    image = preprocess(a.image)
    if a.windows:
        image = image[..., : ZOO_ROI[2] + (a.windows - 1) * int(ZOO_ROI[2] * (1 - ZOO_OVERLAP))]
    t_pre = time.perf_counter() - t0
    t0 = time.perf_counter()
    detector = build_detector()
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = detector([image.as_tensor() if hasattr(image, "as_tensor") else image], use_inferer=True)
    t_detect = time.perf_counter() - t0
    print(json.dumps({"preprocess_s": round(t_pre, 2), "build_s": round(t_build, 2), "detect_s": round(t_detect, 2),
                      "resampled_shape": list(image.shape[1:]), "n_windows": n_windows(image.shape[1:]),
                      "n_boxes": int(out[0]["box"].shape[0]), "threads": a.threads}))


if __name__ == "__main__":
    main()
