"""Which frame sizes a DreamPose model can take, checked where the config and the model meet.

A frame's height and width must be multiples of the model's size multiple: the VAE's downsampling
times the least common multiple of the UNet's downsampling and the adapter's patch size (the same
formula as ``DreamPosePipeline.size_multiple``). For Stable Diffusion v1.x components that is
8 x lcm(8, 2) = 64; for the demo's tiny model 4 x lcm(4, 2) = 16. ``frames`` accepts any multiple
of 8, so the check runs in ``base_model`` before any work and again whenever a saved model is used.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def size_multiple(vae_blocks: int, unet_blocks: int, adapter_patch: int, latent_patch: int = 1) -> int:
    """``2 ** (vae_blocks - 1) * latent_patch * lcm(2 ** (unet_blocks - 1), adapter_patch)`` for block counts >= 1
    (``latent_patch``: the VAE's space-to-depth fold, ``models.vae``)."""
    if vae_blocks < 1 or unet_blocks < 1 or adapter_patch < 1 or latent_patch < 1:
        raise ValueError(
            "vae_blocks, unet_blocks, adapter_patch and latent_patch must be >= 1, got "
            f"{vae_blocks}, {unet_blocks}, {adapter_patch}, {latent_patch}"
        )
    return 2 ** (vae_blocks - 1) * latent_patch * math.lcm(2 ** (unet_blocks - 1), adapter_patch)


def latent_patch(vae_config: Mapping[str, Any]) -> int:
    """The space-to-depth fold of a VAE config (``models.vae.PatchedAutoencoderKL``, a diffusers ``FrozenDict`` or a
    ``config.json`` read as a dict); 1 where it has none."""
    return int(vae_config.get("latent_patch") or 1)


def vae_scale_factor(vae_config: Mapping[str, Any]) -> int:
    """Pixels per latent pixel along each side: the inner downsampling times the fold."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1) * latent_patch(vae_config)


def vae_latent_channels(vae_config: Mapping[str, Any]) -> int:
    """Channels of the latent the diffusion model sees: the inner latent's channels times the fold squared."""
    return int(vae_config["latent_channels"]) * latent_patch(vae_config) ** 2


def nearest_multiples(n: int, multiple: int) -> list[int]:
    """The positive multiples of ``multiple`` just below and above ``n`` (just ``n`` when it is one)."""
    lo, hi = (n // multiple) * multiple, -(-n // multiple) * multiple
    return sorted({m for m in (lo, hi) if m > 0})


def frame_size_error(height: int, width: int, multiple: int, model: str = "the model") -> str | None:
    """``None`` when ``height x width`` suits a model with ``multiple``; else the message naming the keys."""
    bad = [(k, v) for k, v in (("frames.height", height), ("frames.width", width)) if v % multiple]
    if not bad:
        return None
    fixes = "; ".join(f"{k} = {v}: use {' or '.join(map(str, nearest_multiples(v, multiple)))}" for k, v in bad)
    return (
        f"frames.height x frames.width = {height} x {width} cannot be used with {model}: both must be multiples "
        f"of {multiple} (VAE x UNet downsampling x adapter patch). {fixes}"
    )


def check_frame_size(height: int, width: int, multiple: int, model: str = "the model") -> None:
    """Raise ``ValueError`` (see :func:`frame_size_error`) unless both sides are multiples of ``multiple``."""
    msg = frame_size_error(height, width, multiple, model)
    if msg is not None:
        raise ValueError(msg)


def _read_config(model_dir: Path, sub: str) -> dict:
    path = Path(model_dir) / sub / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir}: no {sub}/config.json (not a DreamPose pipeline directory)")
    return json.loads(path.read_text())


def saved_size_multiple(model_dir: Path) -> int:
    """The size multiple of a ``save_pretrained`` DreamPose pipeline, read from its configs (no weights loaded)."""
    vae, unet, adapter = (_read_config(model_dir, s) for s in ("vae", "unet", "adapter"))
    return size_multiple(
        len(vae["block_out_channels"]),
        len(unet["block_out_channels"]),
        int(adapter["patch_size"]),
        latent_patch(vae),
    )


def check_saved_model_frame_size(model_dir: Path, height: int, width: int) -> None:
    """Check ``frames.height`` / ``frames.width`` against a saved pipeline folder; a directory without one is left
    to the loader (which has its own error for that). A subject directory is checked through its base:
    ``models.subject.check_subject_frame_size`` (kept there, so the base stages' code never reaches the subject
    format)."""
    model_dir = Path(model_dir)
    if not (model_dir / "model_index.json").is_file():
        return
    check_frame_size(height, width, saved_size_multiple(model_dir), f"the model at {model_dir}")
