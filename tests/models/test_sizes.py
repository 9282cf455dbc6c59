"""Frame sizes a model cannot take fail where the config meets the model, before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from diffusers import AutoencoderKL, UNet2DConditionModel

from dreampose import layout
from dreampose.config import ModelConfig, PretrainedModelConfig, parse_params
from dreampose.models.builders import build_base_model, model_size_multiple
from dreampose.models.sizes import check_frame_size, nearest_multiples, saved_size_multiple, size_multiple
from dreampose.models.subject import save_subject
from dreampose.stages import finetune_base, finetune_subject, render
from tests.models.conftest import TEST_CFG


def _write_sd_configs(root: Path) -> Path:
    """The ``vae/`` and ``unet/`` configs of a Stable Diffusion v1.x-shaped directory (4 + 4 blocks), tiny widths."""
    sd = root / "sd"
    UNet2DConditionModel(
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=8,
        attention_head_dim=2,
        norm_num_groups=4,
    ).save_config(sd / "unet")
    AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=4,
    ).save_config(sd / "vae")
    (sd / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return sd


def test_size_multiple_formula():
    assert size_multiple(4, 4, 2) == 64  # Stable Diffusion v1.x
    assert size_multiple(3, 3, 2) == 16  # the demo's tiny model
    assert size_multiple(2, 1, 2) == 4
    with pytest.raises(ValueError, match=">= 1"):
        size_multiple(0, 4, 2)


def test_formula_matches_the_pipeline(pipe, tmp_path):
    assert model_size_multiple(ModelConfig(tiny=TEST_CFG)) == pipe.size_multiple == 16
    pipe.save_pretrained(tmp_path / "m")
    assert saved_size_multiple(tmp_path / "m") == pipe.size_multiple


def test_nearest_multiples():
    assert nearest_multiples(48, 64) == [64]
    assert nearest_multiples(500, 64) == [448, 512]
    assert nearest_multiples(512, 64) == [512]


def test_error_names_the_keys_the_multiple_and_the_fixes():
    check_frame_size(640, 512, 64)
    with pytest.raises(ValueError) as err:
        check_frame_size(64, 48, 64, "SD")
    msg = str(err.value)
    assert "frames.height x frames.width = 64 x 48" in msg and "multiples of 64" in msg
    assert "frames.width = 48: use 64" in msg and "frames.height =" not in msg
    with pytest.raises(ValueError, match=r"frames\.height = 500: use 448 or 512; frames\.width = 40: use 64"):
        check_frame_size(500, 40, 64)


def test_base_model_refuses_an_sd_size_it_cannot_take_before_any_work(tmp_path):
    sd = _write_sd_configs(tmp_path)
    cfg = ModelConfig(source="pretrained", pretrained=PretrainedModelConfig(sd_path=str(sd), clip_path=str(tmp_path)))
    assert model_size_multiple(cfg) == 64
    out = tmp_path / "models/pretrained"
    # No weights, no CLIP directory: the size check must come before anything is loaded.
    with pytest.raises(ValueError, match=r"frames\.width = 48: use 64"):
        build_base_model(cfg, tmp_path / "data/frames", out, height=64, width=48)
    assert not out.exists()


def test_base_model_refuses_a_tiny_size_before_pretraining(tmp_path):
    # 32 x 40 is a multiple of the tiny VAE's 4 (so the builder alone accepts it) but not of the model's 16.
    with pytest.raises(ValueError, match=r"frames\.width = 40: use 32 or 48"):
        build_base_model(ModelConfig(tiny=TEST_CFG), tmp_path / "data/frames", tmp_path / "out", height=32, width=40)


def test_stages_check_the_saved_model_before_loading(pipe, tmp_path, repo, monkeypatch):
    monkeypatch.setenv("DREAMPOSE_NO_MLFLOW", "1")
    pipe.save_pretrained(tmp_path / layout.PRETRAINED)
    pipe.save_pretrained(tmp_path / layout.BASE)
    pipe.save_pretrained(tmp_path / layout.SUBJECTS / "s0")
    save_subject(pipe, tmp_path / layout.SUBJECTS / "delta", tmp_path / layout.BASE, dtype="fp32")
    import yaml

    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["frames"].update(height=64, width=40)  # a multiple of 8, so the config accepts it
    params = parse_params(raw)
    # No manifests exist: without the check these fail later, on a missing file, or much later, in render.
    for run in (
        lambda: finetune_base.run(params, tmp_path),
        lambda: finetune_subject.run(params, tmp_path, "s0"),
        lambda: render.run(params, tmp_path, "s0"),
        lambda: render.run(params, tmp_path, "delta"),  # a subject stored as its delta: checked at its base
    ):
        with pytest.raises(ValueError, match=r"frames\.width = 40: use 32 or 48.*|multiples of 16"):
            run()
