"""dvc.yaml's code deps are exactly the modules that can change a stage's outputs (docs/architecture.md, "Code
deps"), checked both ways: every such module a stage runs is covered by its deps, and every module a code dep
covers (a directory dep covers each module under it) is one of them, so no observer-only module is listed.

A stage's code is read from its command: ``bin/dreampose <command>`` -> ``cli.STAGES`` -> the stage's own module
``dreampose.steps.<stage>`` -> every package module it imports (module-level or inside a function), followed
transitively, parents' ``__init__`` included -- except the observers below, which are neither listed nor
followed: they record or dispatch a run and cannot change the bytes it writes. A module is an observer only by
being named in ``OBSERVERS`` with its reason; library code a stage runs must not import one (checked), so no
output can depend on an observer's return value.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dreampose.cli import STAGES
from tests.imports import PACKAGE, closure, imports, modules

REPO = PACKAGE.parent

#: Modules a stage runs that are not output deps, each with why it cannot change a stage's outputs.
OBSERVERS: dict[str, str] = {
    "dreampose": "the bare package: its version string",
    "dreampose.cli": "argument parsing and the stage lookup; prints the returned summary",
    "dreampose.stages": "maps a stage name to dreampose.steps.<stage>.run (and holds the non-DVC stages)",
    "dreampose.steps": "the per-stage package's docstring",
    "dreampose.tracking": "MLflow runs, params, tags, metrics, artifacts: records a run, never writes a stage output",
}


def dvc_stages(dvc_yaml: Path = REPO / "dvc.yaml") -> dict[str, dict]:
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    return {name: st.get("do", st) for name, st in stages.items()}


def code_deps(stage: dict) -> list[Path]:
    return [Path(d) for d in stage.get("deps", []) if str(d).startswith("dreampose/")]


def covered(path: Path, deps: list[Path]) -> bool:
    return any(path == d or d in path.parents for d in deps)


def output_closure(module: str) -> set[str]:
    """``module`` and every package module it imports, transitively, observers neither included nor followed."""
    return closure(module, OBSERVERS)


def stage_module(stage: dict) -> str:
    words = stage["cmd"].split()
    assert words[0] == "bin/dreampose" and words[1] in STAGES, f"unexpected stage command {stage['cmd']!r}"
    return f"dreampose.steps.{STAGES[words[1]][0]}"


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
    """One wrapper module per stage: editing one stage's wrapper makes no other stage stale."""
    mods = {name: stage_module(st) for name, st in dvc_stages().items()}
    assert all(m == f"dreampose.steps.{n}" for n, m in mods.items()), mods
    for name, st in dvc_stages().items():
        others = {modules()[m].relative_to(REPO) for n, m in mods.items() if n != name}
        assert not others & runs(st), f"stage {name!r} runs another stage's module"


def test_observers_stay_observers():
    """Library code a stage runs does not import an observer (only the stage modules may), so what an observer
    returns cannot reach a stage's outputs; and an observer is never a dep."""
    for name, st in dvc_stages().items():
        for mod in output_closure(stage_module(st)):
            if mod.startswith("dreampose.steps."):
                continue
            bad = imports(mod) & (set(OBSERVERS) - {"dreampose"})
            assert not bad, f"{mod} (run by stage {name!r}) imports observer(s) {sorted(bad)}"
        listed = [m for m in OBSERVERS if covered(modules()[m].relative_to(REPO), code_deps(st))]
        assert not listed, f"stage {name!r} lists observer(s) {listed} as deps"


def test_the_rule_catches_a_missing_and_an_observer_dep():
    render = dvc_stages()["render"]
    assert Path("dreampose/models/pipeline.py") in runs(render)
    assert Path("dreampose/tracking.py") not in runs(render)  # observer: not followed, not a dep
    assert Path("dreampose/steps/score.py") not in runs(render)
    assert covered(Path("dreampose/models/unet.py"), [Path("dreampose/models")])
    assert "dreampose.training.finetune" in output_closure("dreampose.steps.finetune_base")
