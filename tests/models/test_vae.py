"""The space-to-depth VAE: the same autoencoder, its latent folded into channels, loadable as a pipeline part."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from dreampose.config import ModelConfig
from dreampose.models.builders import build_tiny_components, model_size_multiple
from dreampose.models.pipeline import DreamPosePipeline
from dreampose.models.sizes import latent_patch, saved_size_multiple, vae_latent_channels, vae_scale_factor
from dreampose.models.vae import PatchedAutoencoderKL
from tests.models.conftest import TEST_CFG

ARGS = {
    "block_out_channels": (8, 16),
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "latent_channels": 3,
    "norm_num_groups": 4,
    "sample_size": 16,
}


def _pair(p: int) -> tuple[AutoencoderKL, PatchedAutoencoderKL]:
    torch.manual_seed(0)
    plain = AutoencoderKL(**ARGS).eval()
    folded = PatchedAutoencoderKL(**ARGS, latent_patch=p).eval()
    folded.load_state_dict(plain.state_dict())  # the fold adds no weights
    return plain, folded


def _images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


@torch.no_grad()
def test_fold_of_one_is_the_plain_autoencoder():
    plain, folded = _pair(1)
    x = _images()
    a, b = plain.encode(x).latent_dist, folded.encode(x).latent_dist
    assert torch.equal(a.mean, b.mean) and torch.equal(a.logvar, b.logvar)
    assert torch.equal(plain.decode(a.mode()).sample, folded.decode(b.mode()).sample)


@torch.no_grad()
def test_the_latent_is_the_plain_latent_folded_into_channels():
    plain, folded = _pair(2)
    x = _images()
    inner, outer = plain.encode(x).latent_dist, folded.encode(x).latent_dist
    assert inner.mean.shape == (2, 3, 8, 8) and outer.mean.shape == (2, 12, 4, 4)
    # mean and log-variance are folded alike, so the posterior's statistics are the same numbers rearranged
    assert torch.equal(outer.mean, F.pixel_unshuffle(inner.mean, 2))
    assert torch.equal(outer.std, F.pixel_unshuffle(inner.std, 2))
    assert torch.allclose(outer.kl(), inner.kl())
    # decoding the folded latent is decoding the unfolded one: the round trip is the plain autoencoder's
    assert torch.equal(folded.decode(outer.mode()).sample, plain.decode(inner.mode()).sample)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 3, 8, 8, generator=g)
    assert torch.equal(folded.decode(F.pixel_unshuffle(z, 2)).sample, plain.decode(z).sample)


def test_a_fold_below_one_is_refused():
    with pytest.raises(ValueError, match="latent_patch must be >= 1"):
        PatchedAutoencoderKL(**ARGS, latent_patch=0)


def test_config_helpers_read_either_class_and_plain_dicts():
    plain, folded = _pair(2)
    assert (latent_patch(plain.config), vae_scale_factor(plain.config), vae_latent_channels(plain.config)) == (1, 2, 3)
    assert (latent_patch(folded.config), vae_scale_factor(folded.config), vae_latent_channels(folded.config)) == (
        2,
        4,
        12,
    )
    saved = {"block_out_channels": [8, 16, 32], "latent_channels": 4}  # a config.json without the key
    assert (vae_scale_factor(saved), vae_latent_channels(saved)) == (4, 4)


@torch.no_grad()
def test_the_pipeline_sees_the_folded_latent_and_reloads_the_class(tmp_path):
    cfg = TEST_CFG.model_copy(update={"vae_channels": (8, 16), "vae_latent_patch": 2})
    comps = build_tiny_components(cfg, 32, 32, seed=0)
    pipe = DreamPosePipeline(**comps)
    assert isinstance(pipe.vae, PatchedAutoencoderKL) and pipe.vae.config.latent_channels == 4
    # the UNet and the adapter take the folded channels on the grid of a x4 VAE
    assert pipe.vae_scale_factor == 4 and pipe.latent_channels == 16
    assert pipe.unet.config.in_channels == 16 + pipe.pose_channels
    assert tuple(pipe.unet.config.sample_size) == (8, 8)
    assert pipe.adapter.config.latent_channels == 16
    assert pipe.size_multiple == model_size_multiple(ModelConfig(tiny=cfg)) == 4 * 4  # x4 grid x UNet's x4
    pipe.save_pretrained(tmp_path / "m")
    assert saved_size_multiple(tmp_path / "m") == 16
    again = DreamPosePipeline.from_pretrained(tmp_path / "m")
    assert type(again.vae) is PatchedAutoencoderKL and again.vae.config.latent_patch == 2
    x = _images(1).repeat(1, 1, 2, 2)
    assert torch.equal(
        again.vae.decode(again.vae.encode(x).latent_dist.mode()).sample,
        pipe.vae.decode(pipe.vae.encode(x).latent_dist.mode()).sample,
    )


def test_the_tiny_builder_checks_the_frame_size_against_the_fold():
    cfg = TEST_CFG.model_copy(update={"vae_channels": (8, 16), "vae_latent_patch": 2})
    with pytest.raises(ValueError, match="factor 4"):
        build_tiny_components(cfg, 34, 32)
    plain = build_tiny_components(TEST_CFG, 32, 32)["vae"]
    assert type(plain) is AutoencoderKL  # no fold: the plain class, so such a model saves as before


def test_the_vae_mid_block_attention_can_be_left_out():
    with_attn = build_tiny_components(TEST_CFG, 32, 32)["vae"]
    without = build_tiny_components(TEST_CFG.model_copy(update={"vae_mid_attention": False}), 32, 32)["vae"]
    assert with_attn.encoder.mid_block.attentions[0] is not None
    assert without.encoder.mid_block.attentions[0] is None and without.decoder.mid_block.attentions[0] is None
    assert sum(p.numel() for p in without.parameters()) < sum(p.numel() for p in with_attn.parameters())
