"""dvc.yaml's code deps are true: every package module a stage's command runs is covered by that stage's deps
(a directory dep covers the modules under it), and every code dep covers a module the stage runs.

A stage's code is read from its CLI entry: ``bin/dreampose <stage>`` (the launcher of ``dreampose``)
-> ``dreampose.stages.<fn>`` (``cli.STAGES``)
-> the modules ``stages`` imports at module level and inside ``<fn>`` (and the same-module helpers it calls),
followed transitively, parents' ``__init__`` included. The argument parsing in ``cli.py`` and the bare
package's ``__init__`` (its version string) are the dispatch every stage shares and are not listed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dreampose.cli import STAGES
from tests.imports import PACKAGE, function_closure, modules

REPO = PACKAGE.parent
DISPATCH = {"dreampose"}


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: st.get("do", st) for name, st in stages.items()}


def _code_deps(stage: dict) -> list[Path]:
    return [Path(d) for d in stage.get("deps", []) if str(d).startswith("dreampose/")]


def _covered(path: Path, deps: list[Path]) -> bool:
    return any(path == d or d in path.parents for d in deps)


def _runs(stage: dict) -> set[Path]:
    words = stage["cmd"].split()
    assert words[0] == "bin/dreampose" and words[1] in STAGES, f"unexpected stage command {stage['cmd']!r}"
    mods = function_closure("dreampose.stages", STAGES[words[1]][0]) - DISPATCH
    return {modules()[m].relative_to(REPO) for m in mods}


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_deps_cover_the_code_it_runs(name):
    stage = _stages()[name]
    deps = _code_deps(stage)
    missing = sorted(str(p) for p in _runs(stage) if not _covered(p, deps))
    assert not missing, f"dvc.yaml stage {name!r} runs {missing} but does not list them under deps"


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_code_deps_are_run(name):
    stage = _stages()[name]
    runs = _runs(stage)
    unused = [str(d) for d in _code_deps(stage) if not any(_covered(p, [d]) for p in runs)]
    assert not unused, f"dvc.yaml stage {name!r} lists {unused} under deps but does not run them"


def test_a_missing_dep_is_found():
    stage = {"cmd": "bin/dreampose render --subject s", "deps": ["dreampose/render.py"]}
    assert Path("dreampose/models/pipeline.py") in {p for p in _runs(stage) if not _covered(p, _code_deps(stage))}
    assert _covered(Path("dreampose/models/unet.py"), [Path("dreampose/models")])
