"""The layer rule of README "Architecture": every import in lungnod_ext and data_prep points down the layers.

apps -> handlers -> metrics -> inference -> networks / transforms -> data -> data_prep. A module may import
from its own subpackage and from any layer below it, never from one above (function-level imports too),
and data_prep imports nothing from lungnod_ext.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"data_prep": 0, "data": 1, "transforms": 2, "networks": 2, "inference": 3, "metrics": 4, "handlers": 5,
          "apps": 6, "lungnod_ext": 7}   # lungnod_ext itself: __main__ (runs apps.cli) and lazy_exports
SUBPACKAGES = set(LAYERS) - {"data_prep", "lungnod_ext"}


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "data_prep":
        return "data_prep"
    if parts[0] == "lungnod_ext":
        return parts[1] if len(parts) > 1 and parts[1] in SUBPACKAGES else "lungnod_ext"
    return None


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "lungnod_ext":     # from lungnod_ext import metrics (lazy_exports, __version__: top level)
                found += [(node.lineno, f"lungnod_ext.{a.name}") for a in node.names if a.name in SUBPACKAGES]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return found


def _violations(root: Path = REPO) -> list[str]:
    bad = []
    for path in sorted((root / "lungnod_ext").rglob("*.py")) + sorted((root / "data_prep").rglob("*.py")):
        rel = path.relative_to(root)
        own = _layer_of(".".join(rel.with_suffix("").parts))
        for line, module in _imports(path):
            target = _layer_of(module)
            if target is None or target == own or module == "lungnod_ext":
                continue
            if LAYERS[target] > LAYERS[own] or (LAYERS[target] == LAYERS[own] and target != own):
                bad.append(f"{rel}:{line} ({own}) imports {module} ({target})")
    return bad


def test_imports_only_go_down_the_layers():
    assert _violations() == []


def test_every_module_sits_in_a_layer():
    loose = sorted(p.name for p in (REPO / "lungnod_ext").glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert loose == []
    assert sorted(p.name for p in (REPO / "lungnod_ext").iterdir() if p.is_dir() and (p / "__init__.py").exists()) \
        == sorted(SUBPACKAGES)


def test_the_checker_sees_an_upward_import(tmp_path):
    fake = tmp_path / "lungnod_ext" / "data"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("def f():\n    from lungnod_ext.apps.cli import main\n")
    (tmp_path / "data_prep").mkdir()
    (tmp_path / "data_prep" / "x.py").write_text("from lungnod_ext.data import inputs\n")
    assert _violations(tmp_path) == ["lungnod_ext/data/bad.py:2 (data) imports lungnod_ext.apps.cli (apps)",
                             "data_prep/x.py:1 (data_prep) imports lungnod_ext.data (data)"]
