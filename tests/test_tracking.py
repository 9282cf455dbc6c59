"""MLflow conventions: repository root, run names, flattened params, content hashes, parent runs."""

from __future__ import annotations

import mlflow
import pytest

from dreampose import tracking


def test_repo_root_walks_up_to_params_and_dvc_yaml(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert tracking.repo_root(deep) == tmp_path.resolve()
    assert tracking.default_tracking_uri(deep) == f"sqlite:///{tmp_path.resolve() / 'mlruns.db'}"


def test_flatten_and_run_names():
    assert tracking.flatten({"a": {"b": 1, "c": {"d": [2]}}, "e": "x"}) == {"a.b": 1, "a.c.d": [2], "e": "x"}
    assert tracking.stage_run_name("render", {"subject": "s1"}) == "render@s1"
    assert tracking.stage_run_name("score") == "score"


def test_path_digest_follows_content_and_names(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.txt").write_text("one")
    first = tracking.path_digest(d)
    assert tracking.path_digest(d) == first
    (d / "a.txt").write_text("two")
    assert tracking.path_digest(d) != first
    assert tracking.path_digest(tmp_path / "missing") is None


def test_stage_run_is_a_child_of_the_pipeline_run(tmp_path, monkeypatch):
    tracking.configure("tracking-test", tmp_path)
    with mlflow.start_run(run_name="pipeline") as parent:
        pass
    monkeypatch.setenv(tracking.PARENT_ENV, parent.info.run_id)
    (tmp_path / "in.txt").write_text("data")
    with tracking.stage_run(
        "render", {"render": {"steps": 3}}, "tracking-test", {"x": tmp_path / "in.txt"}, tags={"subject": "s1"}
    ) as run:
        run_id = run.info.run_id
    got = mlflow.get_run(run_id)
    assert got.info.run_name == "render@s1"
    assert got.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert got.data.params == {"render.steps": "3"}
    assert got.data.tags["input.x.md5"] == tracking.path_digest(tmp_path / "in.txt")


def test_disabled_tracking_yields_none(monkeypatch):
    monkeypatch.setenv(tracking.DISABLE_ENV, "1")
    assert not tracking.tracking_enabled()
    with tracking.stage_run("score", {}) as run:
        assert run is None


@pytest.mark.parametrize("value", ["0", ""])
def test_tracking_enabled_by_default(monkeypatch, value):
    monkeypatch.setenv(tracking.DISABLE_ENV, value)
    assert tracking.tracking_enabled()
