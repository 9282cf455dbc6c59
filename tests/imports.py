"""The repository's own import graph (``dreampose/``, ``flows/``, ``tasks/``), read from source (module-level and
function-local imports)."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dreampose"
PACKAGES = ("dreampose", "flows", "tasks")  # the repository's import packages


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the ``dreampose`` package by dotted name."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@cache
def repo_modules() -> dict[str, Path]:
    """Every module of ``PACKAGES`` by dotted name."""
    return {module_name(p): p for pkg in PACKAGES for p in sorted((PACKAGE.parent / pkg).rglob("*.py"))}


@cache
def imports(name: str) -> frozenset[str]:
    """The repository's modules (``repo_modules``) that ``name`` imports anywhere in its body (``from a import b``
    counts ``a.b`` when that is a module)."""
    path = repo_modules()[name]
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}
    return frozenset(m for m in found if m in repo_modules())


def closure(name: str, skip: frozenset[str] | set[str] = frozenset()) -> set[str]:
    """``name`` and every package module it imports, transitively (a module's parent packages run too); modules in
    ``skip`` are neither included nor followed."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        mod = todo.pop()
        if mod in seen or mod in skip:
            continue
        seen.add(mod)
        parts = mod.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += imports(mod)
    return seen


def unit(name: str) -> str:
    """The top-level unit a module belongs to: ``dreampose.metrics.pixel`` -> ``metrics``, ``dreampose.render`` ->
    ``render``."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_edges() -> dict[str, set[str]]:
    """Every import between two of the repository's modules."""
    return {mod: set(imports(mod)) - {mod} for mod in repo_modules()}


def package_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """``edges`` between modules lifted to the tree: an import of ``a.b.c`` from ``a.x.y`` is an edge ``a.x`` ->
    ``a.b`` between the two children of their deepest common package, at every level up to the top-level
    packages (``dreampose`` -> ``flows``). An import between a package and what it contains is no edge."""
    out: dict[str, set[str]] = {}
    for src, targets in edges.items():
        a = src.split(".")
        for target in targets:
            b = target.split(".")
            k = 0
            while k < min(len(a), len(b)) and a[k] == b[k]:
                k += 1
            if k < len(a) and k < len(b):
                out.setdefault(".".join(a[: k + 1]), set()).add(".".join(b[: k + 1]))
    return out


def _local_imports(fn: ast.AST, pkg: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            mod = node.module if not node.level else f"{pkg}.{node.module}"
            found |= {mod} | {f"{mod}.{a.name}" for a in node.names}
    return {m for m in found if m in modules()}


def function_closure(module: str, function: str) -> set[str]:
    """The package modules that calling ``module.function`` can run: ``module`` with its module-level imports,
    the imports inside ``function`` and inside the same-module functions it calls, each followed transitively."""
    tree = ast.parse(modules()[module].read_text())
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    if function not in defs:
        raise KeyError(f"{module} has no function {function!r}")
    top = _local_imports(ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]), "")
    called, todo, reached = set(), [function], set()
    while todo:
        name = todo.pop()
        if name in called:
            continue
        called.add(name)
        reached |= _local_imports(defs[name], "dreampose")
        todo += [n.id for n in ast.walk(defs[name]) if isinstance(n, ast.Name) and n.id in defs]
    out = {module}
    for mod in top | reached:
        out |= closure(mod)
    return out
