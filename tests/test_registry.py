"""Registry review conventions against a throwaway sqlite MLflow store (see conftest)."""

from __future__ import annotations

import json

import mlflow
import pytest

from dreampose import cli, registry


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (creating one costs seconds); each test gets its own model name."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlruns.db'}"


@pytest.fixture
def name(request) -> str:
    """A registered-model name of this test's own (the store is shared by the module)."""
    return f"subject-{request.node.name}"[:100]


@pytest.fixture
def logged_model(tmp_path, store, monkeypatch, request):
    """A run with a model directory artifact; returns ``(run_id, model_uri)``."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    mlflow.set_tracking_uri(store)
    exp = mlflow.create_experiment(f"registry-{request.node.name}", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_text("{}", "model/model_index.json")
        mlflow.log_metric("temporal_l1", 0.05)
        uri = mlflow.get_artifact_uri("model")
    return run.info.run_id, uri


def _register(name, logged_model, item="item-a", **tags):
    run_id, uri = logged_model
    return registry.register_version(name, uri, run_id, item, tags={"link.video": f"{uri}/video.mp4", **tags})


def test_register_is_pending_with_item_tag(name, logged_model):
    v = _register(name, logged_model)
    assert v.version == "1" and v.review == "pending"
    assert v.tags["catalog_item"] == "item-a"
    assert v.links == {"video": f"{logged_model[1]}/video.mp4"}
    assert v.metrics == {"temporal_l1": 0.05}
    assert [p.version for p in registry.list_pending(name)] == ["1"]


def test_versions_accumulate_and_list_newest_first(name, logged_model):
    _register(name, logged_model, "a")
    _register(name, logged_model, "b")
    pending = registry.list_pending(name)
    assert [(p.version, p.tags["catalog_item"]) for p in pending] == [("2", "b"), ("1", "a")]


def test_approvals_are_per_item_and_record_who_and_when(name, logged_model):
    _register(name, logged_model, "a")
    _register(name, logged_model, "b")
    assert registry.approved_version(name, "a") is None
    v = registry.approve(name, 2, by="alice")
    assert v.review == "approved" and v.aliases == ["approved-b"]
    assert v.tags["review_by"] == "alice" and v.tags["review_at"].endswith("+00:00")
    # Approving another item leaves the first approved.
    registry.approve(name, "1", by="bob")
    assert registry.approved_version(name, "b").version == "2"
    assert registry.approved_version(name, "a").version == "1"
    assert [x.version for x in registry.list_versions(name, "approved")] == ["2", "1"]
    assert registry.list_pending(name) == []


def test_a_newer_approval_of_the_same_item_supersedes(name, logged_model):
    _register(name, logged_model, "a")
    _register(name, logged_model, "a")
    registry.approve(name, 1)
    registry.approve(name, 2)
    assert registry.approved_version(name, "a").version == "2"
    old = registry.get_version(name, 1)
    assert old.review == "superseded" and old.tags["review_superseded_by"] == "2" and old.aliases == []


def test_alias_names_follow_mlflow_rules_and_collisions_are_refused(name, logged_model):
    assert registry.approved_alias("sku.42_b-1") == "approved-sku_42_b-1"
    assert registry.approved_uri("m", "sku.42") == "models:/m@approved-sku_42"
    _register(name, logged_model, "x.1")
    _register(name, logged_model, "x_1")
    registry.approve(name, 1)
    with pytest.raises(ValueError, match="share the alias"):
        registry.approve(name, 2)


def test_reject_tags_reason_and_drops_alias(name, logged_model):
    _register(name, logged_model)
    registry.approve(name, 1)
    v = registry.reject(name, 1, "sleeves flicker", by="carol")
    assert v.review == "rejected" and v.tags["review_reason"] == "sleeves flicker" and v.tags["review_by"] == "carol"
    assert registry.approved_version(name, "item-a") is None
    assert registry.list_pending(name) == [] and [x.version for x in registry.list_versions(name, "rejected")] == ["1"]
    # A later approval clears the old reason.
    assert "review_reason" not in registry.approve(name, 1).tags
    with pytest.raises(ValueError, match="choose one of"):
        registry.list_versions(name, "maybe")


def test_reject_needs_reason_and_unknown_version_is_clear(name, logged_model):
    _register(name, logged_model)
    with pytest.raises(ValueError, match="needs a reason"):
        registry.reject(name, 1, "  ")
    with pytest.raises(ValueError, match="no version 7"):
        registry.approve(name, 7)


def test_find_by_input_key(name, logged_model):
    _register(name, logged_model, "a", catalog_input_key="k1")
    _register(name, logged_model, "b", catalog_input_key="k2")
    assert registry.find_by_input_key(name, "k1").tags["catalog_item"] == "a"
    assert registry.find_by_input_key(name, "zzz") is None


def test_review_cli_list_approve_reject(name, logged_model, tmp_path, capsys):
    _register(name, logged_model, "a")
    _register(name, logged_model, "b")
    (tmp_path / "params.yaml").write_text(f"tracking:\n  registered_model: {name}\n")
    base = ["--root", str(tmp_path)]
    assert cli.main([*base, "review", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in listed] == ["2", "1"] and listed[0]["links"]["video"].endswith("video.mp4")
    assert cli.main([*base, "review", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["version", "item", "status"] and table[1].split()[:3] == ["2", "b", "pending"]
    assert cli.main([*base, "review", "approve", name, "2", "--by", "dana"]) == 0
    assert "models:/" + name + "@approved-b" in capsys.readouterr().out
    assert cli.main([*base, "review", "approve", name, "1"]) == 0
    capsys.readouterr()
    assert registry.approved_version(name, "b").version == "2" and registry.approved_version(name, "a").version == "1"
    assert registry.get_version(name, 1).tags["review_by"] == registry.default_reviewer()
    assert cli.main([*base, "review", "reject", name, "1", "--reason", "wrong colour"]) == 0
    assert registry.get_version(name, 1).tags["review_reason"] == "wrong colour"
    capsys.readouterr()
    assert cli.main([*base, "review", "list"]) == 0
    assert capsys.readouterr().out.strip() == "(no versions)"
    assert cli.main([*base, "review", "list", "--status", "all", "--json"]) == 0
    assert {v["version"]: (v["review"], v["by"]) for v in json.loads(capsys.readouterr().out)} == {
        "2": ("approved", "dana"),
        "1": ("rejected", registry.default_reviewer()),
    }
    assert cli.main([*base, "review", "list", "--status", "rejected"]) == 0
    assert "reason: wrong colour" in capsys.readouterr().out
    assert cli.main([*base, "review", "approve", name, "9"]) == 2
    assert "no version 9" in capsys.readouterr().err
    assert cli.main([*base, "review", "show", "no-such-item", "--no-open"]) == 2
    assert "no version" in capsys.readouterr().err


def test_run_names_and_metric_groups(store, monkeypatch, tmp_path):
    from dreampose import tracking
    from dreampose.tracking import MlflowLogger

    assert tracking.stage_run_name("render", {"subject": "syn_test_001"}) == "render@syn_test_001"
    assert tracking.stage_run_name("score") == "score"
    mlflow.set_tracking_uri(store)
    exp = mlflow.create_experiment("registry-groups", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=exp) as run:
        MlflowLogger().log_metrics({"loss": 0.5, "lr": 1e-3}, step=1)
    assert set(mlflow.get_run(run.info.run_id).data.metrics) == {"train/loss", "train/lr"}
