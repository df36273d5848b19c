"""From network output to what a person reads: candidates, stage-2 patches and scoring, overlays,
evidence maps, reports, DICOM SEG and SR, the slab inferer. Imports ``networks``, ``transforms``, ``data``.
"""

from lungnod_ext import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, __path__, {
    "attenuation": ["ATTENUATIONS", "ATTENUATION_KEYS", "attenuation_class", "reader_attenuation", "nodule_attenuation",
                    "add_attenuation", "MeasureAttenuationd"],
    "candidates": ["extract_candidates_and_labels", "extract_candidates", "candidates_csv_text",
                   "write_candidates", "ExtractCandidates", "ExtractCandidatesd"],
    "classify": ["CandidatePatchesd", "PatchBatchInferer", "WriteClassificationd", "check_candidates_json",
                 "resolve_classification_inputs"],
    "dicom_seg": ["NoNoduleToEncodeError", "find_source_series", "source_slice_headers", "segment_label",
                  "write_dicom_seg", "read_dicom_seg"],
    "dicom_sr": ["write_measurement_report"],
    "explain": ["last_conv_layer", "evidence_maps", "evidence_overlay", "write_evidence_png"],
    "images2d_writer": ["WriteMask2Dd"],
    "measurements": ["AXIS_KEYS", "axial_axes", "add_axial_axes", "MeasureAxialAxesd"],
    "outline_refine": ["refine_outline", "refine_outlines", "RefineOutlinesd"],
    "overlays": ["DisplayOrientation", "overlay_slice", "write_png", "write_candidate_overlays"],
    "patches": ["patch_offsets_mm", "patch_channels", "extract_patches"],
    "report": ["replace_dir", "write_segmentation_report", "WriteSegmentationReportd"],
    "slab_inferer": ["SlabSliceInferer"],
    "zoom_points": ["ZOOM_POINTS_KEY", "blob_peaks", "zoom_points_mask", "AddZoomPointsd"],
})
