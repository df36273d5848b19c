"""The process entry point: exit code, flushed output and exit handlers survive the fast exit."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import atexit, sys
from lungnod_ext.apps import cli
atexit.register(lambda: print("exit handler ran", flush=True))
print("before the command")  # block-buffered into the pipe: lost unless run() flushes
sys.argv = ["lungnod", "evaluate", "/nonexistent/detect_out", "--reference", "/nonexistent/ref"]
cli.run()
print("not reached")
"""


def test_run_exits_with_the_command_code_after_flushing_and_exit_handlers(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.splitlines() == ["before the command", "exit handler ran"]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "/nonexistent/detect_out" in errors[0]


def test_overrides_read_json_and_python_spellings_of_true_false():
    """`--seg write_overlays=false` (JSON) and `=False` (as monai.bundle takes it) are both the bool; other text
    stays text, which the bundles' switch check refuses (tests/bundles/test_bundle_switches.py)."""
    from lungnod_ext.apps.cli import parse_overrides

    assert parse_overrides(["a=false", "b=False", "c=True", "d=None", "e=[1.5,1.5,-1]", "f=resnet18", "g=yes"]) == {
        "a": False, "b": False, "c": True, "d": None, "e": [1.5, 1.5, -1], "f": "resnet18", "g": "yes"}
