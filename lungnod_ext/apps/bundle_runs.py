"""``python -m monai.bundle run`` of a lungnod bundle in a child process, as a user would type it.

Overrides are config ids -> values (``--key value`` on MONAI's command line; non-strings as Python literals). The
child's output goes to a log file; a failure raises with the log's last lines, or, where the child stopped on
bad user data (a :class:`data_prep.errors.DataPrepError` inside MONAI's traceback), that error again.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from data_prep import errors


def _literal(value):
    """Tuples as lists, recursively: the config's JSON types."""
    if isinstance(value, (list, tuple)):
        return [_literal(v) for v in value]
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    return value


def cli_args(overrides: dict) -> list[str]:
    """``{"epochs": 3, "device": "cpu", "amp": False}`` -> ``["--epochs", "3", "--device", "cpu", "--amp", "False"]``:
    non-strings as Python literals, which python-fire (MONAI's command-line reader) reads back as the same values;
    JSON's ``false`` / ``true`` / ``null`` it would read as text ('false' is true to Python)."""
    out = []
    for k, v in overrides.items():
        out += [f"--{k}", v if isinstance(v, str) else repr(_literal(v))]
    return out


def bundle_run(bundle: Path, run_id: str | None, configs: list[str], overrides: dict, log: Path,
               env: dict | None = None) -> None:
    """Run ``python -m monai.bundle run [run_id] --config_file <configs> <overrides>`` in ``bundle``."""
    cfg = "[" + ",".join(f"'{c}'" for c in configs) + "]" if len(configs) > 1 else configs[0]
    cmd = [sys.executable, "-m", "monai.bundle", "run", *([run_id] if run_id else []), "--config_file", cfg,
           *cli_args(overrides)]
    child_env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=bundle, env=child_env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        lines = log.read_text(errors="replace").strip().splitlines()
        what = f"{Path(bundle).name} {run_id or 'run'}"
        user = [m for line in lines if (m := _USER_ERROR.match(line))]
        if user:   # the child's one line, e.g. "<datalist>: patches cut with ..."
            kind = getattr(errors, user[-1].group(1), None)
            kind = kind if isinstance(kind, type) and issubclass(kind, errors.DataPrepError) else errors.DataPrepError
            path, _, problem = user[-1].group(2).partition(": ")
            raise kind(path, f"{problem} ({what}, log {log})")
        raise RuntimeError(f"{what} failed (log {log}): {' | '.join(lines[-3:])}")


_USER_ERROR = re.compile(r"^data_prep\.errors\.(\w+): (.+)$")
"""How a bad-input error of ours ends a child's traceback (MONAI then wraps it in a RuntimeError)."""
