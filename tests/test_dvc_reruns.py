"""A code change re-runs exactly the stages whose outputs it can change, as DVC itself sees it.

In a temporary copy of ``dvc.yaml`` + ``dreampose/`` with placeholder data (every stage's deps and outs present,
``dvc commit`` recording them, so ``dvc status`` starts clean), library modules are edited (a comment appended) and
DVC's ``status`` (its Python API, in process) is compared with the stages expected from the import graph
(``tests/test_dvc_deps.py``: the stages whose own module imports the edited one, observers not followed) -- an
expectation computed from the code, independent of the deps ``dvc.yaml`` lists.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.test_dvc_deps import REPO, dvc_stages, module_files, runs

SUBJECT = "s1"


def _expected(module: Path) -> set[str]:
    return {name for name, st in dvc_stages().items() if module in runs(st)}


def _stale(repo) -> dict[str, set[str]]:
    """DVC's stale stages (``render@s1`` read as ``render``), each with the code deps it reports changed."""
    out: dict[str, set[str]] = {}
    for name, changes in repo.status().items():
        deps = out.setdefault(name.split("@")[0], set())
        for change in changes:
            if isinstance(change, dict):
                deps |= set(change.get("changed deps", {}))
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A committed DVC workspace holding this checkout's code and placeholder data; yields (root, Repo)."""
    from dvc.repo import Repo

    ws = tmp_path_factory.mktemp("reruns")
    for f in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / f, ws / f)
    shutil.copytree(REPO / "dreampose", ws / "dreampose", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["eval"]["subjects"] = [SUBJECT]
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    for st in dvc_stages().values():
        for entry in [*st.get("deps", []), *st.get("outs", []), *st.get("metrics", []), *st.get("plots", [])]:
            path = entry if isinstance(entry, str) else next(iter(entry))
            if path.startswith("dreampose/"):
                continue
            p = ws / path.replace("${item}", SUBJECT)
            if p.suffix:  # a file output / dep
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(path)
            else:
                p.mkdir(parents=True, exist_ok=True)
                (p / "placeholder").write_text(path)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ws)  # DVC resolves stage paths against the working directory
        Repo.init(str(ws), no_scm=True)
        with Repo(str(ws)) as repo:
            repo.commit(force=True)
            assert _stale(repo) == {}, "a freshly committed workspace is up to date"
            yield ws, repo


def _edit(ws: Path, module: str) -> str:
    path = ws / module
    text = path.read_text()
    path.write_text(text + "# an edit\n")
    return text


@pytest.mark.parametrize(
    "module, expected",
    [
        ("dreampose/stages/score.py", {"score"}),  # one stage's module: that stage only
        ("dreampose/tracking.py", set()),  # MLflow runs and tags: an observer
        ("dreampose/stages/__init__.py", set()),  # the stage package: its docstring
        ("dreampose/entry.py", set()),  # a stage's argument parsing
        ("dreampose/cli.py", set()),  # the user-facing commands
        ("dreampose/models/adapter.py", {"base_model", "finetune_base", "finetune_subject", "render", "score"}),
        # how a subject is stored: not the base model's (VAE pre-training) concern
        ("dreampose/models/subject.py", {"finetune_base", "finetune_subject", "render", "score"}),
        ("dreampose/evaluate/scoring.py", {"score"}),
        ("dreampose/render.py", {"render", "score"}),  # score renders its baselines with it
    ],
)
def test_one_edit_makes_exactly_its_stages_stale(workspace, module, expected):
    ws, repo = workspace
    before = _edit(ws, module)
    try:
        stale = set(_stale(repo))
    finally:
        (ws / module).write_text(before)
    assert stale == expected, f"editing {module}: DVC re-runs {sorted(stale)}, expected {sorted(expected)}"
    assert stale == _expected(Path(module))
    assert _stale(repo) == {}, f"restoring {module} leaves the workspace up to date"


def test_every_module_edit_reaches_exactly_the_stages_that_import_it(workspace):
    """All package modules edited at once, one ``dvc status``: for each module, the stages DVC reports with a
    changed dep covering it (the file, or a directory above it) are the stages whose code imports it."""
    ws, repo = workspace
    files = sorted(module_files())
    originals = {f: _edit(ws, str(f)) for f in files}
    try:
        stale = _stale(repo)
    finally:
        for f, text in originals.items():
            (ws / f).write_text(text)
    wrong = {}
    for f in files:
        seen = {name for name, deps in stale.items() if any(f == Path(d) or Path(d) in f.parents for d in deps)}
        if seen != _expected(f):
            wrong[str(f)] = (sorted(seen), sorted(_expected(f)))
    assert not wrong, f"module: (DVC re-runs, the import graph expects): {wrong}"
    assert set(stale) == set(dvc_stages()), "every stage has code"
    assert _stale(repo) == {}


def test_bytecode_beside_the_code_is_not_a_change(workspace):
    """Importing the code writes ``__pycache__`` under the directory deps; DVC must not see it."""
    ws, repo = workspace
    cache = ws / "dreampose/models/__pycache__"
    cache.mkdir()
    (cache / "adapter.cpython-311.pyc").write_bytes(b"\x00bytecode")
    try:
        assert _stale(repo) == {}
    finally:
        shutil.rmtree(cache)
