"""The import rules of docs/architecture.md: every import under mstnet/, baselines/ and ablations/ (module level
and inside functions) stays within what its layer may use, so the layering cannot silently erode."""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEAVES = {"mstnet.atomic", "mstnet.errors", "mstnet.information", "mstnet.brock", "mstnet.results_files",
          "mstnet.claims"}
"""Modules every layer may use; they import nothing of the project."""
EVERY_LAYER = {"mstnet.metrics", "mstnet.models", "mstnet.data", "mstnet.synth", "mstnet.experiments",
               "mstnet.reporting", "mstnet.commands", "mstnet.cli"}

ALLOWED: dict[str, set[str]] = {
    "leaf": set(),
    "mstnet.metrics": {"mstnet.metrics"} | LEAVES,
    "mstnet.models": {"mstnet.models"} | LEAVES,
    "mstnet.data": {"mstnet.data"} | LEAVES,
    "mstnet.synth": {"mstnet.synth", "mstnet.data", "mstnet.metrics"} | LEAVES,
    "mstnet.experiments": {"mstnet.experiments", "mstnet.data", "mstnet.models", "mstnet.metrics", "mstnet.synth"}
    | LEAVES,
    "mstnet.reporting": {"mstnet.reporting", "mstnet.metrics"} | LEAVES,
    "mstnet.commands": EVERY_LAYER | LEAVES,
    "mstnet.cli": {"mstnet.commands"} | LEAVES,
    "mstnet": EVERY_LAYER | LEAVES,
    "plugins": {"mstnet.experiments", "mstnet.models", "mstnet.data", "mstnet.metrics"} | LEAVES,
}
"""Layer -> the project packages it may import (``mstnet`` itself is the package's ``__init__``)."""

FORBIDDEN_LIBRARIES: dict[str, set[str]] = {"mstnet.metrics": {"torch"}, "mstnet.reporting": {"torch"}}
"""Third-party packages a layer must not import: metrics are pure functions on arrays, reports read files."""


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """The layer a module belongs to: ``mstnet.<package>``, ``leaf``, ``mstnet`` or ``plugins``."""
    if module.split(".")[0] in ("baselines", "ablations"):
        return "plugins"
    if module in LEAVES:
        return "leaf"
    return ".".join(module.split(".")[:2])


@lru_cache(maxsize=None)
def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in the file, wherever it stands; ``from a import b`` gives
    ``a.b`` (a submodule or a name of ``a``, either names the package ``a``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path}:{node.lineno}: relative import; the project imports absolutely")
    return found


def target_layer(imported: str) -> str | None:
    """The project package an imported name belongs to (None outside the project)."""
    top = imported.split(".")[0]
    if top in ("baselines", "ablations"):
        return "plugins"
    if top != "mstnet":
        return None
    parts = imported.split(".")
    if len(parts) == 1:
        return "mstnet"
    candidate = ".".join(parts[:2])
    return candidate if candidate in LEAVES | EVERY_LAYER else "mstnet"


def violations(path: Path, root: Path = ROOT) -> list[str]:
    """Every import of ``path`` (a file under ``root``) its layer may not make, as ``file:line: layer imports
    target``."""
    layer = layer_of(module_name(path, root))
    problems = []
    for line, imported in imported_modules(path):
        target = target_layer(imported)
        where = f"{path.relative_to(root)}:{line}"
        if target is None:
            if imported.split(".")[0] in FORBIDDEN_LIBRARIES.get(layer, set()):
                problems.append(f"{where}: {layer} imports {imported.split('.')[0]}")
        elif target == "plugins" and layer != "plugins":
            problems.append(f"{where}: {layer} imports the plugin package {imported} (the registry loads plugins "
                            "by name)")
        elif target not in ALLOWED[layer] and target != layer and target != "plugins":
            problems.append(f"{where}: {layer} imports {imported} (allowed: {', '.join(sorted(ALLOWED[layer]))})")
    return problems


SOURCES = sorted(p for folder in ("mstnet", "baselines", "ablations") for p in (ROOT / folder).rglob("*.py"))


def test_every_project_module_is_checked():
    layers = {layer_of(module_name(p)) for p in SOURCES}
    assert layers == set(ALLOWED), f"layers without a rule or rules without a layer: {layers ^ set(ALLOWED)}"


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_what_docs_architecture_allows(layer):
    problems = [problem for path in SOURCES if layer_of(module_name(path)) == layer for problem in violations(path)]
    assert not problems, "imports against docs/architecture.md:\n" + "\n".join(problems)


def test_the_rule_catches_a_model_module_importing_the_data_layer(tmp_path):
    module = tmp_path / "mstnet" / "models" / "leaky.py"
    module.parent.mkdir(parents=True)
    module.write_text("def build():\n    from mstnet.data.cohort import Cohort\n    return Cohort\n")
    assert violations(module, tmp_path) == ["mstnet/models/leaky.py:2: mstnet.models imports mstnet.data.cohort.Cohort "
                                  f"(allowed: {', '.join(sorted(ALLOWED['mstnet.models']))})"]
