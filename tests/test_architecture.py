"""Imports point down the layers of docs/architecture.md; a change that points one upward fails here.

Every `import` in medsynth/, components/ and pipelines/ is read with `ast` — also those inside
functions, which Python only runs later — and mapped to its unit (a subpackage or top-level module
of medsynth, or components, or pipelines). A unit may import its own modules and any unit of a
lower layer, nothing above it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Lowest first; docs/architecture.md draws the same list.
LAYERS: list[set[str]] = [
    {"medsynth", "medsynth.errors", "medsynth.sizes", "medsynth.progress", "medsynth.cache",
     "medsynth.storage", "medsynth.pictures", "medsynth.network", "medsynth.cpu"},
    {"medsynth.data", "medsynth.models"},
    {"medsynth.train", "medsynth.tracker"},
    {"medsynth.evaluate", "medsynth.utility"},
    {"medsynth.serving", "medsynth.cluster"},
    {"medsynth.pipeline_steps", "medsynth.kfp_client"},
    {"components"},
    {"pipelines"},
    {"medsynth.demo", "medsynth.demo_console"},  # entry points: they drive the pipeline
    {"medsynth.cli", "medsynth.cli_help"},
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] in ("components", "pipelines"):
        return parts[0]
    if parts[0] != "medsynth":
        return None
    return "medsynth" if len(parts) == 1 else f"medsynth.{parts[1]}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def upward_imports(modules: dict[str, str]) -> list[str]:
    """Each import of {module name: source} that points to a higher layer (or out of the layers)."""
    bad = []
    for module, source in sorted(modules.items()):
        src = unit_of(module)
        for line, target in imports(source):
            dst = unit_of(target)
            if dst is None or dst == src:
                continue
            if src not in LAYER or dst not in LAYER:
                bad.append(f"{module}:{line}: {src} or {dst} is in no layer of LAYERS")
            elif LAYER[dst] > LAYER[src]:
                bad.append(f"{module}:{line}: {src} imports {target}, a layer above it")
    return bad


def test_every_import_points_down_the_layers():
    files = sorted(p for d in ("medsynth", "components", "pipelines") for p in (ROOT / d).rglob("*.py"))
    assert len(files) > 50
    assert upward_imports({module_name(p): p.read_text() for p in files}) == []


def test_an_upward_import_is_caught():
    # a library module importing its caller, as train/launcher.py once imported medsynth.cli
    lazy = "def f():\n    from medsynth.cli import build_parser\n"  # inside a function counts too
    assert upward_imports({"medsynth.train.launcher": lazy}) == [
        "medsynth.train.launcher:2: medsynth.train imports medsynth.cli, a layer above it"
    ]
    assert upward_imports({"medsynth.kfp_client.client": "import pipelines.medsynth_train\n"})
    assert upward_imports({"medsynth.cli": "from medsynth.train.config import TrainConfig\n"}) == []


def test_the_architecture_page_names_every_unit():
    text = (ROOT / "docs" / "architecture.md").read_text()
    for unit in LAYER:
        name = unit.split(".", 1)[-1] if unit != "medsynth" else "medsynth"
        assert f"`{name}" in text, unit
