"""Ignite handlers for bundle training and evaluation: checkpoints, loss / metric history, MLflow extras,
data-wait timing, multi-process bookkeeping. Imports ``metrics`` and below.
"""

from lungnod_ext import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, __path__, {
    "checkpoints": ["unwrap", "save_model", "BestModelSaver", "ResumableTraining"],
    "distributed": ["rank_and_world_size", "batch_case_ids", "batch_size_of", "param_checksum", "BatchCaseRecorder"],
    "history": ["LossHistoryHandler", "MetricHistoryHandler"],
    "timing": ["DataWaitTimer"],
    "tracking": ["MLflowRunExtras", "validation_overlay", "ValidationOverlayHandler"],
})
