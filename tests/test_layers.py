"""The package's layers point down: no import cycle anywhere, `viz` a leaf, ipywidgets only in `ui`.

The import graph is read from the source with `ast`, every import counted
wherever it is written (module level or inside a function: a lazy import is
still an arrow, it only hides the cycle until the function runs). Imports under
`if TYPE_CHECKING:` are left out: they never run. An edge goes to the most
specific nbtune module named (`from nbtune.viz import charts` is an edge to
`nbtune.viz.charts`); parent packages that Python initialises on the way are
not edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nbtune"

#: What `nbtune.viz` (figures and report objects from plain data) may not import.
VIZ_MAY_NOT_IMPORT = ("nbtune.ui", "nbtune.eval", "nbtune.models", "nbtune.data", "nbtune.train", "nbtune.session",
                      "nbtune.recipe", "ipywidgets", "IPython", "anywidget")
WIDGET_PACKAGES = ("ipywidgets", "anywidget")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def _is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:` (its `else:` branch does run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if _is_type_checking_block(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_names(module: str, path: Path) -> list[tuple[str, int]]:
    """(dotted name, line) of every runtime import in the file; `from a import b` gives `a.b` (a module or not)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node, path.name == "__init__.py")
            found += [(source if alias.name == "*" else f"{source}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The most specific nbtune module `name` refers to (None for anything outside nbtune)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], int]]:
    """Module -> the nbtune modules it imports, and the line of one import per edge (for messages)."""
    modules = all_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    lines: dict[tuple[str, str], int] = {}
    for module, path in modules.items():
        for name, line in imported_names(module, path):
            target = _target(name, modules)
            if target is not None and target != module:
                graph[module].add(target)
                lines.setdefault((module, target), line)
    return graph, lines


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def a_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete cycle through the component, as a path that ends where it starts."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth-first inside the component, back to start
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    return component  # pragma: no cover - a component always has a cycle


def describe(path: list[str], lines: dict[tuple[str, str], int]) -> str:
    return " -> ".join(f"{a} (line {lines[(a, b)]})" for a, b in zip(path, path[1:], strict=False)) + f" -> {path[-1]}"


# ----------------------------------------------------------------------------------------------- the checker itself


def test_the_graph_sees_module_level_function_level_and_relative_imports_but_not_type_checking(tmp_path, monkeypatch):
    pkg = tmp_path / "nbtune"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from nbtune.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import nbtune.a\n"
                                      "else:\n    import json\n\ndef g():\n    import nbtune.a\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from nbtune import a\n")
    monkeypatch.setitem(globals(), "PACKAGE", pkg)  # the functions read PACKAGE when called
    graph, lines = import_graph()
    assert graph["nbtune.a"] == {"nbtune.sub.b"}
    assert graph["nbtune.sub.b"] == {"nbtune.sub.c"}
    assert graph["nbtune.sub.c"] == {"nbtune.a"}  # the function-level import counts, the TYPE_CHECKING one not
    assert graph["nbtune.d"] == set()
    (cycle_members,) = strongly_connected(graph)
    assert cycle_members == ["nbtune.a", "nbtune.sub.b", "nbtune.sub.c"]
    assert describe(a_cycle(graph, cycle_members), lines) == (
        "nbtune.a (line 1) -> nbtune.sub.b (line 2) -> nbtune.sub.c (line 8) -> nbtune.a")


# ---------------------------------------------------------------------------------------------- the package's layers


def test_no_import_cycle_between_nbtune_modules():
    graph, lines = import_graph()
    cycles = [describe(a_cycle(graph, component), lines) for component in strongly_connected(graph)]
    assert not cycles, "import cycles (break each by moving the shared piece below both):\n" + "\n".join(cycles)


def test_viz_imports_nothing_above_it():
    modules = all_modules()
    wrong = []
    for module, path in modules.items():
        if module != "nbtune.viz" and not module.startswith("nbtune.viz."):
            continue
        for name, line in imported_names(module, path):
            if any(name == banned or name.startswith(banned + ".") for banned in VIZ_MAY_NOT_IMPORT):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
    assert not wrong, ("nbtune.viz builds figures and reports from plain data; live display belongs in nbtune.ui:\n"
                       + "\n".join(sorted(set(wrong))))


def test_only_ui_imports_widgets():
    wrong = []
    for module, path in all_modules().items():
        if module == "nbtune.ui" or module.startswith("nbtune.ui."):
            continue
        for name, line in imported_names(module, path):
            if name.split(".")[0] in WIDGET_PACKAGES:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
    assert not wrong, "only nbtune.ui may import ipywidgets / anywidget:\n" + "\n".join(sorted(set(wrong)))


@pytest.mark.parametrize("module", ["nbtune.viz.report", "nbtune.ui.frontend", "nbtune.ui.outputs", "nbtune.ui.live"])
def test_display_modules_load_without_ipython_or_widgets(module):
    import subprocess
    import sys

    code = f"import sys, {module}; print(sorted(m for m in ('ipywidgets', 'IPython') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # IPython and ipywidgets load only when something is displayed


#: The README's Layout, top to bottom: a part may import only itself and the parts after it.
LAYERS = ("nbtune.recipe", "nbtune.session", "nbtune.ui", "nbtune.runs", "nbtune.recipe_files", "nbtune.eval",
          "nbtune.train", "nbtune.models", "nbtune.data", "nbtune.viz", "nbtune.events", "nbtune.store",
          "nbtune.trust", "nbtune.config", "nbtune.device", "nbtune.storage", "nbtune.errors")


def _layer(module: str) -> int | None:
    for rank, part in enumerate(LAYERS):
        if module == part or module.startswith(part + "."):
            return rank
    return None  # the package's own __init__ / __main__: the front door, above everything


def test_every_module_belongs_to_a_layer_of_the_readme():
    unplaced = [m for m in all_modules() if _layer(m) is None and m not in ("nbtune", "nbtune.__main__")]
    assert not unplaced, f"add these to LAYERS and to the README's Layout: {unplaced}"


def test_imports_point_down_the_readme_layout():
    graph, lines = import_graph()
    upward = [f"{module} (line {lines[(module, target)]}) imports {target}, which is listed above it"
              for module, targets in graph.items() for target in sorted(targets)
              if _layer(module) is not None and _layer(target) is not None and _layer(target) < _layer(module)]
    assert not upward, "\n".join(upward)
