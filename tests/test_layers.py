"""The layers of docs/architecture.md, checked on the imports: no module imports a layer
above its own, and config.py, at the bottom, imports nothing of brainbot."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.processes import ROOT

SRC = ROOT / "src" / "brainbot"

# Lowest first; a module may import its own layer and the ones below.
LAYERS = [
    ("brainbot.errors", "brainbot.config"),
    ("brainbot.kv",),
    ("brainbot.storage",),
    ("brainbot.migration", "brainbot.responder"),
    ("brainbot.service",),
    ("brainbot.composition",),
    ("brainbot.cli", "brainbot.demo", "brainbot.__main__", "brainbot"),
]


def layer_of(module: str) -> int:
    best = None
    for level, names in enumerate(LAYERS):
        for name in names:
            inside = module == name or module.startswith(name + ".")
            if inside and (best is None or len(name) > best[1]):
                best = (level, len(name))
    assert best is not None, f"{module} is in no layer: add it to LAYERS and the diagram"
    return best[0]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def brainbot_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("brainbot")]
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").startswith("brainbot")
        ):
            found.append(str(node.module))
    return found


def test_no_import_runs_back_up_the_layers() -> None:
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        module = module_name(path)
        for imported in brainbot_imports(path):
            if layer_of(imported) > layer_of(module):
                wrong.append(f"{module} imports {imported}")
    assert wrong == []


def test_config_and_errors_import_nothing_of_brainbot() -> None:
    assert brainbot_imports(SRC / "config.py") == []
    assert brainbot_imports(SRC / "errors.py") == []


def test_only_the_composition_root_and_entry_points_build_settings() -> None:
    builders = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "Settings"
            ):
                builders.append(module_name(path))
    assert builders == ["brainbot.composition"]
