"""Tiny seeded DreamPose components shared by the model tests (32 x 32 frames, CPU, milliseconds per call)."""

from __future__ import annotations

import pytest
import torch

from dreampose.config import TinyModelConfig
from dreampose.models.builders import build_tiny_components
from dreampose.models.pipeline import DreamPosePipeline

H, W = 32, 32
# Narrower than the demo model: the tests check invariants, not quality.
TEST_CFG = TinyModelConfig(
    vae_channels=(8, 16, 32), unet_channels=(16, 32, 32), cross_attention_dim=32, clip_hidden=32, clip_layers=1
)


@pytest.fixture
def tiny_components() -> dict:
    return build_tiny_components(TEST_CFG, H, W, prediction_type="v_prediction", seed=0)


def open_vae_tokens(adapter, scale: float = 0.5) -> None:
    """Set the adapter's zero-initialised VAE output projection to ``scale`` x identity (tokens = scale * x)."""
    with torch.no_grad():
        adapter.vae_out.weight.copy_(scale * torch.eye(adapter.vae_out.weight.shape[0]))
        adapter.vae_out.bias.zero_()


def open_conditioning(p: DreamPosePipeline) -> DreamPosePipeline:
    """Random init leaves the new pose weights and the adapter's VAE output projection at zero; open them so that
    pose and VAE tokens actually influence the output in the tests that look for it."""
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        w = p.unet.conv_in.weight
        w[:, 4:] = torch.randn(w[:, 4:].shape, generator=g) * 0.1
    open_vae_tokens(p.adapter)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture
def pipe(tiny_components) -> DreamPosePipeline:
    return open_conditioning(DreamPosePipeline(**tiny_components))


@pytest.fixture
def image() -> torch.Tensor:
    return torch.rand(3, H, W, generator=torch.Generator().manual_seed(2)) * 2 - 1


@pytest.fixture
def poses() -> torch.Tensor:
    return torch.rand(5, 10, H, W, generator=torch.Generator().manual_seed(3))
