"""The folder tree draws the request's path, and imports follow it: a module imports only
modules of its own layer or of layers below, the wire APIs never import each other, and
nothing imports in a cycle (imports under TYPE_CHECKING and inside functions count too).

Layers, bottom to top: what a model is (core) and the process settings; the engines; the
model store and conversion; serving; what every API shares on the wire (http); the wire APIs;
the app factory; the command line; the benchmarks.
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "conversion", "model_store", "benchmarks")

# (module prefix, layer); the longest matching prefix decides a module's layer.
LAYERS: tuple[tuple[str, int], ...] = (
    ("app.core", 0),
    ("app.settings", 0),
    ("app.logging", 0),
    ("app.engines", 1),
    ("model_store", 2),
    ("conversion", 2),
    ("app.serving", 3),
    ("app.http", 4),
    ("app.tgi", 5),
    ("app.openai", 5),
    ("app.playground", 5),
    ("app.server", 6),
    ("app.commands", 7),
    ("app.cli", 7),
    ("benchmarks", 8),
)
# Folders of one layer that must not know each other: each wire API stands alone.
INDEPENDENT_PEERS = ("app.tgi", "app.openai", "app.playground")


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
    }


def _imported_names(node: ast.AST, importer: str, is_package: bool) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = importer.split(".") if is_package else importer.split(".")[:-1]
            anchor = package[: len(package) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        yield base
        yield from (f"{base}.{alias.name}" for alias in node.names)


def imports_of(modules: dict[str, Path]) -> list[Import]:
    """Every import of a project module by a project module, wherever it is written."""
    found = []
    for importer, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            for name in _imported_names(node, importer, is_package):
                if name in modules and name != importer:
                    found.append(Import(importer, name, getattr(node, "lineno", 0)))
    return found


def layer_of(module: str) -> tuple[str, int]:
    matches = [(p, rank) for p, rank in LAYERS if module == p or module.startswith(p + ".")]
    if not matches:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")
    return max(matches, key=lambda match: len(match[0]))


def layering_violations(imports: Iterable[Import]) -> list[str]:
    problems = []
    for edge in imports:
        (own, own_rank), (other, other_rank) = layer_of(edge.importer), layer_of(edge.imported)
        where = f"{edge.importer}:{edge.line} imports {edge.imported}"
        if other_rank > own_rank:
            problems.append(f"{where}: {other} is above {own}")
        elif other != own and own in INDEPENDENT_PEERS and other in INDEPENDENT_PEERS:
            problems.append(f"{where}: the wire APIs must not import each other")
    return problems


def import_cycle(imports: Iterable[Import]) -> list[str]:
    """One cycle of modules importing each other (first module repeated last), or []."""
    graph: dict[str, set[str]] = {}
    for edge in imports:
        graph.setdefault(edge.importer, set()).add(edge.imported)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        return list(error.args[1])
    return []


@pytest.fixture(scope="module")
def project_imports() -> list[Import]:
    return imports_of(project_modules())


def test_every_module_belongs_to_a_layer() -> None:
    for module in project_modules():
        if module not in PACKAGES:  # the packages' own __init__ modules hold nothing
            layer_of(module)


def test_no_module_imports_one_above_its_layer(project_imports: list[Import]) -> None:
    assert layering_violations(project_imports) == []


def test_conversion_and_the_store_use_only_core_engines_and_settings(
    project_imports: list[Import],
) -> None:
    allowed = ("app.core", "app.engines", "app.settings", "conversion", "model_store")
    wrong = [
        f"{edge.importer}:{edge.line} imports {edge.imported}"
        for edge in project_imports
        if edge.importer.startswith(("conversion", "model_store"))
        and not edge.imported.startswith(allowed)
    ]
    assert wrong == []


def test_there_are_no_import_cycles(project_imports: list[Import]) -> None:
    assert import_cycle(project_imports) == []


def test_the_checks_catch_what_they_forbid() -> None:
    """The checks themselves can fail: an upward import, a peer import and a cycle."""
    upward = Import("app.core.families", "app.serving.batching", 1)
    peer = Import("app.tgi.routes", "app.openai.schemas", 2)
    assert len(layering_violations([upward, peer])) == 2
    a_to_b = Import("app.serving.a", "app.serving.b", 1)
    b_to_a = Import("app.serving.b", "app.serving.a", 1)
    assert set(import_cycle([a_to_b, b_to_a])) == {"app.serving.a", "app.serving.b"}


def test_relative_and_type_checking_imports_are_seen(tmp_path: Path) -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from app.server import x\n"
    names = [
        name
        for node in ast.walk(ast.parse(source))
        for name in _imported_names(node, "app.core.families", is_package=False)
    ]
    assert "app.server" in names
    relative = ast.parse("from .prompts import ALPACA").body[0]
    assert "app.core.prompts" in list(_imported_names(relative, "app.core.families", False))
