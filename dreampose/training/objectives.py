"""Training objectives: what the loop optimizes.

- :class:`DiffusionObjective` (base finetune, subject phase 1): the diffusion loss on the
  target frame's VAE latent, conditioned on the input image (adapter tokens from
  ``pipeline.encode_image``) and the pose window concatenated to the noisy latent; per-sample
  conditioning dropout with the pipeline's nulls. Target is ``noise`` (epsilon) or
  ``scheduler.get_velocity`` (v-prediction), as the pipeline's scheduler config says.
- :class:`DecoderObjective` (subject phase 2): L1 reconstruction through the frozen VAE encoder
  and the trainable decoder.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dreampose.config import DropoutConfig
from dreampose.training.dropout import apply_dropout, sample_dropout_masks


def latent_scale(vae: nn.Module) -> float:
    return float(getattr(vae.config, "scaling_factor", 0.18215))


def poses_to_latent(pipeline: Any, poses: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pose channels at latent resolution, by the pipeline's own resize so training matches inference."""
    fn = getattr(pipeline, "poses_to_latent", None)
    if fn is not None:
        return fn(poses, size)
    return F.interpolate(poses, size=size, mode="bilinear", align_corners=False, antialias=True)


class DiffusionObjective(nn.Module):
    """Diffusion loss of a ``DreamPosePipeline``'s UNet + adapter (+ image encoder)."""

    def __init__(self, pipeline: Any, dropout: DropoutConfig, train_image_encoder: bool = False) -> None:
        super().__init__()
        from diffusers import DDPMScheduler

        self.unet = pipeline.unet
        self.adapter = pipeline.adapter
        self.image_encoder = pipeline.image_encoder
        self.vae = pipeline.vae
        # Kept out of the module tree: the pipeline owns the same modules registered above.
        object.__setattr__(self, "_pipeline", pipeline)
        self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r} (epsilon or v_prediction)")
        self.dropout = dropout
        self.train_image_encoder = train_image_encoder
        self.vae.requires_grad_(False)
        self.unet.requires_grad_(True)
        self.adapter.requires_grad_(True)
        self.image_encoder.requires_grad_(train_image_encoder)

    def trainable_modules(self) -> dict[str, nn.Module]:
        mods = {"unet": self.unet, "adapter": self.adapter}
        if self.train_image_encoder:
            mods["image_encoder"] = self.image_encoder
        return mods

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()
        if self.train_image_encoder and hasattr(self.image_encoder, "gradient_checkpointing_enable"):
            self.image_encoder.gradient_checkpointing_enable()

    def train(self, mode: bool = True) -> DiffusionObjective:
        super().train(mode)
        self.vae.eval()  # frozen: keep it deterministic
        if not self.train_image_encoder:
            self.image_encoder.eval()
        return self

    @torch.no_grad()
    def encode_latents(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        z = dist.sample(generator=generator) if generator is not None else dist.mode()
        return z * latent_scale(self.vae)

    def loss_terms(
        self,
        batch: dict[str, torch.Tensor],
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        drop_image: torch.Tensor,
        drop_pose: torch.Tensor,
        latent_generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Per-sample MSE ``(B,)`` for given noise, timesteps and dropout (fixed inputs -> exact evaluation)."""
        latents = self.encode_latents(batch["target_pixels"], latent_generator)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        target = (
            noise if self.prediction_type == "epsilon" else self.noise_scheduler.get_velocity(latents, noise, timesteps)
        )
        tokens = self._pipeline.encode_image(batch["input_pixels"])
        poses = poses_to_latent(self._pipeline, batch["poses"].to(noisy.dtype), tuple(latents.shape[-2:]))
        tokens, poses = apply_dropout(tokens, poses, drop_image.to(tokens.device), drop_pose.to(poses.device))
        pred = self.unet(
            torch.cat([noisy, poses.to(noisy.dtype)], dim=1), timesteps, encoder_hidden_states=tokens
        ).sample
        return F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        b = batch["target_pixels"].shape[0]
        device = batch["target_pixels"].device
        drop_image, drop_pose = sample_dropout_masks(b, self.dropout, generator)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (b,), generator=generator, device=device)
        latent_shape = self._latent_shape(batch["target_pixels"])
        noise = torch.randn(latent_shape, generator=generator, device=device)
        return self.loss_terms(batch, noise, t, drop_image, drop_pose, latent_generator=generator).mean()

    def _latent_shape(self, pixels: torch.Tensor) -> tuple[int, ...]:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        b, _, h, w = pixels.shape
        return (b, self.vae.config.latent_channels, h // factor, w // factor)


class DecoderObjective(nn.Module):
    """Phase 2 of the subject finetune: L1 between frames and their reconstruction; only the decoder learns."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        vae.requires_grad_(False)
        self.vae.decoder.requires_grad_(True)
        self.vae.post_quant_conv.requires_grad_(True)

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"decoder": self.vae.decoder, "post_quant_conv": self.vae.post_quant_conv}

    def enable_gradient_checkpointing(self) -> None:
        self.vae.enable_gradient_checkpointing()

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        pixels = batch["pixels"]
        with torch.no_grad():
            # The mode, not a sample: the decoder learns the map the pipeline's latents go through.
            z = self.vae.encode(pixels).latent_dist.mode()
        recon = self.vae.decode(z).sample
        return F.l1_loss(recon.float(), pixels.float())
