"""GPU check: render speed at the paper's size, a training step's peak memory, and the rehearsal on the GPU.

1. ``render_gpu_paper_vs_ours``: Stable Diffusion v1.x-shaped UNet / VAE / CLIP ViT-B/32 with random
   weights (``benchmarks.render.sd_components``; speed does not depend on the weights) at 640 x 512.
   paper = the paper's recipe as in ``benchmarks.recipe``: PNDM 100 steps, three guidance branches as
   separate UNet calls, conditioning per frame, one frame at a time, fp32 (s_I, s_p of ``presets/paper.yaml``).
   ours = the demo recipe (``params.yaml: render``: DDIM 10, s_I = 1 so two branches in one UNet call,
   frames batched) through ``dreampose.render.render_frames`` at fp16 (``runtime.dtype: fp16``).
   Paper and ours alternate ``pairs`` times on the same inputs; the ratio is the median of the per-pair
   ratios of seconds per frame.
2. ``train_step_gpu_peak_memory``: one training step (``DiffusionObjective`` forward + backward + fused
   AdamW step, through accelerate with ``mixed_precision=fp16``) at 640 x 512, batch 1, with gradient
   checkpointing (ours) and without (baseline); ``torch.cuda.max_memory_allocated`` of each, weights and
   optimizer state included.
3. ``rehearsal_gpu`` (only with ``--rehearsal``): ``pytest tests/rehearsal -q`` with ``DREAMPOSE_DEVICE=cuda``,
   so every params file the rehearsal reads sends its model stages to the GPU.

``--dry-run`` runs 1 and 2 on the CPU at a tiny size (64 x 48, 2 paper steps, the demo's tiny model)
to check the code; its numbers mean nothing. Without CUDA and without ``--dry-run`` it prints one
``unavailable`` line (exit 0, for ``run_all``), or with ``--require-cuda`` one error line (exit 1).
Run: ``python -m benchmarks.gpu [--dry-run] [--rehearsal] [--require-cuda] [--out results.jsonl]``;
``benchmarks/gpu_check.sh`` runs all three on a CUDA machine and appends to ``benchmarks/results.jsonl``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import emit
from dreampose.config import DEVICE_ENV, RenderConfig, load_params

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Size:
    model: str  # "sd_v1" | "tiny"
    height: int
    width: int
    paper_steps: int
    ours_frames: int  # frames per "ours" call (batched)
    pairs: int


FULL = Size("sd_v1", 640, 512, 100, 8, 3)
DRY = Size("tiny", 32, 32, 1, 1, 1)


def no_cuda_line() -> str:
    return (
        f"gpu check: CUDA is not available (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
        "run on a CUDA machine, or use --dry-run for the tiny CPU check"
    )


def recipes() -> tuple[RenderConfig, RenderConfig]:
    """(paper, ours) render settings from the presets (the device override plays no part here)."""
    paper = load_params(REPO / "presets" / "paper.yaml").render
    ours = load_params(REPO / "params.yaml").render
    return paper, ours


_CPU_BUILT: dict[Size, Any] = {}


def build_pipeline(size: Size, device: torch.device):
    """A fresh random-weight pipeline on ``device`` (on the CPU, copies of one build: building is the slow part)."""
    from dreampose.models.pipeline import DreamPosePipeline

    if device.type == "cpu" and size in _CPU_BUILT:
        return copy.deepcopy(_CPU_BUILT[size])
    with torch.device(device):  # random init directly on the device (SD-sized init on a CPU takes a while)
        if size.model == "tiny":
            from dreampose.config import TinyModelConfig
            from dreampose.models.builders import build_tiny_components

            tiny = TinyModelConfig(
                vae_channels=(8, 16),
                unet_channels=(16, 32),
                cross_attention_dim=16,
                clip_hidden=16,
                clip_layers=1,
                clip_patch=8,
            )
            comps = build_tiny_components(tiny, size.height, size.width, "epsilon", 0, 10)
        else:
            from benchmarks.render import sd_components

            comps = sd_components(size.height, size.width)
    pipe = DreamPosePipeline(**comps).to(device)
    pipe.set_progress_bar_config(disable=True)
    if device.type == "cpu":
        _CPU_BUILT[size] = copy.deepcopy(pipe)
    return pipe


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def render_check(size: Size, device: torch.device, half: torch.dtype) -> dict[str, Any]:
    """Paired paper-vs-ours render timings (seconds per frame) on ``device``."""
    from benchmarks.render import naive_render
    from dreampose.render import render_frames
    from dreampose.runtime import Runtime, place_pipeline

    paper_cfg, ours_cfg = recipes()
    ours_cfg = ours_cfg.model_copy(update={"frame_batch_size": size.ours_frames})
    if size is DRY:
        ours_cfg = ours_cfg.model_copy(update={"num_inference_steps": 1})
    fp32 = build_pipeline(size, device)
    ours_pipe = place_pipeline(
        type(fp32)(**{k: copy.deepcopy(v) for k, v in fp32.components.items()}), Runtime(device, half)
    )
    ours_pipe.set_progress_bar_config(disable=True)
    fp32.set_scheduler(paper_cfg.scheduler)
    g = torch.Generator().manual_seed(0)
    h, w = size.height, size.width
    image = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
    pixels = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1).to(device)
    poses = torch.rand(size.ours_frames, fp32.pose_channels, h, w, generator=g)
    f = fp32.vae_scale_factor
    noise = torch.randn(1, fp32.latent_channels, h // f, w // f, generator=g).to(device)

    def paper() -> float:
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = naive_render(
                fp32,
                pixels,
                poses[:1].to(device),
                noise,
                size.paper_steps,
                paper_cfg.image_guidance_scale,
                paper_cfg.pose_guidance_scale,
            )
        out.cpu()
        return time.perf_counter() - t0  # one frame

    def ours() -> float:
        cfg = ours_cfg.model_copy(update={"seed": 0})
        _sync(device)
        t0 = time.perf_counter()
        render_frames(ours_pipe, image, poses, cfg)
        return (time.perf_counter() - t0) / len(poses)

    # warm-up (kernels, cuDNN autotune) at one step each
    with torch.no_grad():
        naive_render(fp32, pixels, poses[:1].to(device), noise, 1, 1.5, 1.0).cpu()
    render_frames(ours_pipe, image, poses[:1], ours_cfg.model_copy(update={"num_inference_steps": 1}))
    pairs = []
    for _ in range(size.pairs):
        p, o = paper(), ours()
        pairs.append((p, o))
    ratios = [p / o for p, o in pairs]
    return {
        "paper": {
            "what": "PNDM, 3 UNet calls/step, conditioning per frame, one frame at a time, fp32",
            "scheduler": paper_cfg.scheduler,
            "steps": size.paper_steps,
            "image_guidance_scale": paper_cfg.image_guidance_scale,
            "pose_guidance_scale": paper_cfg.pose_guidance_scale,
            "seconds_per_frame": round(statistics.median(p for p, _ in pairs), 4),
            "seconds_per_frame_all": [round(p, 4) for p, _ in pairs],
        },
        "ours": {
            "what": f"render_frames: {ours_cfg.scheduler} {ours_cfg.num_inference_steps}, encode once, "
            f"{size.ours_frames} frames batched, stacked branches, {str(half).replace('torch.', '')}",
            "scheduler": ours_cfg.scheduler,
            "steps": ours_cfg.num_inference_steps,
            "image_guidance_scale": ours_cfg.image_guidance_scale,
            "pose_guidance_scale": ours_cfg.pose_guidance_scale,
            "seconds_per_frame": round(statistics.median(o for _, o in pairs), 4),
            "seconds_per_frame_all": [round(o, 4) for _, o in pairs],
        },
        "ratios": [round(r, 3) for r in ratios],
        "ratio": statistics.median(ratios),
    }


def train_step_memory(size: Size, device: torch.device, checkpointing: bool) -> dict[str, Any]:
    """Peak memory (MiB) and time of one training step through accelerate, batch 1 at ``size``."""
    from dreampose.config import DropoutConfig, TrainConfig
    from dreampose.training.loop import build_optimizer, make_accelerator
    from dreampose.training.objectives import DiffusionObjective

    cuda = device.type == "cuda"
    accelerator = make_accelerator("fp16" if cuda else "no", cpu=not cuda)
    pipe = build_pipeline(size, device)
    obj = DiffusionObjective(pipe, DropoutConfig(), train_image_encoder=False)
    if checkpointing:
        obj.enable_gradient_checkpointing()
    params = [p for m in obj.trainable_modules().values() for p in m.parameters() if p.requires_grad]
    obj.to(accelerator.device)
    opt = build_optimizer(params, TrainConfig(lr=1e-5))
    model, opt = accelerator.prepare(obj, opt)
    model.train()
    g = torch.Generator().manual_seed(0)
    h, w = size.height, size.width
    batch = {
        "input_pixels": torch.rand(1, 3, h, w, generator=g) * 2 - 1,
        "target_pixels": torch.rand(1, 3, h, w, generator=g) * 2 - 1,
        "poses": torch.rand(1, pipe.pose_channels, h, w, generator=g) * 2 - 1,
    }
    batch = {k: v.to(accelerator.device) for k, v in batch.items()}

    def step(seed: int) -> float:
        _sync(device)
        t0 = time.perf_counter()
        loss = model(batch, torch.Generator(accelerator.device).manual_seed(seed))
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - t0

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t_first = step(0)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    t_second = step(1)
    out = {
        "gradient_checkpointing": checkpointing,
        "mixed_precision": "fp16" if cuda else "no",
        "peak_mb": None if peak is None else round(peak, 1),
        "step_s": round(t_second, 4),
        "first_step_s": round(t_first, 4),
        "trainable_params_m": round(sum(p.numel() for p in params) / 1e6, 1),
    }
    return out


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def rehearsal(timeout_s: int) -> dict[str, Any]:
    """``pytest tests/rehearsal -q`` with every params file's ``runtime.device`` set to ``cuda``."""
    path = REPO / "tests" / "rehearsal"
    if not path.is_dir():
        return {"status": "unavailable", "reason": f"{path.relative_to(REPO)} does not exist"}
    env = {**os.environ, DEVICE_ENV: "cuda"}
    t0 = time.perf_counter()
    try:
        res = subprocess.run(
            [sys.executable, "-m", "pytest", str(path), "-q"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {timeout_s} s", "seconds": timeout_s}
    tail = (res.stdout + res.stderr).strip().splitlines()
    return {
        "status": "passed" if res.returncode == 0 else "failed",
        "returncode": res.returncode,
        "summary": tail[-1] if tail else "",
        "seconds": round(time.perf_counter() - t0, 1),
        "env": {DEVICE_ENV: "cuda"},
    }


def run(size: Size, device: torch.device, do_rehearsal: bool, rehearsal_timeout: int) -> list[dict[str, Any]]:
    records = []
    half = torch.float16 if device.type == "cuda" else torch.bfloat16
    t0 = time.perf_counter()
    r = render_check(size, device, half)
    config = {
        "model": size.model,
        "height": size.height,
        "width": size.width,
        "pairs": size.pairs,
        "frames_per_ours_call": size.ours_frames,
        "weights": "random (SD v1.x shapes)" if size.model == "sd_v1" else "random (demo tiny model)",
        "dry_run": size is DRY,
    }
    records.append(
        emit(
            "render_gpu_paper_vs_ours",
            config,
            r["paper"],
            r["ours"],
            r["ratio"],
            ratios=r["ratios"],
            ratio_statistic="median of paired (paper s/frame) / (ours s/frame)",
            wall_s=round(time.perf_counter() - t0, 1),
        )
    )
    t0 = time.perf_counter()
    _free(device)
    without = train_step_memory(size, device, checkpointing=False)
    _free(device)
    with_ckpt = train_step_memory(size, device, checkpointing=True)
    ratio = without["peak_mb"] / with_ckpt["peak_mb"] if with_ckpt["peak_mb"] else None
    records.append(
        emit(
            "train_step_gpu_peak_memory",
            {**config, "batch_size": 1, "optimizer": "adamw (fused)", "train_image_encoder": False},
            without,
            with_ckpt,
            ratio,
            memory_measure="torch.cuda.max_memory_allocated (weights + optimizer state + step)"
            if device.type == "cuda"
            else "none on CPU (dry run)",
            wall_s=round(time.perf_counter() - t0, 1),
        )
    )
    if do_rehearsal:
        t0 = time.perf_counter()
        reh = rehearsal(rehearsal_timeout)
        records.append(
            emit(
                "rehearsal_gpu",
                {"command": "pytest tests/rehearsal -q", "env": {DEVICE_ENV: "cuda"}},
                {},
                reh,
                None,
                wall_s=round(time.perf_counter() - t0, 1),
            )
        )
    return records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks the code, not the GPU")
    ap.add_argument("--rehearsal", action="store_true", help=f"also run pytest tests/rehearsal with {DEVICE_ENV}=cuda")
    ap.add_argument("--rehearsal-timeout", type=int, default=240)
    ap.add_argument("--require-cuda", action="store_true", help="without CUDA: one error line and exit 1")
    ap.add_argument("--out", type=Path, help="append the JSON lines to this file too")
    args = ap.parse_args(argv)
    if args.dry_run:
        size, device = DRY, torch.device("cpu")
    elif torch.cuda.is_available():
        size, device = FULL, torch.device("cuda")
    elif args.require_cuda:
        print(no_cuda_line(), file=sys.stderr)
        return 1
    else:
        emit(
            "render_gpu_paper_vs_ours",
            {},
            {"status": "unavailable"},
            {"status": "unavailable"},
            None,
            reason=no_cuda_line(),
        )
        return 0
    records = run(size, device, args.rehearsal and not args.dry_run, args.rehearsal_timeout)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)
    failed = [r["name"] for r in records if r["ours"].get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
