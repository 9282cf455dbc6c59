"""The package is layered: no import loop between its top-level units, and ``metrics/`` is a leaf."""

from __future__ import annotations

from tests.imports import imports, modules, unit, unit_edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import loop among the units, as a path that ends where it starts; ``None`` when there is none."""
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


def test_no_import_loop_between_units():
    assert _cycle(unit_edges()) is None


def test_metrics_is_a_leaf():
    forbidden = {"models", "render", "evaluate", "training", "catalog", "stages", "data"}
    bad = {
        (mod, target)
        for mod in modules()
        if unit(mod) == "metrics"
        for target in imports(mod)
        if unit(target) in forbidden
    }
    assert not bad, f"metrics/ must hold pure metric code; it imports {sorted(bad)}"


def test_graph_sees_function_local_imports():
    # each stage module imports its library code inside the stage function
    assert "dreampose.evaluate" in imports("dreampose.stages.score")
