from pathlib import Path

import pytest
import yaml

from dreampose.config import ConfigError, Params, load_params, parse_params


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
