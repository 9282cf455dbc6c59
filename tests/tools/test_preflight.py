"""Preflight: every input the paper configuration reads is found, or listed with where it belongs."""

from __future__ import annotations

import json

import pytest

from dreampose import cli
from dreampose.config import Params, load_params
from dreampose.tools.preflight import PreflightError, check_inputs, errors, require_inputs
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
    assert levels["runtime.device"] == "error"  # auto on a CPU machine, SD-sized models: refused
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


def _complete_layout(tmp_path, params: Params) -> None:
    """Every input the paper preset reads, as (empty) files in the layout the stages expect."""
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists/train.txt").write_text("http://127.0.0.1:1/a.mp4\n\n# comment\n")
    (tmp_path / "lists/test.txt").write_text("http://127.0.0.1:1/b.mp4\n")
    for f in ("model_index.json", "unet/config.json", "vae/config.json", "scheduler/scheduler_config.json"):
        (tmp_path / "models/sd" / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "models/sd" / f).write_text("{}")
    clip = tmp_path / "models/clip"
    clip.mkdir(parents=True)
    (clip / "config.json").write_text("{}")
    (clip / "preprocessor_config.json").write_text("{}")
    weights = tmp_path / params.densepose.weights
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"x")


def test_complete_local_layout_passes(tmp_path):
    params = _local_paper(tmp_path)
    _complete_layout(tmp_path, params)
    preprocessor = tmp_path / "models/clip/preprocessor_config.json"
    preprocessor.unlink()
    assert (
        "missing preprocessor_config.json"
        in {f.key: f.message for f in check_inputs(params, tmp_path)}["model.pretrained.clip_path"]
    )
    preprocessor.write_text(json.dumps({}))
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


def _write_params(tmp_path, params: Params) -> None:
    (tmp_path / "params.yaml").write_text(json.dumps(params.model_dump(mode="json")))  # JSON is YAML


@pytest.fixture
def no_cuda(monkeypatch):
    """A machine whose NVIDIA driver is too old for the torch wheel: torch reports no CUDA."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("DREAMPOSE_DEVICE", raising=False)


def test_paper_run_that_would_land_on_the_cpu_is_refused(tmp_path, no_cuda, capsys, monkeypatch):
    """Pretrained SD + ``runtime.device: auto`` resolving to the CPU: ``dreampose preflight`` exits non-zero and
    the pipeline flow's own check raises, before any stage; ``runtime.device: cpu`` says the CPU is meant."""
    params = _local_paper(tmp_path)
    assert params.model.source == "pretrained" and params.runtime.device == "auto"
    _complete_layout(tmp_path, params)
    _write_params(tmp_path, params)
    assert cli.main(["--root", str(tmp_path), "preflight"]) == 1
    out = capsys.readouterr().out
    assert "ERROR runtime.device" in out and "auto resolves to the CPU" in out and "runtime.device: cpu" in out
    with pytest.raises(PreflightError, match=r"runtime\.device.*auto resolves to the CPU"):
        require_inputs(params, tmp_path)  # what flows.pipeline calls before its first stage

    cpu = params.model_copy(update={"runtime": params.runtime.model_copy(update={"device": "cpu"})})
    _write_params(tmp_path, cpu)
    assert cli.main(["--root", str(tmp_path), "preflight"]) == 0
    assert not errors(require_inputs(cpu, tmp_path))
    _write_params(tmp_path, params)
    monkeypatch.setenv("DREAMPOSE_DEVICE", "cpu")  # the environment override says so too
    assert cli.main(["--root", str(tmp_path), "preflight"]) == 0


def test_auto_on_cpu_is_fine_for_the_tiny_model_and_on_a_cuda_machine(tmp_path, no_cuda, monkeypatch):
    params = _local_paper(tmp_path)
    _complete_layout(tmp_path, params)
    tiny = params.model_copy(update={"model": params.model.model_copy(update={"source": "tiny"})})
    assert _levels(check_inputs(tiny, tmp_path))["runtime.device"] == "ok"
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    finding = {f.key: f for f in check_inputs(params, tmp_path)}["runtime.device"]
    assert (finding.level, finding.message) == ("ok", "auto (cuda)")


def test_flow_reports_the_refusal_as_one_error(tmp_path, no_cuda, capsys):
    """``python -m flows.pipeline`` (what ``make paper`` runs): exit status 1 and the reason, no traceback."""
    from flows import pipeline as flow

    params = _local_paper(tmp_path)
    _complete_layout(tmp_path, params)
    _write_params(tmp_path, params)
    assert flow.main(["--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "runtime.device" in err and "auto resolves to the CPU" in err and "Traceback" not in err
