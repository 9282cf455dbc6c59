"""DVC itself drives the stages from a plain shell: ``.venv/bin/dvc repro`` and ``dvc exp run -S`` with no
virtualenv activated (PATH holds only the system directories), in a tiny git + DVC workspace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from dreampose.config import load_params, parse_yaml
from dreampose.evaluate import metric_values

SYSTEM_PATH = "/usr/bin:/bin"
TINY = """\
seed: 0
data:
  source: synthetic
  synthetic: {num_train_subjects: 1, num_test_subjects: 1, frames_per_video: 8, height: 16, width: 16}
train_base:
  mixed_precision: "no"
eval: {subjects: []}
"""


def _plain_shell_env() -> dict[str, str]:
    """This process's environment as a shell without the venv activated sees it."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")}
    return {**env, "PATH": SYSTEM_PATH, "DVC_NO_ANALYTICS": "1"}


def _git(ws: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", *args], cwd=ws, check=True)


def _workspace(repo: Path, ws: Path, venv: bool = True) -> Path:
    """A clone's worth of workspace: dvc.yaml, its launcher, the code the stages hash, tiny params; ``.venv``
    linked to this checkout's (what ``make install`` makes)."""
    ws.mkdir(parents=True)
    shutil.copy(repo / "dvc.yaml", ws / "dvc.yaml")
    shutil.copy(repo / ".dvcignore", ws / ".dvcignore")
    shutil.copytree(repo / "bin", ws / "bin")
    shutil.copytree(repo / "dreampose", ws / "dreampose", ignore=shutil.ignore_patterns("__pycache__"))
    (ws / "params.yaml").write_text(TINY)
    if venv:
        (ws / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (ws / ".gitignore").write_text(".venv\n")
    _git(ws, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=ws, check=True, env=_plain_shell_env())
    return ws


def _dvc(ws: Path, *args: str) -> subprocess.CompletedProcess:
    dvc = Path(sys.executable).parent / "dvc"  # the venv's console script, run without activating the venv
    return subprocess.run([str(dvc), *args], cwd=ws, env=_plain_shell_env(), capture_output=True, text=True)


def test_dvc_runs_stages_without_an_activated_venv(tmp_path, repo):
    ws = _workspace(repo, tmp_path / "ws")
    res = _dvc(ws, "repro", "--single-item", "download")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((ws / "data/raw/download_report.json").read_text())
    assert report["source"] == "synthetic"
    assert (ws / "dvc.lock").is_file()

    # An experiment: DVC rewrites params.yaml (YAML 1.2) and runs the stage again with the new value.
    _git(ws, "add", "-A")
    _git(ws, "commit", "-qm", "base")
    res = _dvc(ws, "exp", "run", "download", "-S", "data.synthetic.frames_per_video=9")
    assert res.returncode == 0, res.stdout + res.stderr
    params = load_params(ws / "params.yaml")
    assert params.data.synthetic.frames_per_video == 9 and params.train_base.mixed_precision == "no"
    lock = parse_yaml((ws / "dvc.lock").read_text(), "dvc.lock")
    assert lock["stages"]["download"]["params"]["params.yaml"]["data"]["synthetic"]["frames_per_video"] == 9


def test_launcher_without_venv_or_path_says_what_to_do(tmp_path, repo):
    ws = tmp_path / "ws"
    shutil.copytree(repo / "bin", ws / "bin")
    cmd = ["bin/python", "-m", "dreampose.stages.download"]
    res = subprocess.run(cmd, cwd=ws, env=_plain_shell_env(), capture_output=True, text=True)
    assert res.returncode == 127
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "make install" in lines[0] and str(ws.resolve()) in lines[0]


def test_launcher_without_venv_runs_the_environment_dreampose_is_installed_in(tmp_path, repo):
    """A workspace without .venv (the Prefect tasks put their environment's bin first on PATH): the Python beside
    the ``dreampose`` console script on PATH, not the first ``python3`` on PATH."""
    ws = tmp_path / "ws"
    shutil.copytree(repo / "bin", ws / "bin")
    env = {**_plain_shell_env(), "PATH": f"{SYSTEM_PATH}:{Path(sys.executable).parent}"}  # the system python3 first
    res = subprocess.run(
        ["bin/python", "-c", "import sys; print(sys.prefix)"], cwd=ws, env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == sys.prefix


def test_launcher_in_an_experiment_copy_finds_the_workspace_venv(tmp_path, repo):
    """`dvc exp run --temp` and queued experiments run in a copy under .dvc/tmp/exps/, which has no .venv."""
    ws = tmp_path / "ws"
    venv_bin = ws / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text('#!/bin/sh\necho "workspace venv: $*"\n')
    (venv_bin / "python").chmod(0o755)
    copy = ws / ".dvc" / "tmp" / "exps" / "tmp1234"
    shutil.copytree(repo / "bin", copy / "bin")
    cmd = ["bin/python", "-m", "dreampose.stages.score"]
    res = subprocess.run(cmd, cwd=copy, env=_plain_shell_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "workspace venv: -m dreampose.stages.score"


def test_a_stage_command_runs_the_code_in_its_working_directory(tmp_path, repo):
    """``bin/python -m`` imports the package from where DVC runs the command (an experiment's copy runs the code
    DVC hashed there), not from the checkout the venv was installed from."""
    ws = _workspace(repo, tmp_path / "ws")
    probe = "import dreampose.stages.download as m; print(m.__file__)"
    res = subprocess.run(["bin/python", "-c", probe], cwd=ws, env=_plain_shell_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()) == ws / "dreampose/stages/download.py"


def test_launcher_is_committed_executable(repo):
    entry = subprocess.run(["git", "ls-files", "-s", "bin/python"], cwd=repo, capture_output=True, text=True)
    assert entry.stdout.split()[:1] == ["100755"]  # a clone runs it as is


def _leaves(tree: dict) -> list[object]:
    return [x for v in tree.values() for x in (_leaves(v) if isinstance(v, dict) else [v])]


def test_dvc_metrics_read_the_scores_file_as_numbers(tmp_path, repo):
    """The demo record's scores.json (``metric_values`` of evaluation.json) as DVC's metrics: every column a
    number, and a changed number shows in ``dvc metrics diff``."""
    ws = tmp_path / "ws"
    (ws / "metrics").mkdir(parents=True)
    record = json.loads((repo / "metrics/evaluation.json").read_text())
    scores = metric_values(record)
    (ws / "metrics/scores.json").write_text(json.dumps(scores))
    (ws / "dvc.yaml").write_text("stages:\n  score:\n    cmd: 'true'\n    metrics:\n"
                                 "      - metrics/scores.json:\n          cache: false\n")  # fmt: skip
    _git(ws, "init", "-q")
    assert _dvc(ws, "init", "-q").returncode == 0
    _git(ws, "add", "-A")
    _git(ws, "commit", "-qm", "scores")

    res = _dvc(ws, "metrics", "show", "--json")
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout)[""]["data"]["metrics/scores.json"]
    assert "error" not in shown and shown["data"] == scores
    values = _leaves(shown["data"])
    assert len(values) >= 20 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)

    (ws / "metrics/scores.json").write_text(json.dumps({**scores, "ours": {**scores["ours"], "l1": 0.5}}))
    res = _dvc(ws, "metrics", "diff", "--json")
    assert res.returncode == 0, res.stderr
    diff = json.loads(res.stdout)["metrics/scores.json"]
    assert diff == {"ours.l1": {"old": scores["ours"]["l1"], "new": 0.5, "diff": 0.5 - scores["ours"]["l1"]}}


def test_what_dvc_writes_locally_is_ignored_by_git(repo):
    paths = ["dvc_plots/index.html", ".dvc/tmp/exps/run", ".dvc/cache/files/md5/00/x", ".dvc/config.local"]
    res = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=repo, capture_output=True, text=True)
    assert res.stdout.split() == paths
