"""A DVC remote: the pipeline's workspace pushes, a fresh clone pulls ``models/base`` and serves a catalog item
without running any stage."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dreampose.tools.remote import add_remote, normalize_url
from tests.flows.conftest import TINY_PARAMS, make_dvc_repo

# The stages stand in for the real pipeline's upstream: each appends its name to ran.log beside the repos,
# so any stage that runs in the serving clone shows up there.
MAKE_BASE = """\
from pathlib import Path
from dreampose.config import load_params
from dreampose.models.builders import build_tiny_components, save_pipeline_atomic
from dreampose.models.pipeline import DreamPosePipeline

with open(Path(__file__).resolve().parent.parent / "ran.log", "a") as log:
    log.write("base_model\\n")
p = load_params("params.yaml")
comps = build_tiny_components(p.model.tiny, p.frames.height, p.frames.width, seed=0)
save_pipeline_atomic(DreamPosePipeline(**comps), Path("models/base"))
"""
MAKE_POSES = """\
from pathlib import Path

{write_iuv_dir}

with open(Path(__file__).resolve().parent.parent / "ran.log", "a") as log:
    log.write("poses\\n")
write_iuv_dir(Path("poses"))
"""
DVC_YAML = f"""\
stages:
  base_model:
    cmd: {sys.executable} make_base.py
    deps: [make_base.py]
    params: [model, frames]
    outs: [models/base]
  poses:
    cmd: {sys.executable} make_poses.py
    deps: [make_poses.py]
    outs: [poses]
"""


def _env() -> dict[str, str]:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "DREAMPOSE_NO_MLFLOW": "1", "GIT_TERMINAL_PROMPT": "0"}


def _run(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _dvc(args: list[str], cwd: Path) -> str:
    return _run([sys.executable, "-m", "dvc", *args], cwd)


def _git(args: list[str], cwd: Path) -> str:
    return _run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", *args], cwd)


def test_pushed_workspace_serves_a_catalog_item_from_a_fresh_clone(tmp_path):
    from tests.flows import conftest

    origin = make_dvc_repo(tmp_path / "origin", DVC_YAML, TINY_PARAMS)
    (origin / "make_base.py").write_text(MAKE_BASE)
    (origin / "make_poses.py").write_text(MAKE_POSES.format(write_iuv_dir=inspect.getsource(conftest.write_iuv_dir)))
    conftest.person_photo(origin / "photo.png")
    _dvc(["repro"], origin)
    assert (tmp_path / "ran.log").read_text().split() == ["base_model", "poses"]

    # One command sets the remote (a relative path is stored absolute), committed so every clone knows it.
    out = _run([sys.executable, "-m", "dreampose.cli", "remote", "add", "../remote"], origin)
    assert str(tmp_path / "remote") in out
    _dvc(["push"], origin)
    _git(["add", "-A"], origin)
    _git(["commit", "-q", "-m", "pipeline"], origin)

    clone = tmp_path / "serve"
    _git(["clone", "-q", str(origin), str(clone)], tmp_path)
    assert not (clone / "models/base").exists() and not (clone / "poses").exists()  # outputs are not in git
    _dvc(["pull", "models/base", "poses"], clone)
    assert (clone / "models/base/model_index.json").is_file()
    assert "up to date" in _dvc(["status"], clone)  # the pulled outputs match dvc.lock: nothing is stale

    result = json.loads(
        _run(
            [sys.executable, "-m", "dreampose.cli", "catalog-item", "--photo", "photo.png", "--poses", "poses"],
            clone,
        )
    )
    assert result["item_id"] == "photo" and len(result["frames"]) == 6
    assert Path(result["video"]).is_file() and Path(result["video"]).is_relative_to(clone)
    assert (tmp_path / "ran.log").read_text().split() == ["base_model", "poses"]  # no stage ran in the clone


def test_remote_add_errors_and_urls(tmp_path):
    assert normalize_url("s3://bucket/dreampose", tmp_path) == "s3://bucket/dreampose"
    assert normalize_url("store", tmp_path) == str(tmp_path / "store")
    with pytest.raises(ValueError, match="unknown scheme"):
        normalize_url("ftp://host/x", tmp_path)
    with pytest.raises(ValueError, match="not a DVC workspace"):
        add_remote(tmp_path, "/tmp/x")
    repo = make_dvc_repo(tmp_path / "repo", "stages: {}\n", "{}\n")
    assert add_remote(repo, "s3://bucket/a", cwd=tmp_path) == "s3://bucket/a"
    add_remote(repo, "gs://bucket/b", cwd=tmp_path)  # replaces the remote of the same name
    config = (repo / ".dvc/config").read_text()
    assert "gs://bucket/b" in config and "s3://" not in config and "remote = store" in config
