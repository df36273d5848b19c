"""Serve a lungnod bundle in MONAI Label's ``monaibundle`` sample app: what each bundle's
``docs/run_monailabel.sh`` runs (checked with monailabel 0.8.5, MONAI 1.6.1).

    python -m lungnod_ext.apps.monailabel_serve <bundle folder> <studies folder> [port] [start_server options]

1. the monaibundle app, copied from the installed monailabel package (``monailabel apps --download``
   copies it locally; nothing is downloaded) into ``$MONAILABEL_WORK`` (default ``~/.lungnod/monailabel``);
2. the bundle (configs, docs, LICENSE, ``models/model.pt``) copied to ``<app>/model/<bundle name>``, where
   that app looks for local bundles; a copy, because MONAI Label writes into it (training:
   ``models/model.pt`` and ``eval/``; inference: the bundle's report files under ``eval/``); an existing
   copy is used as it is;
3. ``monailabel start_server`` (this process becomes it) on ``$MONAILABEL_HOST`` (default 127.0.0.1) with
   local bundles only (``zoo_source github``: the default source lists the online model zoo first) and no
   SAM2 (its infer task downloads weights at start). Options after the port go to start_server as they
   are (e.g. ``--conf skip_trainers true``).

Run it with the python of a venv that holds monailabel and lungnod together (monailabel on PATH): MONAI
Label needs torchvision, numpy<2 and pydicom<3, so not the main lungnod venv. A problem before the
server starts prints one ``error: ...`` line and exits 2.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

APP_NAME = "monaibundle"
DEFAULT_PORT = 8000


class ServeError(Exception):
    """A problem found before the server starts (one line for the user)."""


def copy_bundle_into_app(bundle: Path, app: Path) -> tuple[Path, bool]:
    """``bundle`` copied to ``<app>/model/<bundle name>`` unless that folder exists: (the copy, copied?)."""
    dest = app / "model" / bundle.name
    if dest.is_dir():
        return dest, False
    tmp = dest.with_name(f".{dest.name}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "models").mkdir(parents=True)
    for name in ("configs", "docs"):
        shutil.copytree(bundle / name, tmp / name)
    shutil.copy2(bundle / "LICENSE", tmp / "LICENSE")
    shutil.copy2(bundle / "models" / "model.pt", tmp / "models" / "model.pt")
    os.replace(tmp, dest)
    return dest, True


def start_server_command(app: Path, studies: Path, name: str, host: str, port: int, extra: list[str]) -> list[str]:
    return ["monailabel", "start_server", "--app", str(app), "--studies", str(studies), "--host", host,
            "--port", str(port), "--conf", "models", name, "--conf", "zoo_source", "github",
            "--conf", "sam2", "false", *extra]


def prepare(bundle: Path, studies: Path, work: Path) -> Path:
    """Checks, then the app and the bundle copy in ``work``; returns the app folder."""
    if shutil.which("monailabel") is None or importlib.util.find_spec("monailabel") is None:
        raise ServeError(f"monailabel is not installed for {sys.executable}: activate the MONAI Label venv "
                         "(the install lines are in the bundle's docs/run_monailabel.sh)")
    if not (bundle / "configs" / "inference.json").is_file():
        raise ServeError(f"{bundle}: not a bundle folder (no configs/inference.json)")
    if not (bundle / "models" / "model.pt").is_file():
        raise ServeError(f"{bundle / 'models' / 'model.pt'}: missing; train the bundle first (docs/README.md)")
    if not studies.is_dir():
        raise ServeError(f"{studies}: studies folder not found")
    app = work / APP_NAME
    if not app.is_dir():
        work.mkdir(parents=True, exist_ok=True)
        subprocess.run(["monailabel", "apps", "--download", "--name", APP_NAME, "--output", str(work)], check=True)
    copy, copied = copy_bundle_into_app(bundle, app)
    if not copied:
        print(f"using the existing copy {copy} (delete it to copy {bundle} again)", file=sys.stderr)
    return app


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    bundle, studies, rest = Path(args[0]).resolve(), Path(args[1]).resolve(), args[2:]
    port = DEFAULT_PORT
    if rest and not rest[0].startswith("-"):
        if not rest[0].isdigit():
            print(f"error: port {rest[0]!r} is not a number", file=sys.stderr)
            return 2
        port, rest = int(rest[0]), rest[1:]
    work = Path(os.environ.get("MONAILABEL_WORK", Path.home() / ".lungnod" / "monailabel")).expanduser().resolve()
    host = os.environ.get("MONAILABEL_HOST", "127.0.0.1")
    try:
        app = prepare(bundle, studies, work)
    except (ServeError, OSError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cmd = start_server_command(app, studies, bundle.name, host, port, rest)
    print(f"serving {bundle.name} on http://{host}:{port} (3D Slicer: MONAI Label module, that address)",
          file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
