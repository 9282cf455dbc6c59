"""Preflight: every input the paper configuration reads is found, or listed with where it belongs."""

from __future__ import annotations

import json

import pytest

from dreampose import cli
from dreampose.config import Params, load_params
from dreampose.preflight import PreflightError, check_inputs, errors, require_inputs
from tests.conftest import REPO


def _paper() -> Params:
    return load_params(REPO / "presets/paper.yaml")


def _local_paper(tmp_path) -> Params:
    raw = _paper().model_dump(mode="json")
    raw["data"]["ubc"].update(train_list="lists/train.txt", test_list="lists/test.txt")
    raw["model"]["pretrained"].update(sd_path="models/sd", clip_path="models/clip")
    return Params.model_validate(raw)


def _levels(findings) -> dict[str, str]:
    return {f.key: f.level for f in findings}


def test_demo_needs_nothing_but_metric_weights():
    levels = _levels(check_inputs(load_params(REPO / "presets/demo.yaml"), REPO, cuda_available=False))
    assert not [k for k, v in levels.items() if v == "error"]
    assert {k for k, v in levels.items() if v == "warn"} <= {f"score.{k}" for k in (
        "lpips_weights", "vgg_weights", "inception_weights", "i3d_weights", "aed_weights")}  # fmt: skip


def test_paper_hub_ids_warn_and_missing_local_inputs_are_errors(tmp_path):
    levels = _levels(check_inputs(_paper(), tmp_path, cuda_available=False))
    assert levels["model.pretrained.sd_path"] == levels["model.pretrained.clip_path"] == "warn"  # hub ids
    assert levels["densepose.weights"] == "error"
    assert levels["runtime.device"] == "warn"  # auto on a CPU machine, SD-sized models
    (tmp_path / "models").mkdir()  # a workspace has models/: models/sd is then a local path, not a hub id
    local = check_inputs(_local_paper(tmp_path), tmp_path, cuda_available=True)
    assert {f.key for f in errors(local)} == {
        "data.ubc.train_list",
        "data.ubc.test_list",
        "model.pretrained.sd_path",
        "model.pretrained.clip_path",
        "densepose.weights",
    }
    with pytest.raises(PreflightError, match=r"densepose\.weights") as err:
        require_inputs(_local_paper(tmp_path), tmp_path)
    assert "model.pretrained.sd_path" in str(err.value)  # every missing input listed at once


def test_complete_local_layout_passes(tmp_path):
    params = _local_paper(tmp_path)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists/train.txt").write_text("http://127.0.0.1:1/a.mp4\n\n# comment\n")
    (tmp_path / "lists/test.txt").write_text("http://127.0.0.1:1/b.mp4\n")
    for f in ("model_index.json", "unet/config.json", "vae/config.json", "scheduler/scheduler_config.json"):
        (tmp_path / "models/sd" / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "models/sd" / f).write_text("{}")
    clip = tmp_path / "models/clip"
    clip.mkdir(parents=True)
    (clip / "config.json").write_text("{}")
    assert (
        "missing preprocessor_config.json"
        in {f.key: f.message for f in check_inputs(params, tmp_path)}["model.pretrained.clip_path"]
    )
    (clip / "preprocessor_config.json").write_text(json.dumps({}))
    weights = tmp_path / params.densepose.weights
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"x")
    findings = check_inputs(params, tmp_path, cuda_available=True)
    assert not errors(findings)
    assert {f.key: f.message for f in findings}["data.ubc.train_list"].endswith("1 URLs")
    assert _levels(check_inputs(params, tmp_path, cuda_available=True))["runtime.device"] == "ok"


def test_cli_exit_code(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text((REPO / "presets/paper.yaml").read_text())
    assert cli.main(["--root", str(tmp_path), "preflight"]) == 1
    out = capsys.readouterr().out
    assert "ERROR densepose.weights" in out and "score.inception_weights" in out
    (tmp_path / "params.yaml").write_text((REPO / "presets/demo.yaml").read_text())
    assert cli.main(["--root", str(tmp_path), "preflight"]) == 0
