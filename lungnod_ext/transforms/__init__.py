"""MONAI transforms for CT: HU windows, CLAHE, lung mask, resampling, 2.5D slabs, training labels,
crop sampling and batch augmentation. Imports ``lungnod_ext.data`` and ``data_prep``.
"""

from lungnod_ext import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, __path__, {
    "batch_augment": ["RandomBatchAugmentation"],
    "clahe": ["clahe_2d_slices", "clahe_3d_volume", "CLAHE", "CLAHEd"],
    "hu_window": ["Window", "resolve_window", "HUWindow", "HUWindowd"],
    "labels": ["BinarizeLabeld"],
    "lung_mask": ["LungMaskWarning", "fill_holes_per_slice", "dilate_mask_mm", "compute_lung_mask",
                  "compute_lung_masks", "close_slices_mm", "lung_core_mask", "reverse_axes_3d",
                  "LungMask", "LungMaskd", "lung_or_everything"],
    "resample": ["axis_map", "resample_axis_parallel", "ResampleToReference", "ResampleToReferenced"],
    "sampling": ["nodule_balanced_indices", "NoduleBalancedIndicesd"],
    "slab": ["check_slab", "SlabToChannelsd", "slab_channels", "slab_roi"],
})
