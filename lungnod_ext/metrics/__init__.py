"""Evaluation: voxel overlap, LUNA16 detection (FROC/CPM, mAP), patch classification, and the handlers
and evaluators that apply them to bundle runs. Imports ``inference`` and below.
"""

from lungnod_ext import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, __path__, {
    "classification": ["roc_auc", "binary_classification_metrics"],
    "detection": ["DetectionMatch", "match_detections", "FROCResult", "froc_curve", "froc", "detection_summary",
                  "box_iou_3d", "average_precision_3d", "map_50", "map_50_95"],
    "detection_evaluation": ["load_reference", "load_predictions", "evaluate_stage", "evaluate_pipeline",
                             "format_table"],
    "model_evaluation": ["size_band", "read_references", "read_small_marks", "subset_references", "score_stage",
                         "per_nodule_dice"],
    "overlap": ["safe_ratio", "confusion_counts", "dice", "iou", "precision", "recall", "specificity", "f1",
                "voxel_metrics", "from_engine_ignoring"],
    "patch_evaluation": ["PatchMetricsHandler"],
    "seg_evaluation": ["overlap_detection", "reference_nodules", "summarise", "SegmentationEvaluationHandler"],
})
