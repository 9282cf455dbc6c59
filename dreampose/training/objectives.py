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

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dreampose.config import DropoutConfig
from dreampose.training.dropout import apply_dropout, sample_dropout_masks


def latent_poses(pipeline: Any, poses: torch.Tensor) -> torch.Tensor:
    """Pose channels on the latent grid, by the pipeline's own pooling so training matches inference."""
    from dreampose.models.pipeline import poses_to_latent

    return poses_to_latent(poses, pipeline.vae_scale_factor)


def sample_timesteps(
    batch: int, num_train_timesteps: int, sampling: str, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """``(batch,)`` training timesteps: ``uniform`` over ``[0, T)``, or ``cubic``, ``t = (1 - u^3) T`` for a uniform
    ``u`` (T2I-Adapter's schedule), which puts 79 % of the draws (``0.5 ** (1/3)``) in the noisier half, where the
    noisy latent says least about the target and the conditioning has to."""
    if sampling == "uniform":
        return torch.randint(0, num_train_timesteps, (batch,), generator=generator, device=device)
    if sampling != "cubic":
        raise ValueError(f"unknown timestep sampling {sampling!r} (uniform or cubic)")
    u = torch.rand((batch,), generator=generator, device=device)
    return ((1 - u**3) * num_train_timesteps).long().clamp(0, num_train_timesteps - 1)


class DiffusionObjective(nn.Module):
    """Diffusion loss of a ``DreamPosePipeline``'s UNet + adapter (+ image encoder); training timesteps drawn as
    ``timestep_sampling`` says (:func:`sample_timesteps`)."""

    def __init__(
        self, pipeline: Any, dropout: DropoutConfig, train_image_encoder: bool = False,
        timestep_sampling: str = "uniform",
    ) -> None:  # fmt: skip
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
        self.timestep_sampling = timestep_sampling
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
        return self._pipeline.encode_latents(pixels, sample=generator is not None, generator=generator)

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
        poses = latent_poses(self._pipeline, batch["poses"].to(noisy.dtype))
        tokens, poses = apply_dropout(tokens, poses, drop_image.to(tokens.device), drop_pose.to(poses.device))
        pred = self.unet(
            torch.cat([noisy, poses.to(noisy.dtype)], dim=1), timesteps, encoder_hidden_states=tokens
        ).sample
        return F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        b = batch["target_pixels"].shape[0]
        device = batch["target_pixels"].device
        drop_image, drop_pose = sample_dropout_masks(b, self.dropout, generator)
        num_t = self.noise_scheduler.config.num_train_timesteps
        t = sample_timesteps(b, num_t, self.timestep_sampling, generator, device)
        latent_shape = self._latent_shape(batch["target_pixels"])
        noise = torch.randn(latent_shape, generator=generator, device=device)
        return self.loss_terms(batch, noise, t, drop_image, drop_pose, latent_generator=generator).mean()

    def _latent_shape(self, pixels: torch.Tensor) -> tuple[int, ...]:
        b, _, h, w = pixels.shape
        f = self._pipeline.vae_scale_factor
        return (b, self._pipeline.latent_channels, h // f, w // f)


class DecoderObjective(nn.Module):
    """Phase 2 of the subject finetune: L1 between frames and their reconstruction; only the decoder learns."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        vae.requires_grad_(False)
        for m in self.trainable_modules().values():
            m.requires_grad_(True)

    def trainable_modules(self) -> dict[str, nn.Module]:
        mods = {"decoder": self.vae.decoder}
        if getattr(self.vae, "post_quant_conv", None) is not None:
            mods["post_quant_conv"] = self.vae.post_quant_conv
        return mods

    def enable_gradient_checkpointing(self) -> None:
        self.vae.enable_gradient_checkpointing()

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        pixels = batch["pixels"]
        with torch.no_grad():
            # The mode, not a sample: the decoder learns the map the pipeline's latents go through.
            z = self.vae.encode(pixels).latent_dist.mode()
        recon = self.vae.decode(z).sample
        return F.l1_loss(recon.float(), pixels.float())


#: Held-out noise is drawn in chunks of this many items, whatever the evaluation batch, so the value does not
#: depend on the batch size it was computed at.
NOISE_CHUNK = 16


def autocast_dtype(mixed_precision: str, device_type: str) -> torch.dtype | None:
    """The dtype training computes in (accelerate's autocast) for ``mixed_precision`` on ``device_type``:
    fp16 only on accelerators (accelerate runs fp16 on a CPU in fp32), bf16 anywhere, ``None`` for fp32."""
    if mixed_precision == "bf16":
        return torch.bfloat16
    if mixed_precision == "fp16" and device_type != "cpu":
        return torch.float16
    return None


def _heldout_noise(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """``(n, *shape)`` fixed noise, chunk ``c`` (items ``c .. c + NOISE_CHUNK``) drawn from seed ``seed + c``."""
    chunks = []
    for c in range(0, n, NOISE_CHUNK):
        g = torch.Generator().manual_seed(seed + c)
        chunks.append(torch.randn((min(NOISE_CHUNK, n - c), *shape), generator=g))
    return torch.cat(chunks)


@torch.no_grad()
def heldout_loss(
    objective: DiffusionObjective,
    dataset: Any,
    num_items: int = 32,
    timesteps_per_item: int = 4,
    seed: int = 0,
    batch_size: int = 16,
    dtype: torch.dtype | None = None,
) -> float:
    """Mean diffusion loss on fixed items, fixed noise and evenly spread timesteps, with full conditioning.

    The same call before and after training compares the model, not the draw. ``batch_size`` bounds the
    evaluation batch (the value does not depend on it); ``dtype`` runs the model under autocast to it (the
    training's mixed precision), else in the model's own dtype.
    """
    from dreampose.training.loop import load_batch

    n = min(num_items, len(dataset))
    if n == 0:
        raise ValueError("held-out set is empty")
    was_training = objective.training
    objective.eval()
    device = next(objective.unet.parameters()).device
    total_t = objective.noise_scheduler.config.num_train_timesteps
    ts = torch.linspace(0, total_t - 1, timesteps_per_item).round().long()
    items = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    cast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    losses = []
    for k, t in enumerate(ts.tolist()):
        noise_all = None
        for lo in range(0, n, batch_size):
            idx = items[lo : lo + batch_size]
            batch = {
                k2: v.to(device) if isinstance(v, torch.Tensor) else v for k2, v in load_batch(dataset, idx).items()
            }
            b = len(idx)
            if noise_all is None:
                shape = objective._latent_shape(batch["target_pixels"])[1:]
                noise_all = _heldout_noise(n, shape, seed * 1000 + k * 97)
            noise = noise_all[lo : lo + b].to(device)
            keep = torch.zeros(b, dtype=torch.bool, device=device)
            timesteps = torch.full((b,), t, dtype=torch.long, device=device)
            with cast:
                losses.append(objective.loss_terms(batch, noise, timesteps, keep, keep).float())
    objective.train(was_training)
    return float(torch.cat(losses).mean())
