"""Image conditioning: CLIP image tokens + the input image's VAE latent -> UNet cross-attention tokens.

DreamPose (paper §4.2) replaces Stable Diffusion's text tokens by an embedding of the input
photo. CLIP alone loses fine garment detail, so the adapter also reads the VAE latent of the
same photo: the latent is cut into ``patch_size x patch_size`` patches, one token each, with a
fixed 2-D sine-cosine position code. The token count therefore follows the latent size (no
resolution is baked in). The VAE tokens leave through an output projection ``G`` (``vae_out``, a
``D x D`` linear layer) whose weights are initialised at zero: the paper's "the weights corresponding
to the VAE embeddings are set to zero", so training starts from the CLIP embeddings alone.

Why a zero *matrix* and not a zero scalar gate: under Adam every parameter moves by about ``lr`` per
step whatever its gradient's size, so a scalar gate can reach at most ``lr x steps`` (0.125 after the
paper's 25,000 steps at 5e-6: the VAE branch would stay nearly shut for the whole base finetune). Each
token of ``G x`` sums ``D`` entries that move together, so the branch opens about ``D`` times faster at
the same learning rate (measured in ``tests/models/test_adapter.py``).

Why the UNet attends to the two token groups separately
-------------------------------------------------------
Zero tokens are not "no tokens" in one softmax: with ``to_k`` without bias a zero token has key
0, logit 0, and still takes ``exp(0) / Z`` of the attention mass. At 640x512 there are 1,280 VAE
tokens beside ~50 CLIP tokens, so a plain concatenation would dilute the pretrained UNet's
attention to the CLIP tokens ~25x at initialisation. Masking the VAE tokens out of the softmax
is exact but never trains: a weight driven to exactly 0 through its logit has zero gradient
(``d softmax_j / d s_j = w_j (1 - w_j) = 0``), so the branch would stay shut.

So every cross-attention layer of the UNet is made a :class:`DecoupledImageAttention`
(IP-Adapter-style decoupled cross-attention with *shared* ``to_k`` / ``to_v``, so no new UNet
weights and the photo's VAE embedding still feeds the same cross-attention, as in the paper)::

    out = Attn(q, K(clip), V(clip))  +  W_out · Attn(q, K(G·x), V(G·x))

The first term is the layer's ordinary attention processor on the CLIP tokens alone. The second is
the VAE tokens' own softmax, projected by ``to_out`` without its bias. At ``G = 0`` its values
``to_v(0)`` are exactly 0 (SD's ``to_v`` has no bias), so the term is exactly 0 and the UNet output
is bit-for-bit the CLIP-only output. The values are linear in the tokens, so ``d out / d G`` (the
attention-weighted upstream gradient times ``x``) is not zero and training opens the branch.

The split point is the number of CLIP tokens, fixed by the image encoder
(:meth:`ImagePoseAdapter.num_clip_tokens`); sequences no longer than that are plain cross-attention.
The mechanism lives in the attention *module*, not in its processor: ``enable_attention_slicing``,
``fuse_qkv_projections``, ``set_default_attn_processor`` or any ``set_attn_processor`` swap the
processor that computes the CLIP term and keep the decoupling (and its exactness). Module classes are
not saved by ``save_pretrained``, so ``DreamPosePipeline.__init__`` installs it on every build and
load (:func:`install_image_attention`); training, LoRA and gradient checkpointing use that same UNet.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
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
        image_tokens: ``"clip_vae"`` (the paper's adapter: CLIP tokens + the photo's VAE-latent tokens) or
            ``"clip"`` (CLIP tokens only, the paper's "Ours_CLIP" ablation, Table 2). Saved in the adapter's
            config, so every user of the model (finetunes, render, score, catalog) conditions the same way.
            The VAE branch's weights exist either way (same state dict and seeded init); CLIP-only leaves
            them unused.
    """

    IMAGE_TOKENS = ("clip_vae", "clip")

    @register_to_config
    def __init__(
        self,
        clip_dim: int = 768,
        cross_attention_dim: int = 768,
        latent_channels: int = 4,
        patch_size: int = 2,
        projection_dim: int | None = None,
        image_tokens: str = "clip_vae",
    ):
        super().__init__()
        if image_tokens not in self.IMAGE_TOKENS:
            raise ValueError(f"image_tokens must be one of {self.IMAGE_TOKENS}, got {image_tokens!r}")
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
        # Zero output projection: the VAE branch contributes nothing until training opens it (exactly so in
        # the UNet, through DecoupledImageAttention), and it opens ~D times faster than a scalar gate would
        # (see the module docstring).
        self.vae_out = nn.Linear(cross_attention_dim, cross_attention_dim)
        nn.init.zeros_(self.vae_out.weight)
        nn.init.zeros_(self.vae_out.bias)

    def _fix_state_dict_keys_on_load(self, state_dict) -> None:
        """diffusers' hook for architecture changes: adapters saved with the earlier scalar gate ``vae_gate`` (tokens
        ``g * x``) load as the exactly equivalent projection ``vae_out = g * I`` with zero bias."""
        gate = state_dict.pop("vae_gate", None)
        if gate is not None and "vae_out.weight" not in state_dict:
            dim = self.config.cross_attention_dim
            eye = torch.eye(dim, dtype=gate.dtype, device=gate.device)
            state_dict["vae_out.weight"] = eye * gate.reshape(())
            state_dict["vae_out.bias"] = torch.zeros(dim, dtype=gate.dtype, device=gate.device)
        super()._fix_state_dict_keys_on_load(state_dict)

    @property
    def uses_vae_tokens(self) -> bool:
        """Whether the conditioning includes the photo's VAE-latent tokens (``image_tokens == "clip_vae"``)."""
        return self.config.image_tokens == "clip_vae"

    def num_clip_tokens(self, vision_config) -> int:
        """Length of the CLIP part of :meth:`forward`'s sequence for a CLIP vision model config.

        ``(image_size / patch_size)^2`` patch tokens + the class token (+ the global token with ``projection_dim``).
        """
        patches = (int(vision_config.image_size) // int(vision_config.patch_size)) ** 2
        return patches + 1 + (1 if self.embed_proj is not None else 0)

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
        """One token per ``patch_size x patch_size`` latent patch, through ``vae_out``: ``(B, h*w/p^2, D)``."""
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
        return self.vae_out(x)

    def forward(
        self,
        clip_hidden_states: torch.Tensor,
        latents: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``clip_tokens`` followed (with ``latents``) by the ``vae_tokens``: ``(B, N (+1) + h*w/p^2, D)``.

        A CLIP-only adapter (``image_tokens="clip"``) refuses ``latents`` rather than silently dropping them.
        """
        tokens = self.clip_tokens(clip_hidden_states, image_embeds)
        if latents is None:
            return tokens
        if not self.uses_vae_tokens:
            raise ValueError("this adapter is CLIP-only (image_tokens='clip'): pass latents=None")
        if latents.shape[0] != tokens.shape[0]:
            raise ValueError(
                f"latents batch {latents.shape[0]} does not match clip_hidden_states batch {tokens.shape[0]}"
            )
        return torch.cat([tokens, self.vae_tokens(latents)], dim=1)


class DecoupledImageAttention(Attention):
    """A cross-attention layer that attends to the CLIP tokens and to the VAE tokens in two softmaxes.

    Made from a diffusers ``Attention`` in place by :func:`decouple_cross_attention` (same parameters,
    same state-dict keys). ``encoder_hidden_states[:, :num_clip_tokens]`` go through the layer's
    processor as usual; the rest add ``W_out · softmax(q K^T / sqrt(d)) V`` (see the module docstring).
    """

    num_clip_tokens: int

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **cross_attention_kwargs,
    ) -> torch.Tensor:
        n = self.num_clip_tokens
        if encoder_hidden_states is None or encoder_hidden_states.shape[1] <= n:
            return super().forward(hidden_states, encoder_hidden_states, attention_mask, **cross_attention_kwargs)
        if attention_mask is not None:
            raise ValueError("an encoder attention mask is not supported with the adapter's image tokens")
        clip = encoder_hidden_states[:, :n].contiguous()
        image = encoder_hidden_states[:, n:].contiguous()
        out = super().forward(hidden_states, clip, None, **cross_attention_kwargs)
        return out + self.image_attention(hidden_states, image)

    def image_attention(self, hidden_states: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """``W_out · Attn(q, K(image_tokens), V(image_tokens))``: the VAE term, without ``to_out``'s bias."""
        if hidden_states.ndim != 3:
            raise ValueError(f"hidden_states has shape {tuple(hidden_states.shape)}, expected (B, L, C)")
        b = hidden_states.shape[0]
        query = self.to_q(hidden_states)
        key = self.to_k(image_tokens)
        value = self.to_v(image_tokens)
        head_dim = key.shape[-1] // self.heads
        q, k, v = (x.view(b, -1, self.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        att = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, scale=self.scale)
        att = att.transpose(1, 2).reshape(b, -1, self.heads * head_dim).to(query.dtype)
        # to_out[0] is affine (nn.Linear, or one wrapped by LoRA): f(a) - f(0) is its linear part, and is exactly
        # 0 when a is exactly 0 (f(0) is the bias, bit for bit, whatever the kernel).
        proj = self.to_out[0]
        return self.to_out[1](proj(att) - proj(att.new_zeros(1, 1, att.shape[-1])))


def _unsupported(attn: Attention) -> list[str]:
    """What stops ``attn`` from being decoupled exactly (empty for Stable Diffusion's cross-attention)."""
    value_proj = getattr(attn.to_v, "base_layer", attn.to_v)
    checks = {
        "to_v has a bias (zero tokens would not give zero values)": getattr(value_proj, "bias", None) is not None,
        "spatial_norm": attn.spatial_norm is not None,
        "group_norm": attn.group_norm is not None,
        "norm_cross": bool(attn.norm_cross),
        "norm_q / norm_k": attn.norm_q is not None or attn.norm_k is not None,
        "residual_connection": bool(attn.residual_connection),
        "rescale_output_factor != 1": attn.rescale_output_factor != 1.0,
        "added_kv_proj_dim": attn.added_kv_proj_dim is not None,
    }
    return [name for name, bad in checks.items() if bad]


def decouple_cross_attention(unet: nn.Module, num_clip_tokens: int) -> int:
    """Make every cross-attention layer of ``unet`` a :class:`DecoupledImageAttention` (in place; idempotent).

    Returns the number of layers. Raises if ``unet`` has none, or one that the decoupling cannot keep exact.
    """
    if int(num_clip_tokens) < 1:
        raise ValueError(f"num_clip_tokens must be >= 1, got {num_clip_tokens}")
    layers = [(name, m) for name, m in unet.named_modules() if isinstance(m, Attention) and m.is_cross_attention]
    if not layers:
        raise ValueError(f"{type(unet).__name__} has no cross-attention layer to decouple")
    for name, m in layers:
        bad = _unsupported(m)
        if bad:
            raise ValueError(f"cross-attention {name} cannot be decoupled exactly: {', '.join(bad)}")
        if type(m) is not Attention and not isinstance(m, DecoupledImageAttention):
            raise TypeError(f"cross-attention {name} is a {type(m).__name__}, expected a diffusers Attention")
    for _, m in layers:
        m.__class__ = DecoupledImageAttention
        m.num_clip_tokens = int(num_clip_tokens)
    return len(layers)


def install_image_attention(unet: nn.Module, adapter: ImagePoseAdapter, image_encoder: nn.Module) -> int:
    """Decouple ``unet``'s cross-attention at the CLIP token count of ``adapter`` + ``image_encoder``."""
    return decouple_cross_attention(unet, adapter.num_clip_tokens(image_encoder.config))
