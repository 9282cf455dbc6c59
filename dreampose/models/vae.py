"""A VAE whose latent is folded space-to-depth: fine detail kept, the diffusion model's grid unchanged.

``PatchedAutoencoderKL`` is diffusers' ``AutoencoderKL`` with one more config entry, ``latent_patch`` (p): the
inner autoencoder downsamples by ``2 ** (len(block_out_channels) - 1)`` into ``latent_channels`` channels, and
every p x p block of that latent is folded into channels (``pixel_unshuffle``) on the way out of ``encode`` and
unfolded before ``decode``. The diffusion model sees ``latent_channels * p * p`` channels on a grid p times
coarser: a x2 autoencoder with p = 2 gives the UNet the x4 grid of a three-level VAE, at the UNet's cost, but
keeps the detail a x2 autoencoder keeps. The posterior is folded as it is sampled (mean and log-variance alike),
so ``latent_dist.sample`` / ``mode`` / ``kl`` mean what they mean for the plain class.

With p = 1 it computes exactly what ``AutoencoderKL`` computes; the builders use the plain class then, so a
model without folding saves the same ``model_index.json`` as before. ``models.sizes.vae_scale_factor`` and
``vae_latent_channels`` read either class's config (and any other diffusers VAE's, where p is 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.configuration_utils import register_to_config

# diffusers' pipeline loader finds a component's loading method by looking up the base classes it knows (ModelMixin
# among them) by name in the component's module, so the name must be bound here for ``from_pretrained`` to load it.
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401


class PatchedAutoencoderKL(AutoencoderKL):
    """``AutoencoderKL`` with its latent folded ``latent_patch`` x ``latent_patch`` into channels (module docstring)."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 32,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float, ...] | None = None,
        latents_std: tuple[float, ...] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
        latent_patch: int = 2,
    ):
        if latent_patch < 1:
            raise ValueError(f"latent_patch must be >= 1, got {latent_patch}")
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=down_block_types,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            act_fn=act_fn,
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            sample_size=sample_size,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
            latents_mean=latents_mean,
            latents_std=latents_std,
            force_upcast=force_upcast,
            use_quant_conv=use_quant_conv,
            use_post_quant_conv=use_post_quant_conv,
            mid_block_add_attention=mid_block_add_attention,
        )

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        moments = super()._encode(x)
        p = self.config.latent_patch
        if p == 1:
            return moments
        mean, logvar = moments.chunk(2, dim=1)
        return torch.cat([F.pixel_unshuffle(mean, p), F.pixel_unshuffle(logvar, p)], dim=1)

    def _decode(self, z: torch.Tensor, return_dict: bool = True):
        p = self.config.latent_patch
        if p > 1:
            z = F.pixel_shuffle(z, p)
        return super()._decode(z, return_dict=return_dict)
