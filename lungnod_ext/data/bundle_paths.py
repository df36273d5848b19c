"""Where a bundle lives and what its datalist holds, so configs work from the bundle folder, the repo root
or an installed copy (MONAI Label copies bundles elsewhere and passes ``--bundle_root``)."""

from __future__ import annotations

import json
from pathlib import Path

from data_prep.errors import InputNotFoundError

REPO_ROOT = Path(__file__).resolve().parents[2]


def bundle_root(name: str) -> str:
    """The folder of bundle ``name``: the working directory when it is that bundle (holds
    ``configs/metadata.json`` naming it, or is called ``name``), else ``./bundles/<name>`` under the
    working directory, else the copy beside this package (``<repo>/bundles/<name>``), else ``"."``."""
    cwd = Path.cwd()
    if cwd.name == name or _metadata_name(cwd) == name:
        return str(cwd)
    for candidate in (cwd / "bundles" / name, REPO_ROOT / "bundles" / name):
        if (candidate / "configs").is_dir():
            return str(candidate)
    return str(cwd)


def _metadata_name(folder: Path) -> str | None:
    meta = folder / "configs" / "metadata.json"
    if not meta.is_file():
        return None
    try:
        return json.loads(meta.read_text()).get("name")
    except (OSError, ValueError):
        return None


def default_dataset_dir() -> str:
    """The converted synthetic cohort the README's ``make demo`` writes (``<repo>/demo_out/converted``)."""
    return str(REPO_ROOT / "demo_out" / "converted")


def load_split(datalist, base_dir, split: str = "testing", fallbacks=("validation",)) -> list[dict]:
    """Entries of ``split`` in a MONAI datalist JSON with paths made absolute against ``base_dir``; the
    first non-empty of ``fallbacks`` when ``split`` is empty (a one-patient cohort has no test fold).
    Raises InputNotFoundError (one line) when the datalist is missing or all lists are empty."""
    from monai.data import load_decathlon_datalist

    path = Path(str(datalist))
    if not path.is_file():
        raise InputNotFoundError(path, "datalist not found: run `data-prep datalist <dir>` or set --dataset_dir")
    content = json.loads(path.read_text())
    for key in (split, *fallbacks):
        if content.get(key):
            return load_decathlon_datalist(str(path), True, key, str(base_dir))
    raise InputNotFoundError(path, f"datalist has no entries in {[split, *fallbacks]}")
