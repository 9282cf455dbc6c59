"""Registry review conventions against a throwaway sqlite MLflow store (see conftest)."""

from __future__ import annotations

import json

import mlflow
import pytest

from dreampose import cli, registry

NAME = "dreampose-subject-test"


@pytest.fixture
def logged_model(tmp_path):
    """A run with a model directory artifact; returns ``(run_id, model_uri)``."""
    import os

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    exp = mlflow.create_experiment("registry-test", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_text("{}", "model/model_index.json")
        mlflow.log_metric("temporal_l1", 0.05)
        uri = mlflow.get_artifact_uri("model")
    return run.info.run_id, uri


def _register(logged_model, item="item-a", **tags):
    run_id, uri = logged_model
    return registry.register_version(NAME, uri, run_id, item, tags={"link.video": f"{uri}/video.mp4", **tags})


def test_register_is_pending_with_item_tag(logged_model):
    v = _register(logged_model)
    assert v.version == "1" and v.review == "pending"
    assert v.tags["catalog_item"] == "item-a"
    assert v.links == {"video": f"{logged_model[1]}/video.mp4"}
    assert v.metrics == {"temporal_l1": 0.05}
    assert [p.version for p in registry.list_pending(NAME)] == ["1"]


def test_versions_accumulate_and_list_newest_first(logged_model):
    _register(logged_model, "a")
    _register(logged_model, "b")
    pending = registry.list_pending(NAME)
    assert [(p.version, p.tags["catalog_item"]) for p in pending] == [("2", "b"), ("1", "a")]


def test_approve_sets_alias_and_tag(logged_model):
    _register(logged_model, "a")
    _register(logged_model, "b")
    assert registry.approved_version(NAME) is None
    v = registry.approve(NAME, 2)
    assert v.review == "approved" and "approved" in v.aliases
    assert registry.approved_version(NAME).version == "2"
    assert [p.version for p in registry.list_pending(NAME)] == ["1"]
    # Approving another version moves the alias.
    registry.approve(NAME, "1")
    assert registry.approved_version(NAME).version == "1"


def test_reject_tags_reason_and_drops_alias(logged_model):
    _register(logged_model)
    registry.approve(NAME, 1)
    v = registry.reject(NAME, 1, "sleeves flicker")
    assert v.review == "rejected" and v.tags["review_reason"] == "sleeves flicker"
    assert registry.approved_version(NAME) is None
    assert registry.list_pending(NAME) == []
    # A later approval clears the old reason.
    assert "review_reason" not in registry.approve(NAME, 1).tags


def test_reject_needs_reason_and_unknown_version_is_clear(logged_model):
    _register(logged_model)
    with pytest.raises(ValueError, match="needs a reason"):
        registry.reject(NAME, 1, "  ")
    with pytest.raises(ValueError, match="no version 7"):
        registry.approve(NAME, 7)


def test_find_by_input_key(logged_model):
    _register(logged_model, "a", catalog_input_key="k1")
    _register(logged_model, "b", catalog_input_key="k2")
    assert registry.find_by_input_key(NAME, "k1").tags["catalog_item"] == "a"
    assert registry.find_by_input_key(NAME, "zzz") is None


def test_review_cli_list_approve_reject(logged_model, tmp_path, capsys):
    _register(logged_model, "a")
    _register(logged_model, "b")
    (tmp_path / "params.yaml").write_text(f"tracking:\n  registered_model: {NAME}\n")
    base = ["--root", str(tmp_path)]
    assert cli.main([*base, "review", "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in listed] == ["2", "1"] and listed[0]["links"]["video"].endswith("video.mp4")
    assert cli.main([*base, "review", "approve", NAME, "2"]) == 0
    capsys.readouterr()
    assert registry.approved_version(NAME).version == "2"
    assert cli.main([*base, "review", "reject", NAME, "1", "--reason", "wrong colour"]) == 0
    assert registry.get_version(NAME, 1).tags["review_reason"] == "wrong colour"
    capsys.readouterr()
    assert cli.main([*base, "review", "list"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert cli.main([*base, "review", "approve", NAME, "9"]) == 2
    assert "no version 9" in capsys.readouterr().err
