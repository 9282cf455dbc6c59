"""``dvc exp run -S key=value`` rewrites the params file with DVC's own YAML 1.2 writer (ruamel) before any stage
runs; every leaf of the demo and paper presets must read back as the same validated ``Params`` afterwards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import apply_overrides

from dreampose import cli
from dreampose.config import ConfigError, dump_yaml, layered_params, load_params, parse_yaml
from dreampose.tools.ablations import hydra_literal

PARAMS_FILES = ["params.yaml", "presets/paper.yaml"]


def leaves(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Dotted key -> value for every leaf: mappings are recursed (an empty one is a leaf), lists are leaves."""
    out: list[tuple[str, object]] = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out += leaves(value, f"{dotted}.")
        else:
            out.append((dotted, value))
    return out


def _dvc_set(src: Path, dst: Path, override: str) -> Path:
    shutil.copyfile(src, dst)
    apply_overrides(dst, [override])
    return dst


@pytest.mark.parametrize("name", PARAMS_FILES)
def test_every_leaf_survives_dvc_set_param(repo, tmp_path, name):
    src = repo / name
    original = load_params(src)
    tree = parse_yaml(src.read_text(), src)
    keys = leaves(tree)
    assert len(keys) > 40  # the whole file, not a stray section
    dst = tmp_path / "params.yaml"
    for key, value in keys:
        _dvc_set(src, dst, f"{key}={hydra_literal(value)}")
        assert load_params(dst) == original, f"{name}: {key}={hydra_literal(value)} changed the loaded params"


def test_dvc_set_param_changes_only_that_key(repo, tmp_path):
    src = repo / "params.yaml"
    original = load_params(src)
    assert original.render.num_inference_steps != 12
    got = load_params(_dvc_set(src, tmp_path / "params.yaml", "render.num_inference_steps=12"))
    assert got.render.num_inference_steps == 12
    want = json.loads(original.model_dump_json())
    want["render"]["num_inference_steps"] = 12
    assert json.loads(got.model_dump_json()) == want


def test_config_use_override_writes_what_every_reader_reads_back(tmp_path, repo):
    """``config use --override`` writes params.yaml itself: PyYAML (YAML 1.1), our loader and DVC's rewrite
    (YAML 1.2) must all read the same values, including strings one of them would otherwise take for a
    bool or a number."""
    (tmp_path / "presets").mkdir()
    shutil.copyfile(repo / "presets/paper.yaml", tmp_path / "presets/paper.yaml")
    small = tmp_path / "small.yaml"
    small.write_text("train_base: {mixed_precision: 'no'}\neval: {subjects: ['no', 'on', '0o17', '1e5', '1:20']}\n")
    assert cli.main(["--root", str(tmp_path), "config", "use", "paper", "--override", str(small)]) == 0
    written = tmp_path / "params.yaml"
    merged, want = layered_params(tmp_path / "presets/paper.yaml", small)
    assert yaml.safe_load(written.read_text()) == merged == parse_yaml(written.read_text(), written)
    got = load_params(written)
    assert got == want and got.train_base.mixed_precision == "no"
    assert list(got.eval.subjects) == ["no", "on", "0o17", "1e5", "1:20"]
    apply_overrides(written, ["seed=0"])
    assert load_params(written) == want


@pytest.mark.parametrize("value", ["no", "on", "yes", "0o17", "1e5", "1:20", "null", "~", "12", "plain", ".5"])
def test_dump_yaml_strings_read_back_as_strings(value):
    text = dump_yaml({"k": value, "xs": [value]}, "t.yaml")
    assert parse_yaml(text, "t.yaml") == yaml.safe_load(text) == {"k": value, "xs": [value]}


def test_yaml_errors_name_the_file(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("seed: 0\nseed: 1\n")  # YAML 1.2 (and DVC) refuse a duplicate key
    with pytest.raises(ConfigError, match=f"{p}: not valid YAML"):
        load_params(p)
    p.write_text("frames: [1\n")
    with pytest.raises(ConfigError, match=f"{p}: not valid YAML"):
        load_params(p)
