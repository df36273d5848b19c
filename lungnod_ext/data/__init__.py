"""What the bundles read: user inputs (DICOM folder / NIfTI, checked), bundle and dataset paths,
MetaTensor geometry, data loaders and class-balanced samplers. Imports only ``data_prep``.
"""

from lungnod_ext import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, __path__, {
    "bundle_paths": ["bundle_root", "default_dataset_dir", "load_split"],
    "bundle_settings": ["check_switches"],
    "data_loading": ["FailLoudThreadBuffer", "ThreadDataLoader"],
    "input_checks": ["check_ct_volume"],
    "inputs": ["resolve_inputs", "resolve_image2d_inputs", "check_checkpoint"],
    "meta": ["affine_ras", "geometry_from_meta_tensor", "channel_view_zyx", "channel_zyx", "case_id_from_meta"],
    "samplers": ["balance_weights", "balanced_sampler"],
})
