"""Build the base ``DreamPosePipeline``: a tiny model pre-trained here, or Stable Diffusion v1.x from disk.

``tiny`` builds small seeded components and pre-trains the VAE on the demo frames (the only
part that needs pixels before DreamPose training; the image encoder is trained jointly later).
``pretrained`` loads a local Stable Diffusion v1.x diffusers directory (``unet/``, ``vae/``,
``scheduler/``; the text encoder and tokenizer are not used) and a CLIP vision directory. Both
then widen ``conv_in`` for the pose channels and add an adapter whose VAE branch starts at zero.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler, UNet2DConditionModel
from tqdm.auto import tqdm
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from dreampose.config import ModelConfig, PretrainedModelConfig, TinyModelConfig
from dreampose.fsutil import recorded, replace_dir, staging_dir
from dreampose.models.adapter import ImagePoseAdapter
from dreampose.models.pipeline import DreamPosePipeline
from dreampose.models.sizes import check_frame_size, size_multiple
from dreampose.models.unet import expand_conv_in
from dreampose.models.vae import PatchedAutoencoderKL

log = logging.getLogger("dreampose.models")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Side of the latent patch the adapter turns into one token (both builders).
ADAPTER_PATCH = 2
# Sampler classes a Stable Diffusion v1.x ``scheduler/`` folder may name.
_SCHEDULER_CLASSES = {c.__name__: c for c in (PNDMScheduler, DDIMScheduler, DPMSolverMultistepScheduler)}


def sd_v1_scheduler(prediction_type: str) -> DDIMScheduler:
    """DDIM on Stable Diffusion v1.x's noise schedule (scaled-linear betas 0.00085 to 0.012, 1000 steps)."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def init_posterior_logvar(vae: AutoencoderKL, logvar: float) -> None:
    """Shift the bias of the log-variance half of ``vae.quant_conv`` (the posterior's moments) by ``logvar``.

    A fresh VAE's posterior has std ~1 while its means are ~0.1: the sampled latent is noise until training has
    shrunk the variance. At ``logvar`` < 0 the latent starts at std ``exp(logvar / 2)``."""
    if logvar == 0:
        return
    conv = vae.quant_conv
    if conv is None or conv.bias is None:
        raise ValueError("the VAE has no quant_conv bias to initialise the posterior's log-variance with")
    with torch.no_grad():
        conv.bias[vae.config.latent_channels :] += logvar


def build_tiny_components(
    cfg: TinyModelConfig,
    height: int,
    width: int,
    prediction_type: str = "v_prediction",
    seed: int = 0,
    pose_channels: int = 10,
    image_tokens: str = "clip_vae",
) -> dict[str, Any]:
    """Small seeded VAE / UNet / CLIP vision model / adapter / DDIM scheduler for ``height x width`` frames.

    The VAE downsamples by ``2 ** (len(vae_channels) - 1)`` into ``vae_latent_channels`` channels, folded
    ``vae_latent_patch`` x ``vae_latent_patch`` into channels (``models.vae``) where that is above 1; the UNet takes
    the folded latent's channels + ``pose_channels`` inputs. The posterior's log-variance starts at ``vae_logvar_init``.
    ``image_tokens`` (``clip_vae`` | ``clip``) is the adapter's; the weights do not depend on it.
    Returns the keyword arguments of ``DreamPosePipeline``.
    """
    n_vae = len(cfg.vae_channels)
    fold = cfg.vae_latent_patch
    factor = 2 ** (n_vae - 1) * fold
    if height % factor or width % factor:
        raise ValueError(f"frames {height}x{width} must be multiples of the tiny VAE's factor {factor}")
    groups = int(np.gcd.reduce([*cfg.vae_channels, *cfg.unet_channels, 8]))
    clip_size = (min(height, width) // cfg.clip_patch) * cfg.clip_patch
    if clip_size < cfg.clip_patch:
        raise ValueError(f"frames {height}x{width} are smaller than one CLIP patch ({cfg.clip_patch})")
    latent = cfg.vae_latent_channels * fold**2  # what the UNet and the adapter see (models/vae.py)
    vae_groups = cfg.vae_norm_groups or groups
    if any(c % vae_groups for c in cfg.vae_channels):
        raise ValueError(
            f"model.tiny.vae_norm_groups {vae_groups} must divide every vae_channels entry {cfg.vae_channels}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae_kwargs: dict[str, Any] = {"latent_patch": fold} if fold > 1 else {}
        vae = (PatchedAutoencoderKL if fold > 1 else AutoencoderKL)(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n_vae,
            up_block_types=("UpDecoderBlock2D",) * n_vae,
            block_out_channels=tuple(cfg.vae_channels),
            layers_per_block=1,
            latent_channels=cfg.vae_latent_channels,
            norm_num_groups=vae_groups,
            sample_size=max(height, width),
            mid_block_add_attention=cfg.vae_mid_attention,
            **vae_kwargs,
        )
        init_posterior_logvar(vae, cfg.vae_logvar_init)
        n_unet = len(cfg.unet_channels)
        heads = max(1, cfg.unet_channels[0] // 16)
        unet = UNet2DConditionModel(
            sample_size=(height // factor, width // factor),
            in_channels=latent,
            out_channels=latent,
            down_block_types=("CrossAttnDownBlock2D",) * (n_unet - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n_unet - 1),
            block_out_channels=tuple(cfg.unet_channels),
            layers_per_block=1,
            cross_attention_dim=cfg.cross_attention_dim,
            attention_head_dim=heads,
            norm_num_groups=groups,
        )
        expand_conv_in(unet, pose_channels)
        clip = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=cfg.clip_hidden,
                intermediate_size=2 * cfg.clip_hidden,
                projection_dim=cfg.clip_hidden,
                num_hidden_layers=cfg.clip_layers,
                num_attention_heads=max(1, cfg.clip_hidden // 16),
                image_size=clip_size,
                patch_size=cfg.clip_patch,
            )
        )
        adapter = ImagePoseAdapter(
            clip_dim=cfg.clip_hidden,
            cross_attention_dim=cfg.cross_attention_dim,
            latent_channels=latent,
            patch_size=ADAPTER_PATCH,
            image_tokens=image_tokens,
        )
    feature_extractor = CLIPImageProcessor(
        size={"shortest_edge": clip_size},
        crop_size={"height": clip_size, "width": clip_size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    scheduler = sd_v1_scheduler(prediction_type)
    for m in (vae, unet, clip, adapter):
        m.eval()  # what from_pretrained returns, so a built and a reloaded pipeline compute alike
    return {
        "vae": vae,
        "unet": unet,
        "adapter": adapter,
        "image_encoder": clip,
        "feature_extractor": feature_extractor,
        "scheduler": scheduler,
    }


def _is_local(path: str) -> bool:
    return path.startswith(("/", ".", "~")) or Path(path).exists()


def load_pretrained_components(
    cfg: PretrainedModelConfig,
    prediction_type: str = "epsilon",
    pose_channels: int = 10,
    image_tokens: str = "clip_vae",
) -> dict[str, Any]:
    """Stable Diffusion v1.x (diffusers layout) + CLIP vision model -> ``DreamPosePipeline`` keyword arguments.

    Only ``unet/``, ``vae/`` and ``scheduler/`` are read from ``cfg.sd_path``; ``text_encoder/`` and
    ``tokenizer/`` are ignored. ``conv_in`` is widened by ``pose_channels`` zero channels and a new
    adapter maps the CLIP hidden size to the UNet's cross-attention width.
    """
    for name, path in (("model.pretrained.sd_path", cfg.sd_path), ("model.pretrained.clip_path", cfg.clip_path)):
        if _is_local(path) and not Path(path).expanduser().is_dir():
            raise FileNotFoundError(f"{name}: no such directory {path}")
    sd = Path(cfg.sd_path).expanduser() if _is_local(cfg.sd_path) else cfg.sd_path
    if isinstance(sd, Path):
        for sub in ("model_index.json", "unet", "vae", "scheduler"):
            if not (sd / sub).exists():
                raise FileNotFoundError(f"model.pretrained.sd_path: {sd} has no {sub} (not a diffusers SD directory)")
    clip_path = str(Path(cfg.clip_path).expanduser()) if _is_local(cfg.clip_path) else cfg.clip_path
    unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(sd, subfolder="vae")
    sched_cfg = DDIMScheduler.load_config(sd, subfolder="scheduler")
    cls = _SCHEDULER_CLASSES.get(sched_cfg.get("_class_name", "PNDMScheduler"))
    if cls is None:
        raise ValueError(
            f"model.pretrained.sd_path: scheduler {sched_cfg.get('_class_name')!r} is not one of "
            f"{sorted(_SCHEDULER_CLASSES)}"
        )
    scheduler = cls.from_config(sched_cfg, prediction_type=prediction_type)
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(clip_path)
    feature_extractor = CLIPImageProcessor.from_pretrained(clip_path)
    expand_conv_in(unet, pose_channels)
    adapter = ImagePoseAdapter(
        clip_dim=image_encoder.config.hidden_size,
        cross_attention_dim=unet.config.cross_attention_dim,
        latent_channels=vae.config.latent_channels,
        patch_size=ADAPTER_PATCH,
        image_tokens=image_tokens,
    ).eval()
    return {
        "vae": vae,
        "unet": unet,
        "adapter": adapter,
        "image_encoder": image_encoder,
        "feature_extractor": feature_extractor,
        "scheduler": scheduler,
    }


def model_size_multiple(cfg: ModelConfig) -> int:
    """The size multiple of the model ``cfg`` builds, from configs only: the tiny model's channel lists, or the
    ``vae/`` and ``unet/`` ``config.json`` of ``cfg.pretrained.sd_path`` (read, not the weights)."""
    if cfg.source == "tiny":
        tiny = cfg.tiny
        return size_multiple(len(tiny.vae_channels), len(tiny.unet_channels), ADAPTER_PATCH, tiny.vae_latent_patch)
    sd = Path(cfg.pretrained.sd_path).expanduser() if _is_local(cfg.pretrained.sd_path) else cfg.pretrained.sd_path
    if isinstance(sd, Path) and not sd.is_dir():
        raise FileNotFoundError(f"model.pretrained.sd_path: no such directory {cfg.pretrained.sd_path}")
    vae = AutoencoderKL.load_config(sd, subfolder="vae")
    unet = UNet2DConditionModel.load_config(sd, subfolder="unet")
    return size_multiple(len(vae["block_out_channels"]), len(unet["block_out_channels"]), ADAPTER_PATCH)


# ----- tiny VAE pre-training -----------------------------------------------------------------------


def _ssim_torch(x: torch.Tensor, y: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Mean SSIM with a uniform window on images in [0, 1] (a cheap differentiable loss term)."""
    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = F.avg_pool2d(x, window, 1), F.avg_pool2d(y, window, 1)
    sxx = F.avg_pool2d(x * x, window, 1) - mu_x**2
    syy = F.avg_pool2d(y * y, window, 1) - mu_y**2
    sxy = F.avg_pool2d(x * y, window, 1) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).mean()


def gradient_l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the horizontal and vertical neighbour differences of ``x`` and ``y`` (B, C, H, W):
    an edge term, 0 for equal images and for images that differ by a constant, large for a blurred pattern."""
    dx = (x[..., :, 1:] - x[..., :, :-1]) - (y[..., :, 1:] - y[..., :, :-1])
    dy = (x[..., 1:, :] - x[..., :-1, :]) - (y[..., 1:, :] - y[..., :-1, :])
    return dx.abs().mean() + dy.abs().mean()


def load_frames(frames_index_path: Path, root: Path, split: str | None = None) -> torch.Tensor:
    """All frames listed in a frames index (``path`` relative to ``root``) as ``(N, 3, H, W)`` in [-1, 1]."""
    import pandas as pd
    from PIL import Image

    frames_index_path = Path(frames_index_path)
    if not frames_index_path.is_file():
        raise FileNotFoundError(f"no frames index at {frames_index_path} (run `dreampose frames` first)")
    df = pd.read_parquet(frames_index_path)
    if "path" not in df.columns:
        raise ValueError(f"{frames_index_path}: no 'path' column")
    if split is not None and "split" in df.columns:
        df = df[df["split"] == split]
    if df.empty:
        raise ValueError(f"{frames_index_path}: no frames" + (f" in split {split!r}" if split else ""))
    arrays = []
    for rel in df["path"]:
        p = Path(root) / rel
        if not p.is_file():
            raise FileNotFoundError(f"{frames_index_path}: listed frame {p} does not exist")
        with Image.open(p) as im:
            arrays.append(np.asarray(im.convert("RGB")))
    sizes = {a.shape for a in arrays}
    if len(sizes) != 1:
        raise ValueError(f"{frames_index_path}: frames differ in size {sorted(sizes)}")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x


#: Scores reconstructions against their targets, both float64 ``(N, H, W, 3)`` in [0, 1]: the caller's metric
#: (``dreampose.metrics.pixel.reconstruction_scores``); the model code does not score itself.
ReconstructionScore = Callable[[np.ndarray, np.ndarray], dict[str, float]]


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, frames: torch.Tensor, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``frames`` ``(N, 3, H, W)`` in [-1, 1] encoded (posterior mode) and decoded by ``vae``: the reconstructions
    and the frames, both float64 ``(N, H, W, 3)`` in [0, 1]."""
    vae.eval()
    recons = []
    for s in range(0, len(frames), batch_size):
        x = frames[s : s + batch_size]
        recons.append(vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1))
    pred = ((torch.cat(recons) + 1) / 2).permute(0, 2, 3, 1).double().numpy()
    target = ((frames + 1) / 2).permute(0, 2, 3, 1).double().numpy()
    return pred, target


def pretrain_tiny_vae(
    vae: AutoencoderKL,
    frames_index_path: Path,
    root: Path,
    steps: int,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    kl_weight: float = 1e-6,
    ssim_weight: float = 0.2,
    grad_weight: float = 0.0,
    score: ReconstructionScore | None = None,
) -> dict[str, float]:
    """Train ``vae`` to reconstruct the train-split frames (L1 + ``ssim_weight`` (1 - SSIM) + ``grad_weight``
    ``gradient_l1`` + a tiny KL).

    Afterwards ``scaling_factor`` is set to 1 / std of the latents (as Stable Diffusion's 0.18215 was
    chosen), so the diffusion model sees unit-variance latents. Returns ``score`` of the reconstructions of the
    held-out split (train split if there is none; nothing without ``score``), latent std and seconds.
    """
    frames_index_path = Path(frames_index_path)
    train = load_frames(frames_index_path, root, split="train")
    try:
        held = load_frames(frames_index_path, root, split="test")
    except ValueError:
        held = train
    held = held[:: max(1, len(held) // 128)]
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps), eta_min=lr * 0.1)
    t0 = time.perf_counter()
    vae.train()
    bar = tqdm(range(steps), desc="vae pretrain", disable=steps == 0)
    for _ in bar:
        idx = torch.randint(0, len(train), (batch_size,), generator=g)
        x = train[idx]
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)
        recon = vae.decode(z).sample
        loss = F.l1_loss(recon, x) + kl_weight * dist.kl().mean()
        if ssim_weight:
            loss = loss + ssim_weight * (1 - _ssim_torch((recon.clamp(-1, 1) + 1) / 2, (x + 1) / 2))
        if grad_weight:
            loss = loss + grad_weight * gradient_l1(recon, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        sample = train[torch.randperm(len(train), generator=g)[:256]]
        std = float(
            torch.cat([vae.encode(sample[s : s + 64]).latent_dist.mode() for s in range(0, len(sample), 64)]).std()
        )
    vae.register_to_config(scaling_factor=1.0 / max(std, 1e-6))
    metrics = dict(score(*reconstruct(vae, held))) if score is not None else {}
    metrics.update({"latent_std": std, "vae_pretrain_steps": steps, "vae_pretrain_seconds": time.perf_counter() - t0})
    print(
        f"vae pretrain: {steps} steps"
        + (f", recon L1 {metrics['recon_l1']:.4f}" if "recon_l1" in metrics else "")
        + (f" / SSIM {metrics['recon_ssim']:.4f}" if "recon_ssim" in metrics else "")
        + f", latent std {std:.3f}"
    )
    return metrics


# ----- the base model ------------------------------------------------------------------------------


def save_pipeline_atomic(pipe: DreamPosePipeline, out_dir: Path, extra_files: dict[str, str] | None = None) -> None:
    """``save_pretrained`` (+ ``extra_files``: name -> text) into a temp dir beside ``out_dir``, then swap it in,
    so ``out_dir`` is never a half-written model."""
    out_dir = Path(out_dir)
    tmp = staging_dir(out_dir)
    tmp.mkdir()
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build_base_model(
    cfg: ModelConfig,
    frames_dir: Path,
    out_dir: Path,
    seed: int = 0,
    height: int = 64,
    width: int = 48,
    root: Path | None = None,
    score: ReconstructionScore | None = None,
) -> dict[str, Any]:
    """Write the base ``DreamPosePipeline`` (expanded ``conv_in``, adapter with its VAE branch at zero) to ``out_dir``.

    ``tiny`` pre-trains the VAE on the frames listed in ``frames_dir / "index.parquet"`` (paths relative
    to ``root``, default ``frames_dir.parent.parent``, the workspace of ``data/frames``); ``score`` (the
    caller's metric) rates the pre-trained VAE's reconstructions of held-out frames, recorded in ``build.json``.
    Returns a summary.
    """
    # Before any work: a size the model cannot take would otherwise fail only at render time.
    check_frame_size(height, width, model_size_multiple(cfg), f"the {cfg.source} model (model.source)")
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"source": cfg.source, "prediction_type": cfg.prediction_type}
    if cfg.image_tokens != "clip_vae":  # only when set, so the default base model's build.json is unchanged
        summary["image_tokens"] = cfg.image_tokens
    if cfg.source == "tiny":
        comps = build_tiny_components(
            cfg.tiny, height, width, cfg.prediction_type, seed, cfg.pose_channels, cfg.image_tokens
        )
        frames_dir = Path(frames_dir)
        root = Path(root) if root is not None else frames_dir.parent.parent
        metrics = pretrain_tiny_vae(
            comps["vae"],
            frames_dir / "index.parquet",
            root,
            steps=cfg.tiny.vae_pretrain_steps,
            batch_size=cfg.tiny.vae_batch_size,
            lr=cfg.tiny.vae_lr,
            seed=seed,
            grad_weight=cfg.tiny.vae_grad_weight,
            score=score,
        )
        summary.update(metrics)
    else:
        comps = load_pretrained_components(cfg.pretrained, cfg.prediction_type, cfg.pose_channels, cfg.image_tokens)
    pipe = DreamPosePipeline(**comps)
    summary.update(
        {
            "unet_params": sum(p.numel() for p in pipe.unet.parameters()),
            "vae_params": sum(p.numel() for p in pipe.vae.parameters()),
            "image_encoder_params": sum(p.numel() for p in pipe.image_encoder.parameters()),
            "adapter_params": sum(p.numel() for p in pipe.adapter.parameters()),
            "unet_in_channels": int(pipe.unet.config.in_channels),
            "pose_channels": pipe.pose_channels,
            "height": height,
            "width": width,
            "seconds": time.perf_counter() - t0,
        }
    )
    save_pipeline_atomic(pipe, Path(out_dir), {"build.json": json.dumps(recorded(summary), indent=2, sort_keys=True)})
    return summary
