"""Render speed: ``DreamPosePipeline`` vs a naive reference, frames per second, same run, same sampler.

The reference is the straightforward loop: one frame at a time, the subject's conditioning
(CLIP + VAE encode + adapter) re-encoded for every frame, three separate UNet calls per step.
Ours encodes once per call, batches frames, and makes one UNet call per step on the stacked
guidance branches (dropping branches whose eq. 4 weight is zero). Both start from the same
noise, so ``max_abs_diff`` shows they render the same frames.

Models: the demo's tiny model at 64 x 48, and Stable Diffusion v1.x *architectures* (UNet, VAE,
CLIP ViT-B/32) with random weights at a reduced 192 x 128 and 2 steps (a CPU budget); speed does not
depend on the weights.
Run: ``python -m benchmarks.render`` (one JSON line per model).
"""

from __future__ import annotations

import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from benchmarks.common import emit
from dreampose.config import RenderConfig, TinyModelConfig
from dreampose.models.adapter import ImagePoseAdapter
from dreampose.models.builders import CLIP_MEAN, CLIP_STD, build_tiny_components, sd_v1_scheduler
from dreampose.models.guidance import dual_guidance
from dreampose.models.pipeline import DreamPosePipeline, null_image_tokens, null_pose
from dreampose.models.unet import expand_conv_in


def sd_components(height: int, width: int) -> dict:
    """Stable Diffusion v1.x UNet + VAE and a CLIP ViT-B/32 image encoder, random weights."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=(height // 8, width // 8), cross_attention_dim=768, attention_head_dim=8
    )  # the defaults are SD v1.x's blocks (320, 640, 1280, 1280)
    expand_conv_in(unet, 10)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    )
    clip = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=32,
            projection_dim=512,
        )
    )
    adapter = ImagePoseAdapter(clip_dim=768, cross_attention_dim=768, latent_channels=4)
    fe = CLIPImageProcessor(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    sched = sd_v1_scheduler("epsilon")
    for m in (unet, vae, clip, adapter):
        m.eval()
    return {
        "vae": vae,
        "unet": unet,
        "adapter": adapter,
        "image_encoder": clip,
        "feature_extractor": fe,
        "scheduler": sched,
    }


@torch.no_grad()
def naive_render(pipe: DreamPosePipeline, pixels, poses, noise, steps, s_i, s_p) -> torch.Tensor:
    """The reference loop: per frame, re-encode the subject and call the UNet once per guidance branch."""
    out = []
    for k in range(poses.shape[0]):
        tokens = pipe.encode_image(pixels)
        pose = pipe.prepare_poses(poses[k : k + 1], *pixels.shape[-2:])
        lat = noise[k : k + 1] * pipe.scheduler.init_noise_sigma
        pipe.scheduler.set_timesteps(steps)
        for t in pipe.scheduler.timesteps:
            x = pipe.scheduler.scale_model_input(lat, t)
            preds = [
                pipe.unet(torch.cat([x, p], 1), t, encoder_hidden_states=c).sample
                for c, p in ((null_image_tokens(tokens), null_pose(pose)), (tokens, null_pose(pose)), (tokens, pose))
            ]
            lat = pipe.scheduler.step(dual_guidance(torch.cat(preds), s_i, s_p), t, lat).prev_sample
        out.append(pipe.decode_latents(lat))
    return (torch.cat(out) + 1) / 2


def bench(
    name: str,
    pipe: DreamPosePipeline,
    height: int,
    width: int,
    frames: int,
    steps: int,
    repeat: int,
    s_i: float,
    s_p: float,
    extra_scales: tuple[float, float] | None = None,
) -> None:
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, 3, height, width, generator=g) * 2 - 1
    poses = torch.rand(frames, pipe.pose_channels, height, width, generator=g)
    noise = torch.randn(
        frames, pipe.latent_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor, generator=g
    )

    def ours(si, sp):
        return pipe(
            pixels,
            poses,
            num_inference_steps=steps,
            image_guidance_scale=si,
            pose_guidance_scale=sp,
            latents=noise,
            output_type="pt",
            frame_batch_size=frames,
        ).frames

    def best(fn):
        t, res = float("inf"), None
        for _ in range(repeat):
            t0 = time.perf_counter()
            res = fn()
            t = min(t, time.perf_counter() - t0)
        return t, res

    pipe(pixels, poses[:1], num_inference_steps=1, latents=noise[:1], output_type="pt")  # warm-up
    t_base, ref = best(lambda: naive_render(pipe, pixels, poses, noise, steps, s_i, s_p))
    t_ours, got = best(lambda: ours(s_i, s_p))
    n_branches = sum(w != 0 for w in (1 - s_i, s_i - s_p, s_p))
    extra = {}
    if extra_scales is not None:
        t_x, _ = best(lambda: ours(*extra_scales))
        nb = sum(w != 0 for w in (1 - extra_scales[0], extra_scales[0] - extra_scales[1], extra_scales[1]))
        extra["ours_at_demo_scales"] = {
            "image_guidance_scale": extra_scales[0],
            "pose_guidance_scale": extra_scales[1],
            "fps": round(frames / t_x, 3),
            "unet_evals_per_frame": nb * steps,
            "ratio": round(t_base / t_x, 3),
        }
    emit(
        f"render_{name}",
        {
            "model": name,
            "height": height,
            "width": width,
            "frames": frames,
            "scheduler": "ddim",
            "steps": steps,
            "image_guidance_scale": s_i,
            "pose_guidance_scale": s_p,
            "repeat": repeat,
            "goal_ratio": 1.25,
            "unet_params": sum(p.numel() for p in pipe.unet.parameters()),
        },
        {
            "what": "per frame: re-encode subject, 3 UNet calls/step, one frame at a time",
            "fps": round(frames / t_base, 3),
            "unet_evals_per_frame": 3 * steps,
            "unet_calls_per_frame": 3 * steps,
        },
        {
            "what": "DreamPosePipeline: encode once, frames batched, 1 UNet call/step on stacked branches",
            "fps": round(frames / t_ours, 3),
            "unet_evals_per_frame": n_branches * steps,
            "unet_calls_per_frame": round(steps / frames, 3),
        },
        t_base / t_ours,
        max_abs_diff=float((got - ref).abs().max()),
        **extra,
    )


def main() -> None:
    demo = RenderConfig()
    tiny = DreamPosePipeline(**build_tiny_components(TinyModelConfig(), 64, 48, "v_prediction", seed=0))
    bench(
        "tiny",
        tiny,
        64,
        48,
        frames=16,
        steps=demo.num_inference_steps,
        repeat=3,
        s_i=1.5,
        s_p=2.0,
        extra_scales=(demo.image_guidance_scale, demo.pose_guidance_scale),
    )
    del tiny
    sd = DreamPosePipeline(**sd_components(192, 128))
    bench("sd_v1_arch", sd, 192, 128, frames=2, steps=2, repeat=1, s_i=1.5, s_p=2.0)


if __name__ == "__main__":
    main()
