"""MONAI imported for inference without MLflow / pandas (lungnod_ext.apps.monai_import) and the CLI's use of it."""

import subprocess
import sys
import textwrap

import pytest

from lungnod_ext.apps.cli import _tracks_runs, build_parser
from lungnod_ext.apps.monai_import import hidden_packages
from lungnod_ext.data.bundle_paths import REPO_ROOT


def test_hidden_package_is_missing_inside_the_block_and_importable_after(tmp_path, monkeypatch):
    pkg = tmp_path / "lungnod_probe_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("VALUE = 42\n")
    (pkg / "sub.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with hidden_packages(["lungnod_probe_pkg"]):
        with pytest.raises(ModuleNotFoundError, match="hidden while MONAI is imported"):
            import lungnod_probe_pkg  # noqa: F401
        with pytest.raises(ModuleNotFoundError):
            import lungnod_probe_pkg.sub  # noqa: F401
        import json  # other packages are untouched

        assert json.loads("[1]") == [1]
    assert "lungnod_probe_pkg" not in sys.modules
    import lungnod_probe_pkg.sub

    assert (lungnod_probe_pkg.VALUE, lungnod_probe_pkg.sub.VALUE) == (42, 7)
    monkeypatch.delitem(sys.modules, "lungnod_probe_pkg")
    monkeypatch.delitem(sys.modules, "lungnod_probe_pkg.sub")


def test_fresh_process_imports_monai_without_mlflow_and_pandas_and_still_parses_the_bundle():
    script = textwrap.dedent(f"""
        import sys
        from lungnod_ext.apps.monai_import import import_monai_for_inference
        print("hidden", import_monai_for_inference())
        print("loaded", "mlflow" in sys.modules, "pandas" in sys.modules)
        from monai.bundle import ConfigParser
        import monai.handlers.mlflow_handler as mlflow_handler
        p = ConfigParser()
        p.read_config({str(REPO_ROOT / "bundles/lung_nodule_ct_segmentation/configs/inference.json")!r})
        p.update({{"bundle_root": {str(REPO_ROOT / "bundles/lung_nodule_ct_segmentation")!r}}})
        net = p.get_parsed_content("network_def")
        print("network", type(net).__name__, sum(x.numel() for x in net.parameters()) > 10**6)
        try:
            mlflow_handler.mlflow.get_tracking_uri()
            print("mlflow-handler works")
        except Exception as exc:
            print("mlflow-handler", type(exc).__name__)
        import mlflow, pandas
        print("after", "mlflow" in sys.modules, pandas.DataFrame({{"a": [1, 2]}})["a"].sum())
        print("again", import_monai_for_inference())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "hidden True" in lines
    assert "loaded False False" in lines
    assert "network FlexibleUNet True" in lines
    assert "mlflow-handler OptionalImportError" in lines      # MONAI saw MLflow as not installed
    assert "after True 3" in lines                            # ... while the packages themselves still import
    assert "again False" in lines                             # MONAI already imported: nothing hidden


@pytest.mark.parametrize("argv, tracks", [
    (["detect", "x", "--out", "y"], False),
    (["evaluate", "x", "--reference", "y"], False),
    (["demo"], False),
    (["demo", "--train"], True),
    (["demo", "--quick"], True),
    (["train-models", "--out", "y"], True),
])
def test_only_training_commands_import_mlflow(argv, tracks):
    assert _tracks_runs(build_parser().parse_args(argv)) is tracks
