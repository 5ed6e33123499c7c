"""No import cycle anywhere in qamoe_core (docs/architecture.md), function-level imports included.

Run: ``python -m pytest tests/models/test_import_graph.py`` (or run this file as a script
to print the graph's cycles). An edge A -> B means A's source has an import statement naming
B (``import B``, ``from B import x``, or ``from A's package import B`` when B is a module),
at any depth: inside functions too, since a lazy import still ties the two modules together.
Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``; those implicit edges are
left out, as every import-graph tool does, since a package's __init__ importing its own
submodules would otherwise always count as a cycle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "qamoe_core"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``path`` imports."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # submodules named
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    files = sorted((ROOT / PACKAGE).rglob("*.py"))
    modules = {module_name(p) for p in files}
    return {module_name(p): imports_of(p, modules) for p in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
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

    sys.setrecursionlimit(max(1000, 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_known_edges() -> None:
    # A check that can fail: the parser must find real edges, lazy ones included.
    graph = import_graph()
    assert "qamoe_core.models.base" in graph["qamoe_core.models.qamoe"]
    assert "qamoe_core.base.errors" in graph["qamoe_core.models.registry"]
    assert "qamoe_core.models" in graph["qamoe_core.runs.checkpoint"]


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_qamoe_core_has_no_import_cycle() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles in qamoe_core: " + "; ".join(" <-> ".join(c) for c in found)


if __name__ == "__main__":
    for cycle in cycles(import_graph()):
        print(" <-> ".join(cycle))
