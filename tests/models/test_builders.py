from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from PIL import Image
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from dreampose.config import ModelConfig, PretrainedModelConfig, TinyModelConfig, load_params
from dreampose.metrics.pixel import reconstruction_scores
from dreampose.models.builders import (
    build_base_model,
    build_tiny_components,
    gradient_l1,
    load_pretrained_components,
    pretrain_tiny_vae,
)
from dreampose.models.pipeline import DreamPosePipeline
from tests.models.conftest import TEST_CFG

SD_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.6.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def test_demo_tiny_model_matches_the_calibrated_size(repo):
    tiny = load_params(repo / "presets" / "demo.yaml").model.tiny
    comps = build_tiny_components(tiny, 64, 48, "v_prediction", seed=0)
    unet = comps["unet"]
    assert unet.config.in_channels == 14 and unet.config.cross_attention_dim == 64
    assert 1.3e6 < sum(p.numel() for p in unet.parameters()) < 1.7e6
    # the plain x4 VAE (no space-to-depth fold), so the demo's saved model_index.json names diffusers' class
    assert type(comps["vae"]) is AutoencoderKL and comps["vae"].config.block_out_channels == (16, 32, 64)
    assert comps["image_encoder"].config.hidden_size == 64 and comps["image_encoder"].config.patch_size == 8
    assert comps["scheduler"].config.prediction_type == "v_prediction"
    pipe = DreamPosePipeline(**comps)
    assert pipe.vae_scale_factor == 4 and pipe.latent_channels == 4  # latent 4 x 16 x 12 at 64 x 48


def test_tiny_components_are_seeded():
    a = build_tiny_components(TEST_CFG, 32, 32, seed=0)["unet"].state_dict()
    b = build_tiny_components(TEST_CFG, 32, 32, seed=0)["unet"].state_dict()
    c = build_tiny_components(TEST_CFG, 32, 32, seed=1)["unet"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(ValueError, match="multiples of the tiny VAE's factor 4"):
        build_tiny_components(TEST_CFG, 30, 32)


def test_vae_latent_channels_reach_the_unet_and_the_adapter():
    cfg = TEST_CFG.model_copy(update={"vae_latent_channels": 8})
    pipe = DreamPosePipeline(**build_tiny_components(cfg, 32, 32, "v_prediction", seed=0))
    assert pipe.latent_channels == 8 and pipe.pose_channels == 10
    assert pipe.unet.config.in_channels == 18 and pipe.unet.config.out_channels == 8
    assert pipe.adapter.config.latent_channels == 8
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    poses = torch.rand(2, 10, 32, 32, generator=torch.Generator().manual_seed(3))
    frames = pipe(image, poses, num_inference_steps=2, output_type="np").frames
    assert frames.shape == (2, 32, 32, 3) and np.isfinite(frames).all()


def test_vae_norm_groups_are_the_vaes_own():
    comps = build_tiny_components(TEST_CFG.model_copy(update={"vae_norm_groups": 1}), 32, 32, seed=0)
    vae_norms = [m.num_groups for m in comps["vae"].modules() if isinstance(m, torch.nn.GroupNorm)]
    unet_norms = {m.num_groups for m in comps["unet"].modules() if isinstance(m, torch.nn.GroupNorm)}
    assert vae_norms and set(vae_norms) == {1}
    assert unet_norms == {8}  # the UNet keeps the shared rule
    with pytest.raises(ValueError, match="vae_norm_groups 3 must divide"):
        build_tiny_components(TEST_CFG.model_copy(update={"vae_norm_groups": 3}), 32, 32)


def test_vae_logvar_init_starts_the_posterior_nearly_noise_free():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        default = build_tiny_components(TEST_CFG, 32, 32, seed=0)["vae"].encode(x).latent_dist
        cfg = TEST_CFG.model_copy(update={"vae_logvar_init": -6.0})
        low = build_tiny_components(cfg, 32, 32, seed=0)["vae"].encode(x).latent_dist
    assert default.std.mean() > 0.5  # a fresh VAE samples its latent at std ~1
    assert torch.allclose(low.std, default.std * np.exp(-3.0), rtol=1e-4)  # log-variance shifted by -6
    assert torch.equal(low.mean, default.mean)  # the means are untouched
    with pytest.raises(ValueError, match="less than or equal to 0"):
        TinyModelConfig(vae_logvar_init=1.0)


def _write_sd_layout(root: Path) -> tuple[Path, Path]:
    """A tiny Stable Diffusion v1.x diffusers directory and a tiny CLIP vision directory."""
    sd, clip = root / "sd", root / "clip"
    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=48,
        attention_head_dim=2,
        norm_num_groups=8,
    ).save_pretrained(sd / "unet")
    AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        scaling_factor=0.18215,
    ).save_pretrained(sd / "vae")
    PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    ).save_pretrained(sd / "scheduler")
    CLIPTextModel(
        CLIPTextConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99)
    ).save_pretrained(sd / "text_encoder")
    tok = sd / "tokenizer"
    tok.mkdir()
    (tok / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}))
    (tok / "merges.txt").write_text("#version: 0.2\n")
    (tok / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    (sd / "model_index.json").write_text(json.dumps(SD_MODEL_INDEX))
    CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            projection_dim=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
    ).save_pretrained(clip)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(clip)
    return sd, clip


def test_pretrained_path_loads_an_sd_v1_layout(tmp_path, monkeypatch):
    sd, clip = _write_sd_layout(tmp_path)

    def refuse(*a, **kw):
        raise AssertionError("the text encoder must not be loaded")

    monkeypatch.setattr(CLIPTextModel, "from_pretrained", refuse)
    comps = load_pretrained_components(PretrainedModelConfig(sd_path=str(sd), clip_path=str(clip)), "epsilon")
    base = UNet2DConditionModel.from_pretrained(sd / "unet")
    unet = comps["unet"]
    assert unet.config.in_channels == 14
    assert torch.equal(unet.conv_in.weight[:, :4], base.conv_in.weight)
    assert torch.equal(unet.conv_in.weight[:, 4:], torch.zeros_like(unet.conv_in.weight[:, 4:]))
    assert isinstance(comps["scheduler"], PNDMScheduler) and comps["scheduler"].config.prediction_type == "epsilon"
    assert comps["adapter"].config.clip_dim == 32 and comps["adapter"].config.cross_attention_dim == 48
    assert comps["vae"].config.scaling_factor == 0.18215
    pipe = DreamPosePipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(torch.zeros(3, 32, 32), torch.zeros(1, 10, 32, 32), num_inference_steps=1, output_type="np")
    assert out.frames.shape == (1, 32, 32, 3)


def test_pretrained_path_errors_name_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model\.pretrained\.sd_path: no such directory"):
        load_pretrained_components(PretrainedModelConfig(sd_path=str(tmp_path / "nope"), clip_path=str(tmp_path)))
    (tmp_path / "sd").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no model_index\.json"):
        load_pretrained_components(PretrainedModelConfig(sd_path=str(tmp_path / "sd"), clip_path=str(tmp_path)))


def _write_frames(root: Path, n_train: int = 12, n_test: int = 4) -> Path:
    """Frames in the ``data/frames`` layout with an index whose paths are relative to ``root``."""
    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            rel = Path("data/frames") / split / f"vid_{split}" / f"{i:05d}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            img = np.zeros((32, 32, 3), np.uint8)
            img[:] = rng.integers(40, 200, 3)
            img[8 + i % 4 : 24, 10:22] = rng.integers(0, 255, 3)
            Image.fromarray(img).save(root / rel, quality=95)
            rows.append(
                {"video": f"vid_{split}", "split": split, "frame": i, "path": str(rel), "width": 32, "height": 32}
            )
    pd.DataFrame(rows).to_parquet(root / "data/frames/index.parquet")
    return root / "data/frames"


def test_vae_pretraining_improves_reconstruction(tmp_path):
    frames = _write_frames(tmp_path)
    vae0 = build_tiny_components(TEST_CFG, 32, 32)["vae"]
    before = pretrain_tiny_vae(vae0, frames / "index.parquet", tmp_path, steps=0, score=reconstruction_scores)
    vae = build_tiny_components(TEST_CFG, 32, 32)["vae"]
    after = pretrain_tiny_vae(
        vae, frames / "index.parquet", tmp_path, steps=40, batch_size=4, lr=3e-3, score=reconstruction_scores
    )
    assert after["recon_l1"] < 0.7 * before["recon_l1"]
    assert after["recon_ssim"] > before["recon_ssim"]
    assert vae.config.scaling_factor == pytest.approx(1 / after["latent_std"])


def test_gradient_l1_sees_a_lost_pattern_not_a_colour_shift():
    checks = ((torch.arange(6)[:, None] + torch.arange(4)[None, :]) % 2).float().expand(1, 3, 6, 4)
    assert float(gradient_l1(checks, checks + 0.3)) == pytest.approx(0.0, abs=1e-6)  # same edges, other colour
    assert float(gradient_l1(checks, torch.full_like(checks, 0.5))) == pytest.approx(2.0)  # blurred: every edge lost
    assert float(gradient_l1(checks, 0.5 + 0.5 * checks)) == pytest.approx(1.0)  # half the contrast: half the term


def test_vae_pretraining_takes_the_edge_term(tmp_path):
    frames = _write_frames(tmp_path)
    runs = []
    for w in (0.0, 1.0):
        vae = build_tiny_components(TEST_CFG, 32, 32)["vae"]
        pretrain_tiny_vae(vae, frames / "index.parquet", tmp_path, steps=2, batch_size=2, grad_weight=w)
        runs.append(vae.decoder.conv_out.weight.detach().clone())
    assert not torch.equal(*runs)  # the term reaches the gradients


def test_build_base_model_writes_a_loadable_pipeline_atomically(tmp_path):
    frames = _write_frames(tmp_path)
    cfg = ModelConfig(tiny=TEST_CFG.model_copy(update={"vae_pretrain_steps": 2, "vae_batch_size": 2}))
    out = tmp_path / "models/pretrained"
    summary = build_base_model(
        cfg, frames, out, seed=0, height=32, width=32, root=tmp_path, score=reconstruction_scores
    )
    assert summary["unet_in_channels"] == 14 and summary["pose_channels"] == 10
    build = json.loads((out / "build.json").read_text())
    assert build["vae_pretrain_steps"] == 2
    assert build["recon_l1"] == summary["recon_l1"] and "recon_ssim" in build  # the caller's score, recorded
    # Wall-clock time goes to MLflow (the returned summary), not into the hashed output: equal builds, equal bytes.
    assert summary["seconds"] > 0 and summary["vae_pretrain_seconds"] > 0
    build_base_model(cfg, frames, tmp_path / "again", seed=0, height=32, width=32, root=tmp_path,
                     score=reconstruction_scores)  # fmt: skip
    assert (tmp_path / "again" / "build.json").read_bytes() == (out / "build.json").read_bytes()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["pretrained"]  # no temp dirs left
    pipe = DreamPosePipeline.from_pretrained(out)
    assert not pipe.adapter.vae_out.weight.any() and not pipe.adapter.vae_out.bias.any()
    assert pipe.vae.config.scaling_factor != 1.0


def test_build_base_model_fails_cleanly_without_frames(tmp_path):
    out = tmp_path / "models/pretrained"
    with pytest.raises(FileNotFoundError, match="no frames index"):
        build_base_model(ModelConfig(tiny=TEST_CFG), tmp_path / "data/frames", out, height=32, width=32)
    assert not out.exists()


def test_base_model_stage_from_the_cli(tmp_path, monkeypatch, repo):
    from dreampose.cli import main

    monkeypatch.setenv("DREAMPOSE_NO_MLFLOW", "1")
    _write_frames(tmp_path, n_train=4, n_test=2)
    params = (repo / "params.yaml").read_text()
    params, n = re.subn(r"vae_pretrain_steps: \d+", "vae_pretrain_steps: 1", params)
    assert n == 1  # the demo's pre-training would otherwise run here
    params = params.replace("frames:\n  height: 64\n  width: 48", "frames:\n  height: 32\n  width: 32")
    (tmp_path / "params.yaml").write_text(params)
    assert main(["--root", str(tmp_path), "base_model"]) == 0
    assert (tmp_path / "models/pretrained/model_index.json").is_file()
