"""Tiny seeded components for the training tests: a few thousand parameters, 16x16 images."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

H, W = 16, 16
POSE_CHANNELS = 10
CROSS_DIM = 16


class TinyAdapter(nn.Module):
    """CLIP patch tokens -> cross-attention tokens (the real adapter lives in dreampose.models)."""

    def __init__(self, clip_hidden: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(clip_hidden, dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden)


class TinyPipeline:
    """The components a DreamPosePipeline exposes, built small and seeded."""

    def __init__(self, seed: int = 0, prediction_type: str = "v_prediction") -> None:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        torch.manual_seed(seed)
        self.unet = UNet2DConditionModel(
            sample_size=H // 2,
            in_channels=4 + POSE_CHANNELS,
            out_channels=4,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=CROSS_DIM,
            attention_head_dim=4,
            norm_num_groups=8,
        )
        self.vae = AutoencoderKL(
            block_out_channels=(8, 16),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            norm_num_groups=8,
            layers_per_block=1,
        )
        clip = CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            image_size=H, patch_size=8, projection_dim=16,
        )  # fmt: skip
        self.image_encoder = CLIPVisionModelWithProjection(clip)
        self.adapter = TinyAdapter(16, CROSS_DIM)
        self.scheduler = DDPMScheduler(num_train_timesteps=100, prediction_type=prediction_type)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.image_encoder(pixel_values=pixels).last_hidden_state
        return self.adapter(hidden)


class TinyPairs(Dataset):
    """Pairs whose target colour is the input's colour and whose pose marks a square: learnable fast."""

    def __init__(self, n: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.colors = torch.rand(n, 3, 1, 1, generator=g) * 2 - 1
        self.offsets = torch.randint(0, H // 2, (n, 2), generator=g)

    def __len__(self) -> int:
        return len(self.colors)

    def __getitem__(self, i: int) -> dict:
        y, x = self.offsets[i].tolist()
        mask = torch.zeros(1, H, W)
        mask[:, y : y + H // 2, x : x + W // 2] = 1
        target = torch.where(mask.bool(), self.colors[i].expand(3, H, W), torch.full((3, H, W), -1.0))
        return {
            "input_pixels": self.colors[i].expand(3, H, W).clone(),
            "target_pixels": target,
            "poses": mask.expand(POSE_CHANNELS, H, W).clone(),
            "subject_id": f"s{i % 2}",
        }
