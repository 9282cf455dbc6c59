"""dvc.yaml's code deps are exactly the modules that can change a stage's outputs (docs/architecture.md, "Code
deps"), checked both ways: every such module a stage runs is covered by its deps, and every module a code dep
covers (a directory dep covers each module under it) is one of them, so no observer-only module is listed.

A stage's code is read from its command, one hop: ``bin/python -m dreampose.stages.<stage>`` names the stage's own
module (itself a listed dep) -> every package module it imports (module-level or inside a function), followed
transitively, parents' ``__init__`` included -- except the observers below, which are neither listed nor
followed: they parse arguments or record a run and cannot change the bytes it writes. A module is an observer only
by being named in ``OBSERVERS`` with its reason; library code a stage runs must not import one (checked), so no
output can depend on an observer's return value; and the two packages every stage imports hold nothing but their
docstring (and the version string) (checked).
"""

from __future__ import annotations

import ast
import inspect
from importlib import import_module
from pathlib import Path

import pytest
import yaml

from dreampose import cli
from tests.imports import PACKAGE, closure, imports, modules

REPO = PACKAGE.parent

#: Modules a stage runs that are not output deps, each with why it cannot change a stage's outputs.
OBSERVERS: dict[str, str] = {
    "dreampose": "the bare package: its docstring and version string (checked)",
    "dreampose.stages": "the stage package every stage module imports: its docstring only (checked)",
    "dreampose.entry": "a stage's command line: parses --params/--root/--subject, loads params, prints the summary",
    "dreampose.cli": "the user-facing commands; `dreampose <stage>` calls the stage's run as its main does",
    "dreampose.tracking": "MLflow runs, params, tags, metrics, artifacts: records a run, never writes a stage output",
}


def raw_dvc_stages(dvc_yaml: Path = REPO / "dvc.yaml") -> dict[str, dict]:
    return yaml.safe_load(dvc_yaml.read_text())["stages"]


def dvc_stages(dvc_yaml: Path = REPO / "dvc.yaml") -> dict[str, dict]:
    return {name: st.get("do", st) for name, st in raw_dvc_stages(dvc_yaml).items()}


def code_deps(stage: dict) -> list[Path]:
    return [Path(d) for d in stage.get("deps", []) if str(d).startswith("dreampose/")]


def covered(path: Path, deps: list[Path]) -> bool:
    return any(path == d or d in path.parents for d in deps)


def output_closure(module: str) -> set[str]:
    """``module`` and every package module it imports, transitively, observers neither included nor followed."""
    return closure(module, OBSERVERS)


def stage_module(stage: dict) -> str:
    """The module a stage's command runs: ``bin/python -m <module> [--subject ${item}]``."""
    words = stage["cmd"].split()
    assert words[:2] == ["bin/python", "-m"] and words[2] in modules(), f"unexpected stage command {stage['cmd']!r}"
    assert words[3:] in ([], ["--subject", "${item}"]), f"unexpected stage arguments {stage['cmd']!r}"
    return words[2]


def runs(stage: dict) -> set[Path]:
    """The files of the modules that can change the stage's outputs, relative to the repository."""
    return {modules()[m].relative_to(REPO) for m in output_closure(stage_module(stage))}


def module_files() -> set[Path]:
    return {p.relative_to(REPO) for p in modules().values()}


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_stage_deps_cover_the_code_it_runs(name):
    stage = dvc_stages()[name]
    deps = code_deps(stage)
    missing = sorted(str(p) for p in runs(stage) if not covered(p, deps))
    assert not missing, f"dvc.yaml stage {name!r} runs {missing} but does not list them under deps"


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_stage_code_deps_are_only_what_it_runs(name):
    stage = dvc_stages()[name]
    ran = runs(stage)
    extra = sorted(str(p) for p in module_files() if covered(p, code_deps(stage)) and p not in ran)
    assert not extra, f"dvc.yaml stage {name!r} lists deps covering {extra}, which cannot change its outputs"
    absent = [str(d) for d in code_deps(stage) if not (REPO / d).exists()]
    assert not absent, f"dvc.yaml stage {name!r} lists missing deps {absent}"


def test_every_dvc_stage_has_its_own_module():
    """One hop and one name: stage ``<name>``'s command runs ``dreampose.stages.<name>``, whose file is a listed
    dep; the package holds exactly the stages' modules; editing one stage's module makes no other stage stale."""
    mods = {name: stage_module(st) for name, st in dvc_stages().items()}
    assert all(m == f"dreampose.stages.{n}" for n, m in mods.items()), mods
    package = {m.rpartition(".")[2] for m in modules() if m.startswith("dreampose.stages.")}
    assert package == set(dvc_stages()), f"dreampose/stages/ holds {sorted(package)}, dvc.yaml has others"
    for name, st in dvc_stages().items():
        assert Path(f"dreampose/stages/{name}.py") in code_deps(st), f"stage {name!r} does not list its own module"
        others = {modules()[m].relative_to(REPO) for n, m in mods.items() if n != name}
        assert not others & runs(st), f"stage {name!r} runs another stage's module"


def _calls(tree: ast.AST, function: str) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "attr", getattr(n.func, "id", None)) == function
    ]


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_one_name_per_stage(name):
    """The dvc.yaml name is the module's, the CLI subcommand's, its command line's and its MLflow run's (the
    Prefect task runs are named by the DVC targets, flows/pipeline.py); a ``foreach`` stage takes ``--subject``
    everywhere, and only such a stage does."""
    assert name in cli.STAGES
    module = import_module(f"dreampose.stages.{name}")
    assert cli.stage_module(name) is module
    tree = ast.parse(modules()[module.__name__].read_text())
    first_args = {
        f: [c.args[0].value if c.args and isinstance(c.args[0], ast.Constant) else None for c in _calls(tree, f)]
        for f in ("stage_run", "stage_main")
    }
    assert first_args == {"stage_run": [name], "stage_main": [name]}, first_args
    per_subject = "foreach" in raw_dvc_stages()[name]
    assert cli.STAGES[name][1] is per_subject
    assert ("subject" in inspect.signature(module.run).parameters) is per_subject
    assert ("--subject" in dvc_stages()[name]["cmd"]) is per_subject


def test_cli_offers_exactly_the_dvc_stages():
    assert list(cli.STAGES) == list(dvc_stages())  # dvc.yaml order, which `dreampose --help` shows
    with pytest.raises(KeyError, match="no DVC stage"):
        cli.stage_module("base-model")


@pytest.mark.parametrize("package", ["dreampose", "dreampose.stages"])
def test_packages_every_stage_imports_hold_no_code(package):
    """Every stage module runs these ``__init__`` files, which are observers: so they may hold a docstring and
    (the bare package) ``__version__``, nothing that could run a computation."""
    body = ast.parse(modules()[package].read_text()).body
    assert body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), "a docstring first"
    rest = [
        ast.unparse(n.targets[0]) if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) else ast.unparse(n)
        for n in body[1:]
    ]
    assert rest == (["__version__"] if package == "dreampose" else []), f"{package} runs {rest}"


def test_observers_stay_observers():
    """Library code a stage runs does not import an observer (only the stage modules may), so what an observer
    returns cannot reach a stage's outputs; and an observer is never a dep."""
    for name, st in dvc_stages().items():
        for mod in output_closure(stage_module(st)):
            if mod.startswith("dreampose.stages."):
                continue
            bad = imports(mod) & (set(OBSERVERS) - {"dreampose"})
            assert not bad, f"{mod} (run by stage {name!r}) imports observer(s) {sorted(bad)}"
        listed = [m for m in OBSERVERS if covered(modules()[m].relative_to(REPO), code_deps(st))]
        assert not listed, f"stage {name!r} lists observer(s) {listed} as deps"


def test_the_rule_catches_a_missing_and_an_observer_dep():
    render = dvc_stages()["render"]
    assert Path("dreampose/models/pipeline.py") in runs(render)
    assert Path("dreampose/tracking.py") not in runs(render)  # observer: not followed, not a dep
    assert Path("dreampose/entry.py") not in runs(render)  # argument parsing: an observer
    assert Path("dreampose/stages/score.py") not in runs(render)
    assert covered(Path("dreampose/models/unet.py"), [Path("dreampose/models")])
    assert "dreampose.training.finetune" in output_closure("dreampose.stages.finetune_base")
