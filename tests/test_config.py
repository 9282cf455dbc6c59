from pathlib import Path

import pytest
import yaml

from dreampose.config import ConfigError, Params, load_params, parse_params
from tests.imports import repo_modules


def test_repo_params_and_presets_validate(repo):
    demo = load_params(repo / "params.yaml")
    paper = load_params(repo / "presets" / "paper.yaml")
    assert demo.data.source == "synthetic" and demo.model.source == "tiny"
    assert paper.data.source == "ubc" and paper.model.source == "pretrained"
    assert (paper.frames.height, paper.frames.width) == (640, 512)
    assert paper.train_base.lr == 5e-6 and paper.train_base.batch_size * paper.train_base.grad_accum == 16
    assert paper.train_subject.unet.max_steps == 500 and paper.train_subject.decoder_steps == 1500
    assert (paper.manifest.test_num_targets, paper.manifest.test_min_gap) == (50, 50)


def test_demo_preset_is_params_yaml(repo):
    assert (repo / "presets" / "demo.yaml").read_text() == (repo / "params.yaml").read_text()


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"frames": {"height": 64, "widht": 48}}))
    with pytest.raises(ConfigError) as e:
        load_params(p)
    assert "frames.widht" in str(e.value) and str(p) in str(e.value) and "unknown key" in str(e.value)


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"data": {"source": "youtube"}}, "data.source"),
        ({"frames": {"height": 60}}, "frames"),
        ({"manifest": {"pose_window": 4}}, "manifest.pose_window"),
        ({"train_base": {"lr": -1}}, "train_base.lr"),
        ({"train_base": {"dropout": {"pose": 0.5, "image": 0.5, "both": 0.5}}}, "train_base.dropout"),
    ],
)
def test_bad_values_name_the_key(raw, key):
    with pytest.raises(ConfigError) as e:
        parse_params(raw, "x.yaml")
    assert key in str(e.value) and "x.yaml" in str(e.value)


def test_not_a_mapping_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        parse_params([1, 2], "p.yaml")
    with pytest.raises(ConfigError, match="no such params file"):
        load_params(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_defaults_are_one_source():
    assert Params() == parse_params({}, Path("empty.yaml"))


def test_runtime_presets_demo_auto_fp32_paper_auto_fp16(repo, monkeypatch):
    monkeypatch.delenv("DREAMPOSE_DEVICE", raising=False)
    demo = load_params(repo / "params.yaml").runtime
    paper = load_params(repo / "presets" / "paper.yaml").runtime
    assert (demo.device, demo.dtype, demo.cpu_offload) == ("auto", "fp32", False)
    assert (paper.device, paper.dtype, paper.cpu_offload) == ("auto", "fp16", False)


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"runtime": {"device": "gpu"}}, "runtime.device: .*'gpu' is not a device"),
        ({"runtime": {"device": "cuda:x"}}, "runtime.device"),
        ({"runtime": {"dtype": "fp8"}}, "runtime.dtype"),
        ({"runtime": {"offload": True}}, "runtime.offload: unknown key"),
        ({"densepose": {"device": "cpu"}}, "densepose.device moved to runtime.device"),
    ],
)
def test_bad_runtime_names_the_key(raw, match, monkeypatch):
    monkeypatch.delenv("DREAMPOSE_DEVICE", raising=False)
    with pytest.raises(ConfigError, match=match):
        parse_params(raw, "x.yaml")


def test_dreampose_device_env_overrides_runtime_device(tmp_path, monkeypatch):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"runtime": {"device": "cpu", "dtype": "bf16"}}))
    monkeypatch.delenv("DREAMPOSE_DEVICE", raising=False)
    assert load_params(p).runtime.device == "cpu"
    monkeypatch.setenv("DREAMPOSE_DEVICE", "cuda:1")
    assert load_params(p).runtime.device == "cuda:1" and load_params(p).runtime.dtype == "bf16"
    assert parse_params({}, "empty.yaml").runtime.device == "cuda:1"
    monkeypatch.setenv("DREAMPOSE_DEVICE", "")
    assert load_params(p).runtime.device == "cpu"
    monkeypatch.setenv("DREAMPOSE_DEVICE", "gpu0")
    with pytest.raises(ConfigError, match="DREAMPOSE_DEVICE='gpu0'"):
        load_params(p)


def test_the_schema_is_apart_from_reading_and_writing_yaml():
    """``dreampose.config.schema`` holds the models and their validation, no YAML; the files module does the YAML."""
    import ast

    def third_party(module: str) -> set[str]:
        tree = ast.parse(repo_modules()[module].read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        return {n.split(".")[0] for n in names}

    assert not {"yaml", "ruamel"} & third_party("dreampose.config.schema")
    assert {"yaml", "ruamel"} <= third_party("dreampose.config.files")
