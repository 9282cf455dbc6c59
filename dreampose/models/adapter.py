"""Image conditioning: CLIP image tokens + the input image's VAE latent -> UNet cross-attention tokens.

DreamPose (paper §4.2) replaces Stable Diffusion's text tokens by an embedding of the input
photo. CLIP alone loses fine garment detail, so the adapter also reads the VAE latent of the
same photo: the latent is cut into ``patch_size x patch_size`` patches, one token each, with a
fixed 2-D sine-cosine position code. The token count therefore follows the latent size (no
resolution is baked in). The VAE tokens pass through a scalar gate initialised at zero, so at
initialisation the adapter emits the CLIP tokens followed by exact zeros and training starts
from CLIP-only conditioning.
"""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def sincos_position_embedding(height: int, width: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """Fixed 2-D sine-cosine position code ``(height * width, dim)``, rows in raster order.

    Half the channels encode the row, half the column (``dim`` must be a multiple of 4).
    """
    if dim % 4:
        raise ValueError(f"position embedding dim must be a multiple of 4, got {dim}")
    quarter = dim // 4
    freqs = torch.exp(-math.log(10000.0) * torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    ay = ys.reshape(-1, 1) * freqs
    ax = xs.reshape(-1, 1) * freqs
    emb = torch.cat([ay.sin(), ay.cos(), ax.sin(), ax.cos()], dim=1)
    return emb.to(dtype) if dtype is not None else emb


class ImagePoseAdapter(ModelMixin, ConfigMixin):
    """Map CLIP hidden states ``(B, N, clip_dim)`` and a VAE latent ``(B, C, h, w)`` to ``(B, L, D)``.

    ``L = N (+1 with image_embeds) + (h / p) * (w / p)``; ``D = cross_attention_dim``.

    Args:
        clip_dim: hidden size of the CLIP vision model (its ``last_hidden_state``).
        cross_attention_dim: the UNet's cross-attention width.
        latent_channels: VAE latent channels.
        patch_size: side of the latent patch that becomes one token.
        projection_dim: size of CLIP's ``image_embeds``; when set, the projected embedding is
            prepended as one extra global token.
    """

    @register_to_config
    def __init__(
        self,
        clip_dim: int = 768,
        cross_attention_dim: int = 768,
        latent_channels: int = 4,
        patch_size: int = 2,
        projection_dim: int | None = None,
    ):
        super().__init__()
        self.clip_norm = nn.LayerNorm(clip_dim)
        self.clip_proj = nn.Linear(clip_dim, cross_attention_dim)
        if clip_dim == cross_attention_dim:
            # Start as "normalised CLIP tokens", the closest thing to the text tokens SD was trained on.
            with torch.no_grad():
                self.clip_proj.weight.copy_(torch.eye(clip_dim))
                self.clip_proj.bias.zero_()
        self.embed_proj = nn.Linear(projection_dim, cross_attention_dim) if projection_dim else None
        self.vae_proj = nn.Linear(latent_channels * patch_size * patch_size, cross_attention_dim)
        self.vae_norm = nn.LayerNorm(cross_attention_dim)
        self.vae_mlp = nn.Sequential(
            nn.Linear(cross_attention_dim, 2 * cross_attention_dim),
            nn.GELU(),
            nn.Linear(2 * cross_attention_dim, cross_attention_dim),
        )
        # Zero gate: the VAE branch contributes nothing until training opens it.
        self.vae_gate = nn.Parameter(torch.zeros(1))

    def clip_tokens(self, clip_hidden_states: torch.Tensor, image_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """The CLIP-only part of the conditioning, ``(B, N (+1), D)``."""
        if clip_hidden_states.ndim != 3 or clip_hidden_states.shape[-1] != self.config.clip_dim:
            raise ValueError(
                f"clip_hidden_states has shape {tuple(clip_hidden_states.shape)}, "
                f"expected (B, N, {self.config.clip_dim})"
            )
        tokens = self.clip_proj(self.clip_norm(clip_hidden_states))
        if self.embed_proj is not None:
            if image_embeds is None:
                raise ValueError("image_embeds is required: this adapter was built with projection_dim set")
            tokens = torch.cat([self.embed_proj(image_embeds).unsqueeze(1), tokens], dim=1)
        return tokens

    def vae_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """One gated token per ``patch_size x patch_size`` latent patch, ``(B, h*w/p^2, D)``."""
        p = self.config.patch_size
        c = self.config.latent_channels
        if latents.ndim != 4 or latents.shape[1] != c or latents.shape[2] % p or latents.shape[3] % p:
            raise ValueError(
                f"latents has shape {tuple(latents.shape)}, expected (B, {c}, h, w) with h and w multiples of {p}"
            )
        b, _, h, w = latents.shape
        gh, gw = h // p, w // p
        patches = latents.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * p * p)
        x = self.vae_proj(patches)
        x = x + sincos_position_embedding(gh, gw, x.shape[-1], device=x.device, dtype=x.dtype)
        x = x + self.vae_mlp(self.vae_norm(x))
        return x * self.vae_gate.to(x.dtype)

    def forward(
        self,
        clip_hidden_states: torch.Tensor,
        latents: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        tokens = self.clip_tokens(clip_hidden_states, image_embeds)
        if latents is None:
            return tokens
        if latents.shape[0] != tokens.shape[0]:
            raise ValueError(
                f"latents batch {latents.shape[0]} does not match clip_hidden_states batch {tokens.shape[0]}"
            )
        return torch.cat([tokens, self.vae_tokens(latents)], dim=1)
