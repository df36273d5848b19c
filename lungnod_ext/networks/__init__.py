"""The networks and their training objective: the nodule CNN, the U-Net with a full-resolution skip, network setup (output prior, inference
mode), ONNX export, pretrained weights, the ignore-aware segmentation loss. Imports ``data`` and ``data_prep``.
"""

from lungnod_ext import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, __path__, {
    "classifier": ["NoduleCNN", "NoduleCNNEnsemble", "ensemble_state_dict"],
    "full_resolution_unet": ["FullResolutionUNet"],
    "losses": ["split_label", "MaskedDiceBCELoss"],
    "network_setup": ["memory_format_for", "prepare_for_inference", "init_output_prior", "bundle_network"],
    "onnx_export": ["export_onnx", "onnx_session"],
    "weights": ["WeightsError", "load_pretrained", "checkpoint_members"],
})
