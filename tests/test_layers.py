"""The layers of docs/architecture.md, checked on the imports: no module imports a layer
above its own, and config.py, at the bottom, imports nothing of brainbot."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.processes import ROOT

SRC = ROOT / "src" / "brainbot"

# Lowest first; a module may import its own layer and the ones below.
LAYERS = [
    ("brainbot.errors", "brainbot.config", "brainbot.serving", "brainbot.json_bytes"),
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
    """Every brainbot module ``path`` imports: absolute or relative, and ``from brainbot
    import x`` as ``brainbot.x`` when ``x`` is a module."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("brainbot")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            if not base.startswith("brainbot"):
                continue
            for alias in node.names:
                sub = SRC.parent / Path(*f"{base}.{alias.name}".split("."))
                is_module = sub.with_suffix(".py").exists() or (sub / "__init__.py").exists()
                found.append(f"{base}.{alias.name}" if is_module else base)
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


def builds_settings(node: ast.AST) -> bool:
    """``Settings(...)``, ``config.Settings(...)``, ``Settings.model_validate(...)``..."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Name):
        return func.id == "Settings"
    if isinstance(func, ast.Attribute):
        owner = func.value
        named = isinstance(owner, ast.Name) and owner.id == "Settings"
        return func.attr == "Settings" or (named and func.attr.startswith("model_"))
    return False


def test_only_the_composition_root_builds_settings() -> None:
    builders = [
        module_name(path)
        for path in sorted(SRC.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if builds_settings(node)
    ]
    assert builders == ["brainbot.composition"]
