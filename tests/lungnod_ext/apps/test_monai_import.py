"""MONAI imported for inference without MLflow, pandas, scipy.signal, ... (lungnod_ext.apps.monai_import) and the CLI's use
of it."""

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


def test_a_dotted_name_hides_a_subpackage_and_importers_limit_who_is_refused(tmp_path, monkeypatch):
    pkg = tmp_path / "lungnod_probe_big"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "heavy.py").write_text("VALUE = 3\n")
    (pkg / "light.py").write_text("VALUE = 4\n")
    user = tmp_path / "lungnod_probe_user"      # a package whose own imports are refused
    user.mkdir()
    (user / "__init__.py").write_text("try:\n    import lungnod_probe_big.heavy\n    SAW = True\n"
                                      "except ModuleNotFoundError:\n    SAW = False\n")
    other = tmp_path / "lungnod_probe_other"    # another package importing the same module gets it
    other.mkdir()
    (other / "__init__.py").write_text("import lungnod_probe_big.heavy\nSAW = lungnod_probe_big.heavy.VALUE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with hidden_packages(["lungnod_probe_big.heavy"], importers=["lungnod_probe_user"]):
        import lungnod_probe_big.light   # the package and its other modules are untouched

        import lungnod_probe_user
        assert lungnod_probe_user.SAW is False
        import lungnod_probe_other
        assert lungnod_probe_other.SAW == 3
    assert lungnod_probe_big.light.VALUE == 4
    for name in ("lungnod_probe_big", "lungnod_probe_big.heavy", "lungnod_probe_big.light", "lungnod_probe_user",
                 "lungnod_probe_other"):
        monkeypatch.delitem(sys.modules, name)


def test_fresh_process_imports_monai_without_mlflow_and_pandas_and_still_parses_the_bundle():
    script = textwrap.dedent(f"""
        import sys
        from lungnod_ext.apps.monai_import import import_monai_for_inference
        print("hidden", import_monai_for_inference())
        print("loaded", "mlflow" in sys.modules, "pandas" in sys.modules)
        print("also hidden", [m for m in ("scipy.signal", "matplotlib", "sklearn", "itk") if m in sys.modules])
        import monai.transforms.utils as transform_utils
        print("scikit-image", transform_utils.has_measure, "skimage.measure" in sys.modules)
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
        import mlflow, pandas, scipy.signal
        print("after", "mlflow" in sys.modules, pandas.DataFrame({{"a": [1, 2]}})["a"].sum(),
              round(float(abs(scipy.signal.hilbert([1.0, 0.0, -1.0, 0.0])).sum()), 6))
        print("again", import_monai_for_inference())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "hidden True" in lines
    assert "loaded False False" in lines
    assert "network TraceableFlexibleUNet True" in lines
    assert "mlflow-handler OptionalImportError" in lines      # MONAI saw MLflow as not installed
    assert "also hidden []" in lines                          # nor scipy.signal, matplotlib, scikit-learn, ITK
    assert "scikit-image True True" in lines                  # which MONAI's lung tools do not need, unlike skimage
    assert "after True 3 4.0" in lines                         # ... while the packages themselves still import
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
