"""The package's import graph: every module imports on its own, and no module imports
itself through others (issue 12: ``diagnostics`` -> ``gradcheck`` -> ``diagnostics`` hid
in a function-level import).

The graph is read from the source (``ast``), so that imports inside functions count as
well as module-level ones: a lazy import only defers a circle to the first call. An
import under ``if TYPE_CHECKING:`` never runs and is left out. ``from PACKAGE import
name`` is an edge to the submodule ``PACKAGE.name`` when there is one, else to
``PACKAGE`` itself. The implicit import of a module's parent packages is not an edge
(``eqprop/__init__.py`` imports its subpackages, so every module would be on a circle).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

PACKAGE = "eqprop"
# found without running the package, so that the graph is read even when an import fails
ROOT = Path(importlib.util.find_spec(PACKAGE).submodule_search_locations[0])


def modules() -> dict[str, Path]:
    """``{dotted name: source file}`` of every module of the package."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every ``Import`` / ``ImportFrom`` node that can run (any depth)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """``{module: {eqprop modules it imports}}``."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}

    def owner(name: str) -> str | None:
        # the longest prefix of ``name`` that is a module of the package
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in mods:
                return ".".join(parts[:i])
        return None

    for mod, path in mods.items():
        is_package = path.name == "__init__.py"
        here = mod.split(".") if is_package else mod.split(".")[:-1]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = here[:len(here) - (node.level - 1)]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                           for a in node.names]
            for t in targets:
                if t == PACKAGE or t.startswith(PACKAGE + "."):
                    target = owner(t)
                    if target is not None and target != mod:
                        graph[mod].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("name", sorted(modules()))
def test_every_module_imports(name):
    importlib.import_module(name)


def test_the_graph_reader_sees_lazy_and_relative_imports():
    g = import_graph()
    # a function-level relative import (cli's commands import their modules lazily)
    assert "eqprop.gradcheck" in g["eqprop.cli"] and "eqprop.diagnostics" in g["eqprop.cli"]
    # ``from . import build``: the submodule, not the package
    assert "eqprop.build" in g["eqprop.cli"]
    # a module-level import two levels up
    assert "eqprop.network.base" in g["eqprop.estimate.exact"]
    # and it finds a circle when there is one
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle():
    found = cycles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_metrics_is_ground_floor():
    """``metrics`` (cosines, relative errors) is what gradcheck and diagnostics share: it
    imports nothing of the package above the network's parameter naming."""
    g = import_graph()
    assert g["eqprop.metrics"] <= {"eqprop.network.base"}
    assert "eqprop.diagnostics" not in g["eqprop.gradcheck"]
    assert "eqprop.gradcheck" not in g["eqprop.diagnostics"]
