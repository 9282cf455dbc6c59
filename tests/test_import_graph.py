"""The repository's code is layered: no import circle among the files of ``dreampose/``, ``flows/`` and ``tasks/``,
none among their packages (at any level, up to the top-level packages themselves), ``metrics/`` is a leaf, the
models do not score themselves, ``catalog/`` and ``tools/`` are reached only from the commands, and the library
never imports the ``flows`` or ``tasks`` layers above it."""

from __future__ import annotations

import ast

from tests.imports import closure, imports, module_edges, modules, package_edges, repo_modules, unit


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import loop among the nodes, as a path that ends where it starts; ``None`` when there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_loop():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None


def test_package_edges_lift_imports_to_sibling_packages():
    # two files that import each other's package, but no file circle: a package circle a <-> b
    edges = {"a.x": {"b.y"}, "b.z": {"a.w"}, "a.w": set(), "b.y": set()}
    assert _cycle(edges) is None
    assert package_edges(edges) == {"a": {"b"}, "b": {"a"}}
    assert _cycle(package_edges(edges)) == ["a", "b", "a"]
    # deeper: the edge is between the children of the deepest common package; package <-> its own files is none
    assert package_edges({"p.q.r": {"p.s.t", "p", "p.q"}, "p": {"p.q.r"}}) == {"p.q": {"p.s"}}


def test_the_graph_covers_flows_and_tasks():
    assert {"flows.serve", "flows.stack", "flows.processes", "tasks.dvc"} <= set(repo_modules())
    assert "flows.processes" in imports("flows.stack")


def test_no_import_circle_among_files():
    assert _cycle(module_edges()) is None


def test_no_import_circle_among_packages():
    """Package A imports B (through any of its files) and B imports A: a circle, at any level of the tree --
    between ``dreampose``, ``flows`` and ``tasks`` as between ``dreampose``'s sub-packages and top-level modules."""
    assert _cycle(package_edges(module_edges())) is None


def test_library_never_imports_flows_or_tasks():
    """``flows/`` and ``tasks/`` import ``dreampose``, never the reverse (a command that needs Prefect lives in
    ``flows/``, e.g. ``python -m flows.batch``)."""
    bad = set()
    for mod, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            bad |= {(mod, n) for n in names if n.split(".")[0] in {"flows", "tasks"}}
    assert not bad, f"the library imports the layers above it: {sorted(bad)}"


def test_catalog_and_tools_are_reached_only_from_the_commands():
    """Catalog-only modules live in ``catalog/``, the commands around the pipeline in ``tools/``: no library module
    imports either (only ``cli`` and the non-DVC stages, which are commands)."""
    # mlflow_model: the old import path that models registered before the move pickled (an alias, imported by none)
    allowed = {"catalog": {"catalog", "cli", "mlflow_model"}, "tools": {"tools", "cli", "stages"}}
    bad = {
        (mod, target)
        for mod in modules()
        for target in imports(mod)
        if unit(target) in allowed and unit(mod) not in allowed[unit(target)]
    }
    assert not bad, f"library code imports catalog/ or tools/: {sorted(bad)}"
    assert not [mod for mod in modules() if "dreampose.mlflow_model" in imports(mod)]


def test_metrics_is_a_leaf():
    forbidden = {"models", "render", "evaluate", "training", "catalog", "stages", "data"}
    bad = {
        (mod, target)
        for mod in modules()
        if unit(mod) == "metrics"
        for target in imports(mod)
        if unit(target) in forbidden or not target.startswith("dreampose")
    }
    assert not bad, f"metrics/ must hold pure metric code; it imports {sorted(bad)}"


def test_models_do_not_import_metrics():
    """A model is scored by its caller, not by itself: nothing ``dreampose.models`` runs is metric code."""
    bad = {
        (mod, reached)
        for mod in modules()
        if unit(mod) == "models"
        for reached in closure(mod)
        if unit(reached) == "metrics"
    }
    assert not bad, f"dreampose.models reaches dreampose.metrics: {sorted(bad)}"


def test_graph_sees_function_local_imports():
    # each stage module imports its library code inside the stage function
    assert "dreampose.evaluate" in imports("dreampose.stages.score")
