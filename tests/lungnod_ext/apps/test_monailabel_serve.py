"""lungnod_ext.apps.monailabel_serve without MONAI Label (the main venv has none): the checks, the bundle copy
and the start_server command. The real server runs in tests/ecosystem/test_monailabel.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lungnod_ext.apps import monailabel_serve as serve

REPO = Path(__file__).resolve().parents[3]
SEG = REPO / "bundles" / "lung_nodule_ct_segmentation"


def _bundle_with_model(tmp_path: Path) -> Path:
    bundle = tmp_path / "bundles" / SEG.name
    shutil.copytree(SEG, bundle, ignore=shutil.ignore_patterns("models", "eval"))
    (bundle / "models").mkdir()
    (bundle / "models" / "model.pt").write_bytes(b"weights")
    return bundle


def test_bundle_is_copied_where_the_monaibundle_app_looks_and_an_existing_copy_is_kept(tmp_path):
    bundle = _bundle_with_model(tmp_path)
    (bundle / "eval").mkdir()
    (bundle / "eval" / "big.nii.gz").write_bytes(b"x")
    app = tmp_path / "work" / "monaibundle"
    copy, copied = serve.copy_bundle_into_app(bundle, app)
    assert copied and copy == app / "model" / SEG.name
    assert sorted(p.name for p in copy.iterdir()) == ["LICENSE", "configs", "docs", "models"]
    assert (copy / "models" / "model.pt").read_bytes() == b"weights"
    assert (copy / "configs" / "inference.json").read_bytes() == (SEG / "configs" / "inference.json").read_bytes()
    (copy / "models" / "model.pt").write_bytes(b"retrained by MONAI Label")
    again, copied = serve.copy_bundle_into_app(bundle, app)
    assert again == copy and not copied
    assert (copy / "models" / "model.pt").read_bytes() == b"retrained by MONAI Label"
    assert not list((app / "model").glob(".*"))  # no temporary folder left


def test_start_server_command_serves_local_bundle_only_without_sam2():
    cmd = serve.start_server_command(Path("/w/monaibundle"), Path("/s"), SEG.name, "127.0.0.1", 8123,
                                     ["--conf", "skip_trainers", "true"])
    assert cmd == ["monailabel", "start_server", "--app", "/w/monaibundle", "--studies", "/s", "--host",
                   "127.0.0.1", "--port", "8123", "--conf", "models", SEG.name, "--conf", "zoo_source", "github",
                   "--conf", "sam2", "false", "--conf", "skip_trainers", "true"]


@pytest.mark.parametrize("problem", ["no_monailabel", "no_model", "no_studies", "bad_port"])
def test_problems_give_one_error_line_and_exit_2(problem, tmp_path, monkeypatch):
    bundle = _bundle_with_model(tmp_path)
    studies = tmp_path / "studies"
    studies.mkdir()
    monkeypatch.setenv("MONAILABEL_WORK", str(tmp_path / "work"))
    if problem != "no_monailabel":  # pretend it is installed: each check below comes before any use of it
        monkeypatch.setattr(serve.shutil, "which", lambda name: f"/bin/{name}")
        monkeypatch.setattr(serve.importlib.util, "find_spec", lambda name: object())
    args = [str(bundle), str(studies)]
    if problem == "no_model":
        (bundle / "models" / "model.pt").unlink()
    elif problem == "no_studies":
        args[1] = str(tmp_path / "missing")
    elif problem == "bad_port":
        args.append("80x")
    assert serve.main(args) == 2
    assert not (tmp_path / "work").exists()


def test_run_monailabel_sh_without_monailabel_says_so(tmp_path):
    """The bundle's script as a user runs it, with a python that has no monailabel (this venv)."""
    bundle = _bundle_with_model(tmp_path)
    (tmp_path / "studies").mkdir()
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "MONAILABEL_WORK": str(tmp_path / "work"),
           "HOME": str(tmp_path)}
    proc = subprocess.run(["bash", str(bundle / "docs" / "run_monailabel.sh"), str(tmp_path / "studies")],
                          check=False, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    expected = (f"error: monailabel is not installed for {Path(sys.executable).parent / 'python'}: activate the "
                "MONAI Label venv (the install lines are in the bundle's docs/run_monailabel.sh)")
    assert proc.stderr.strip().splitlines() == [expected]
