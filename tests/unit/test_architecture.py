"""The import graph of ``shared/`` and ``services/``, read with ``ast`` (nothing is imported).

No cycle anywhere; imports flow services -> shared, never back; the engine imports nothing from
Kafka or the wire. Every import counts, also those inside functions (a cycle closed by a deferred
import is still a cycle), except those under ``if TYPE_CHECKING:``, which never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "services")
ENGINE_MUST_NOT_IMPORT = ("shared.messages", "shared.kafka", "aiokafka", "services")


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    return {
        _module_name(root, path): path
        for package in packages
        for path in sorted((root / package).rglob("*.py"))
    }


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, known: set[str]) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = known
        self.names: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.names.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            anchor = self.package.split(".")[: len(self.package.split(".")) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            self.names.add(submodule if submodule in self.known else base)


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> every module name it imports (first-party or not)."""
    modules = find_modules(root, packages)
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        visitor = _Imports(name, path.name == "__init__.py", known)
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        graph[name] = visitor.names - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node] & graph.keys()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def test_there_is_no_import_cycle() -> None:
    assert cycles(import_graph(ROOT, PACKAGES)) == []


def test_shared_never_imports_services() -> None:
    graph = import_graph(ROOT, PACKAGES)
    backwards = {
        module: sorted(name for name in names if _within(name, ("services",)))
        for module, names in graph.items()
        if _within(module, ("shared",))
    }
    assert {module: names for module, names in backwards.items() if names} == {}


def test_the_engine_knows_nothing_of_kafka_or_the_wire() -> None:
    graph = import_graph(ROOT, PACKAGES)
    offending = {
        module: sorted(name for name in names if _within(name, ENGINE_MUST_NOT_IMPORT))
        for module, names in graph.items()
        if _within(module, ("shared.engine",))
    }
    assert {module: names for module, names in offending.items() if names} == {}
    assert "shared.engine.model" in graph  # the graph did find the engine


def test_nothing_edits_the_import_path() -> None:
    """Benchmarks and tests import the installed package (``python -m benchmarks.X`` from the
    repository root): a ``sys.path`` edit would let a script run code other than what is installed."""
    editing = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for folder in ("benchmarks", "tests", "services", "shared")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr == "path"
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    ]
    assert editing == []


def test_a_cycle_closed_by_a_deferred_import_is_found(tmp_path: Path) -> None:
    """The shape the engine once had: fitting imports the model inside a function, the model
    imports fitting inside a method; a TYPE_CHECKING import alone is no cycle."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "model.py").write_text("def fit():\n    from pkg.fitting import fit_model\n")
    (package / "fitting.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.routing import Router\n"
        "def fit_model():\n    from . import model\n"
    )
    (package / "routing.py").write_text("from pkg import fitting\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.fitting"] == {"typing", "pkg.model"} and graph["pkg.routing"] == {"pkg.fitting"}
    assert cycles(graph) == [["pkg.fitting", "pkg.model"]]
