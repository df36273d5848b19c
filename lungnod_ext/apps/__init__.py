"""The applications on top: ``lungnod`` command line, detection pipeline, demo, the training recipe and
its patch dataset, MONAI Label launcher. May import every layer below.
"""

from lungnod_ext import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, __path__, {
    "bundle_runs": ["cli_args", "bundle_run"],
    "cli": ["build_parser", "run", "main"],
    "detect_inputs": ["DetectInputs", "can_fork_conversion"],
    "demo": ["prepare_data", "run_training_demo", "compare_with_readers", "run_shipped_demo", "run_demo"],
    "monailabel_serve": ["ServeError", "copy_bundle_into_app", "start_server_command", "prepare", "main"],
    "process_memory": ["peak_rss_mb"],
    "patch_dataset": ["build_patch_dataset", "build_patch_dataset_2d"],
    "pipeline": ["PipelineConfig", "run_bundle_inference", "detect"],
    "train_models": ["RecipeSettings", "export_fp16", "train_models"],
})
