"""Bytes per subject and per catalog item: a whole fp32 pipeline folder (before) vs the stored subject delta (after).

Measured at the demo's tiny size (params.yaml ``model.tiny``, 64x48; random-init weights of the real shapes, whose
bytes do not depend on training): the files ``save_pretrained`` and ``dreampose.models.subject.save_subject`` write.
Computed at Stable Diffusion v1.x size from the real architectures' parameter counts (SD v1.4 UNet with DreamPose's
widened ``conv_in``, SD VAE, CLIP ViT-B/32 vision model as in ``model.pretrained.clip_path``, the adapter), built
on the meta device: no download, no weights.

Also the cost of fp16 / bf16 storage on a demo-size render (DDIM 10, s_I 1, s_p 2 as params.yaml): the max abs
uint8 pixel difference against the fp32 full folder, 8 frames.

Where the bytes go, per subject: the DVC workspace (``models/subjects/<id>``) plus ``.dvc/cache`` (a copy before,
linked after: counted once) plus the MLflow run's artifact copy (``finetune_subject`` logs the subject directory).
Per catalog item: ``catalog/<item>/<run>/model`` plus the registered pyfunc model (the model folder before; after,
the subject delta, with the base logged once per content hash in the tracking store and referenced, so it is not
counted per item).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import emit

REPO = Path(__file__).resolve().parents[1]
MB = 1e6


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _demo_pipeline():
    from dreampose.config import load_params
    from dreampose.models.builders import build_tiny_components
    from dreampose.models.pipeline import DreamPosePipeline

    params = load_params(REPO / "params.yaml")
    m = params.model
    comps = build_tiny_components(m.tiny, params.frames.height, params.frames.width, m.prediction_type, 0,
                                  m.pose_channels, m.image_tokens)  # fmt: skip
    return params, DreamPosePipeline(**comps)


def _inputs(h: int, w: int, n: int = 8, pose_channels: int = 10):
    g = torch.Generator().manual_seed(0)
    photo = (torch.rand(3, h // 8, w // 8, generator=g) * 255).to(torch.uint8)
    photo = torch.nn.functional.interpolate(photo[None].float(), size=(h, w), mode="bilinear")[0]
    photo = photo.clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    poses = torch.zeros(n, pose_channels, h, w)
    for i in range(n):
        poses[i, :, 8 + i : h - 8 + i, 10 : w - 10] = torch.rand(pose_channels, 1, 1, generator=g)
    return photo, poses


def measured_demo() -> dict:
    from dreampose.models.pipeline import load_pipeline
    from dreampose.models.subject import load_subject_pipeline, save_subject
    from dreampose.render import render_frames

    params, pipe = _demo_pipeline()
    sub = params.train_subject
    image_encoder = sub.lora_rank == 0 and sub.unet.train_image_encoder
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pipe.save_pretrained(tmp / "base", safe_serialization=True)
        out["full_fp32_bytes"] = _dir_bytes(tmp / "base")
        for dtype in ("fp32", "fp16", "bf16"):
            save_subject(pipe, tmp / dtype, tmp / "base", dtype=dtype, decoder=True, image_encoder=image_encoder)
            out[f"delta_{dtype}_bytes"] = _dir_bytes(tmp / dtype)
        save_subject(pipe, tmp / "noclip", tmp / "base", dtype="fp16", decoder=True, image_encoder=False)
        out["delta_fp16_frozen_image_encoder_bytes"] = _dir_bytes(tmp / "noclip")
        # Render cost of the storage dtype, against the full fp32 folder.
        photo, poses = _inputs(params.frames.height, params.frames.width, pose_channels=params.model.pose_channels)
        ref_pipe = load_pipeline(tmp / "base")
        ref_pipe.set_progress_bar_config(disable=True)
        ref = render_frames(ref_pipe, photo, poses, params.render).astype(np.int16)
        for dtype in ("fp32", "fp16", "bf16"):
            p = load_subject_pipeline(tmp / dtype)
            p.set_progress_bar_config(disable=True)
            diff = np.abs(render_frames(p, photo, poses, params.render).astype(np.int16) - ref)
            out[f"render_{dtype}_vs_full_fp32"] = {
                "max_abs_uint8": int(diff.max()),
                "mean_abs_uint8": round(float(diff.mean()), 5),
                "pixels_changed": round(float((diff > 0).mean()), 5),
            }
    out["image_encoder_stored"] = image_encoder
    return out


def _sd_counts() -> dict[str, int]:
    """Parameter counts of the SD v1.x DreamPose components, built on the meta device."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from dreampose.models.adapter import ImagePoseAdapter
    from dreampose.models.builders import ADAPTER_PATCH

    with init_empty_weights():
        unet = UNet2DConditionModel(  # SD v1.4 unet/config.json, conv_in widened by 10 pose channels
            sample_size=64, in_channels=4 + 10, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )  # fmt: skip
        vae = AutoencoderKL(  # SD v1.4 vae/config.json
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
        )  # fmt: skip
        clip = CLIPVisionModelWithProjection(  # openai/clip-vit-base-patch32 vision tower
            CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                             image_size=224, patch_size=32, projection_dim=512)
        )  # fmt: skip
        adapter = ImagePoseAdapter(clip_dim=768, cross_attention_dim=768, latent_channels=4, patch_size=ADAPTER_PATCH)

    def n(module, prefix: tuple[str, ...] = ()) -> int:
        return sum(v.numel() for k, v in module.state_dict().items() if not prefix or k.startswith(prefix))

    from dreampose.models.lora import TARGET_MODULES

    lora_per_rank = sum(
        m.in_features + m.out_features
        for name, m in unet.named_modules()
        if isinstance(m, torch.nn.Linear) and name.endswith(tuple(f".{t}" for t in TARGET_MODULES))
    )
    return {
        "unet": n(unet),
        "vae": n(vae),
        "vae_decoder": n(vae, ("decoder.", "post_quant_conv.")),
        "image_encoder": n(clip),
        "adapter": n(adapter),
        "lora_params_per_rank": lora_per_rank,
    }


def computed_sd(lora_rank: int = 8) -> dict:
    c = _sd_counts()
    full = 4 * (c["unet"] + c["vae"] + c["image_encoder"] + c["adapter"])
    delta_fp16 = 2 * (c["unet"] + c["adapter"] + c["vae_decoder"])
    lora_fp16 = 2 * (lora_rank * c["lora_params_per_rank"] + c["adapter"] + c["vae_decoder"])
    lora_no_decoder = 2 * (lora_rank * c["lora_params_per_rank"] + c["adapter"])
    return {
        "params": c,
        "full_fp32_bytes": full,
        "delta_fp16_bytes": delta_fp16,
        f"lora_r{lora_rank}_fp16_bytes": lora_fp16,
        f"lora_r{lora_rank}_fp16_no_decoder_bytes": lora_no_decoder,
    }


def _mb(x: int) -> float:
    return round(x / MB, 3)


def main() -> None:
    demo = measured_demo()
    sd = computed_sd()
    full_demo, full_sd = demo["full_fp32_bytes"], sd["full_fp32_bytes"]
    demo_after = demo["delta_fp32_bytes"]  # params.yaml keeps fp32 (see the render check)
    sd_after = {"sd_computed_fp16": sd["delta_fp16_bytes"], "sd_computed_lora_r8_fp16": sd["lora_r8_fp16_bytes"]}

    # Per subject: the DVC workspace + .dvc/cache (a second copy before, linked after) + the MLflow run's copy.
    def per_subject(full: int, delta: int | None = None) -> float:
        return _mb(3 * full) if delta is None else _mb(2 * delta)

    # Per catalog item: the run directory's model + the registered pyfunc model's. After, both hold the delta; the
    # base is logged once per content hash and referenced, so it is amortized over the catalog, not counted per item.
    def per_item(full: int, delta: int | None = None) -> float:
        return _mb(2 * full) if delta is None else _mb(2 * delta)

    baseline = {
        "subject_dir_mb": {"demo_measured": _mb(full_demo), "sd_computed": _mb(full_sd)},
        "per_subject_disk_mb": {"demo_measured": per_subject(full_demo), "sd_computed": per_subject(full_sd)},
        "per_catalog_item_mb": {"demo_measured": per_item(full_demo), "sd_computed": per_item(full_sd)},
    }
    ours = {
        "subject_dir_mb": {
            "demo_measured_fp32": _mb(demo_after),
            "demo_measured_fp16": _mb(demo["delta_fp16_bytes"]),
            **{k: _mb(v) for k, v in sd_after.items()},
            "sd_computed_lora_r8_fp16_no_decoder": _mb(sd["lora_r8_fp16_no_decoder_bytes"]),
        },
        "per_subject_disk_mb": {
            "demo_measured": per_subject(full_demo, demo_after),
            **{k: per_subject(full_sd, v) for k, v in sd_after.items()},
        },
        "per_catalog_item_mb": {
            "demo_measured": per_item(full_demo, demo_after),
            **{k: per_item(full_sd, v) for k, v in sd_after.items()},
        },
    }
    config = {
        "demo": "params.yaml model.tiny at 64x48 (measured files)",
        "sd": "SD v1.4 UNet + VAE + CLIP ViT-B/32 + adapter (computed from parameter counts)",
        "sd_lora_rank": 8,
    }
    note = (
        "ratio: SD subject directory, full fp32 folder / fp16 delta (computed). per_subject_disk: workspace + "
        ".dvc/cache (a copy before, linked after) + the MLflow run's copy; per_catalog_item: run dir model + "
        "registered pyfunc model (after: the delta in both; the base is logged once per content hash and referenced)"
    )
    emit("storage_bytes_per_subject", config, baseline, ours, full_sd / sd["delta_fp16_bytes"], demo=demo, sd=sd,
         note=note)  # fmt: skip


if __name__ == "__main__":
    main()
