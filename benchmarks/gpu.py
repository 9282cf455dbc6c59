"""GPU check: the paper preset *as configured*, on one CUDA GPU, each figure appended the moment it is measured.

``benchmarks/gpu_check.sh`` runs each part below in its own process under ``timeout``; every part appends its
JSON line(s) to ``--out`` as soon as the figure exists, so a part that runs out of time loses only itself.
Settings come from ``presets/paper.yaml`` (nothing is restated here); models are Stable Diffusion v1.x /
CLIP ViT-B/32 *architectures* with random weights (``benchmarks.render.sd_components``): speed and memory do not
depend on the weights.

Parts (``--part``):

``render`` -> ``gpu_render_paper_preset``: seconds per 640 x 512 frame.
    baseline = the official recipe's loop (``benchmarks.render.naive_render``): one frame at a time, the subject
    re-encoded per frame, three separate UNet calls per step, fp32, the preset's sampler / steps / s_I / s_p
    (PNDM 100, 8 / 3).
    ours = ``dreampose.render.render_frames`` with ``render:`` of the preset (PNDM 100, s_I 8 / s_p 3: three
    guidance branches stacked into one UNet call per step, ``frame_batch_size`` frames per call) on a pipeline
    placed by ``runtime:`` of the preset (fp16).
    Pairs alternate baseline and ours on the same inputs until the part's time budget is used (at most
    ``pairs``); the ratio is the median of the per-pair ratios (baseline s/frame over ours s/frame).
``train`` -> ``gpu_train_paper_preset`` (written first), then ``gpu_train_no_checkpointing``: one optimizer step
    of ``train_base`` as configured (batch 4 x grad-accum 4, fp16 mixed precision through accelerate,
    gradient checkpointing, image encoder frozen, fused AdamW) at 640 x 512: seconds per optimizer step and
    ``torch.cuda.max_memory_allocated`` (weights, optimizer state and the step). The second line is the same
    step without gradient checkpointing (what checkpointing saves); an out-of-memory is recorded as such.
``rehearsal`` -> ``gpu_rehearsal``: ``pytest tests/rehearsal -q`` with ``DREAMPOSE_DEVICE=cuda``.
``check``: exit 1 with one line when CUDA is not available (how ``gpu_check.sh`` refuses a CPU machine).

CUDA-only pieces are guarded: ``torch.cuda.synchronize`` and the peak-memory counters run only on a CUDA
device (``peak_mb`` is ``null`` elsewhere), and fp16 falls back to fp32 on the CPU as ``runtime.dtype`` does.
``--dry-run`` (or ``DREAMPOSE_GPU_CHECK_DRY_RUN=1``) runs the render and train parts on the CPU with tiny
stand-ins (a tiny model at 32 x 32, 2 sampler steps, the preset's guidance and frame batch, training batch 1 x
accum 2): it checks the code path, its numbers mean nothing.
Run: ``python -m benchmarks.gpu --part render|train|rehearsal|check [--dry-run] [--out FILE] [--budget-s S]``.
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
from dreampose.config import DEVICE_ENV, Params, RenderConfig, TrainConfig, load_params

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "presets" / "paper.yaml"
DRY_ENV = "DREAMPOSE_GPU_CHECK_DRY_RUN"
PARTS = ("check", "render", "train", "rehearsal")


@dataclass(frozen=True)
class Size:
    model: str  # "sd_v1" | "tiny"
    height: int
    width: int
    steps: int | None  # sampler steps; None: the preset's
    pairs: int  # at most this many (baseline, ours) render pairs
    timed_steps: int  # optimizer steps timed after one warm-up step
    train: tuple[int, int] | None = None  # (batch_size, grad_accum); None: the preset's


FULL = Size("sd_v1", 640, 512, None, 3, 2)
DRY = Size("tiny", 32, 32, 2, 1, 1, train=(1, 2))  # still two micro-batches per step, as accumulation needs


def no_cuda_line() -> str:
    return (
        f"gpu check: CUDA is not available (torch {torch.__version__}, CUDA build {torch.version.cuda}; "
        "the CUDA 13 wheels need NVIDIA driver >= 580); run on a CUDA machine, or --dry-run for the CPU check"
    )


def paper_params() -> Params:
    """The paper preset as committed (``DREAMPOSE_DEVICE`` plays no part: the device is chosen here)."""
    env = os.environ.pop(DEVICE_ENV, None)
    try:
        return load_params(PAPER)
    finally:
        if env is not None:
            os.environ[DEVICE_ENV] = env


def render_settings(size: Size) -> RenderConfig:
    cfg = paper_params().render
    return cfg if size.steps is None else cfg.model_copy(update={"num_inference_steps": size.steps})


def branches(s_i: float, s_p: float) -> int:
    """Guidance branches with a non-zero weight in eq. 4 (what one stacked UNet call evaluates)."""
    return sum(w != 0 for w in (1 - s_i, s_i - s_p, s_p))


def append(out: Path | None, rec: dict[str, Any]) -> None:
    """Append one result line now (not at the end of the run): a later timeout keeps it."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as fh:
        fh.write(json.dumps({**rec, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def build_pipeline(size: Size, device: torch.device):
    """A random-weight fp32 pipeline initialised directly on ``device`` (SD-sized init on a CPU is slow)."""
    from dreampose.models.pipeline import DreamPosePipeline

    with torch.device(device):
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
            pred = paper_params().model.prediction_type
            comps = build_tiny_components(tiny, size.height, size.width, pred, 0, 10)
        else:
            from benchmarks.render import sd_components

            comps = sd_components(size.height, size.width)
    pipe = DreamPosePipeline(**comps).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # CUDA kernels are asynchronous: time only finished work
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def cuda_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"torch_cuda": torch.version.cuda}
    if device.type != "cuda":
        return info
    props = torch.cuda.get_device_properties(device)
    info.update(name=props.name, memory_gb=round(props.total_memory / 2**30, 1))
    info["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
    try:
        smi = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        info["driver"] = subprocess.run(smi, capture_output=True, text=True, timeout=20).stdout.split()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        info["driver"] = None
    return info


def render_part(size: Size, device: torch.device, budget_s: float, out: Path | None) -> dict[str, Any]:
    """Paired official-loop vs ours render timings (seconds per frame) at the preset's settings."""
    from benchmarks.render import naive_render
    from dreampose.render import render_frames
    from dreampose.runtime import Runtime, place_pipeline, resolve_dtype

    t_start = time.perf_counter()
    params = paper_params()
    cfg = render_settings(size)
    dtype = resolve_dtype(params.runtime.dtype, device)  # fp16 on CUDA; fp32 on the CPU (dry run)
    official = build_pipeline(size, device)
    official.set_scheduler(cfg.scheduler)
    ours_pipe = type(official)(**{k: copy.deepcopy(v) for k, v in official.components.items()})
    ours_pipe = place_pipeline(ours_pipe, Runtime(device, dtype))
    ours_pipe.set_progress_bar_config(disable=True)
    frames = cfg.frame_batch_size  # one call of ours: the preset's batch
    g = torch.Generator().manual_seed(0)
    h, w = size.height, size.width
    image = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
    pixels = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1).to(device)
    poses = torch.rand(frames, official.pose_channels, h, w, generator=g)
    f = official.vae_scale_factor
    noise = torch.randn(1, official.latent_channels, h // f, w // f, generator=g).to(device)
    s_i, s_p = cfg.image_guidance_scale, cfg.pose_guidance_scale

    def baseline() -> float:  # one frame: the official loop renders frames one by one
        _sync(device)
        t0 = time.perf_counter()
        naive_render(official, pixels, poses[:1].to(device), noise, cfg.num_inference_steps, s_i, s_p).cpu()
        _sync(device)
        return time.perf_counter() - t0

    def ours() -> float:
        _sync(device)
        t0 = time.perf_counter()
        render_frames(ours_pipe, image, poses, cfg, desc="gpu check")  # returns host uint8: finished work
        return (time.perf_counter() - t0) / frames

    with torch.no_grad():  # warm-up: kernels, cuDNN autotune, allocator
        naive_render(official, pixels, poses[:1].to(device), noise, 1, s_i, s_p).cpu()
    render_frames(ours_pipe, image, poses, cfg.model_copy(update={"num_inference_steps": 1}), desc="warm-up")
    pairs: list[tuple[float, float]] = []
    for _ in range(size.pairs):
        t0 = time.perf_counter()
        pairs.append((baseline(), ours()))
        spent, last = time.perf_counter() - t_start, time.perf_counter() - t0
        if spent + last > budget_s:  # the next pair would not fit the part's budget
            break
    ratios = [b / o for b, o in pairs]
    rec = emit(
        "gpu_render_paper_preset",
        {
            "preset": "presets/paper.yaml",
            "model": size.model,
            "weights": "random (SD v1.x shapes)" if size.model == "sd_v1" else "random (tiny stand-in)",
            "height": h,
            "width": w,
            "scheduler": cfg.scheduler,
            "steps": cfg.num_inference_steps,
            "image_guidance_scale": s_i,
            "pose_guidance_scale": s_p,
            "pairs": len(pairs),
            "dry_run": size is DRY,
            "cuda": cuda_info(device),
        },
        {
            "what": "official recipe: one frame at a time, subject re-encoded per frame, 3 UNet calls/step, fp32",
            "dtype": "fp32",
            "frames_per_call": 1,
            "unet_evals_per_frame": 3 * cfg.num_inference_steps,
            "seconds_per_frame": round(statistics.median(b for b, _ in pairs), 4),
            "seconds_per_frame_all": [round(b, 4) for b, _ in pairs],
        },
        {
            "what": "render_frames: subject encoded once per call, frames batched, guidance branches stacked "
            "into one UNet call per step",
            "dtype": str(dtype).replace("torch.", ""),
            "frames_per_call": frames,
            "branches": branches(s_i, s_p),
            "unet_evals_per_frame": branches(s_i, s_p) * cfg.num_inference_steps,
            "seconds_per_frame": round(statistics.median(o for _, o in pairs), 4),
            "seconds_per_frame_all": [round(o, 4) for _, o in pairs],
            "frames_per_s": round(1 / statistics.median(o for _, o in pairs), 4),
        },
        statistics.median(ratios),
        ratios=[round(r, 3) for r in ratios],
        ratio_statistic="median of paired (official s/frame) / (ours s/frame)",
        wall_s=round(time.perf_counter() - t_start, 1),
    )
    append(out, rec)
    return rec


def train_step(size: Size, device: torch.device, tcfg: TrainConfig, checkpointing: bool) -> dict[str, Any]:
    """Seconds per optimizer step (``grad_accum`` micro-batches of ``batch_size``) and peak CUDA memory."""
    from dreampose.training.loop import build_optimizer, make_accelerator
    from dreampose.training.objectives import DiffusionObjective

    cuda = device.type == "cuda"
    mixed = tcfg.mixed_precision if cuda else "no"  # accelerate has no fp16 autocast on the CPU
    res: dict[str, Any] = {
        "gradient_checkpointing": checkpointing,
        "mixed_precision": mixed,
        "batch_size": tcfg.batch_size,
        "grad_accum": tcfg.grad_accum,
    }
    if cuda:
        _free(device)
        torch.cuda.reset_peak_memory_stats(device)
    try:
        accelerator = make_accelerator(mixed, cpu=not cuda)
        pipe = build_pipeline(size, device)
        obj = DiffusionObjective(pipe, tcfg.dropout, train_image_encoder=tcfg.train_image_encoder)
        if checkpointing:
            obj.enable_gradient_checkpointing()
        params = [p for m in obj.trainable_modules().values() for p in m.parameters() if p.requires_grad]
        obj.to(accelerator.device)
        opt = build_optimizer(params, tcfg)
        model, opt = accelerator.prepare(obj, opt)
        model.train()
        g = torch.Generator().manual_seed(0)
        b, h, w = tcfg.batch_size, size.height, size.width
        batch = {
            "input_pixels": torch.rand(b, 3, h, w, generator=g) * 2 - 1,
            "target_pixels": torch.rand(b, 3, h, w, generator=g) * 2 - 1,
            "poses": torch.rand(b, pipe.pose_channels, h, w, generator=g) * 2 - 1,
        }
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}

        def step(seed: int) -> float:  # as training/loop.py: grad_accum micro-batches, then one update
            _sync(device)
            t0 = time.perf_counter()
            for micro in range(tcfg.grad_accum):
                gen = torch.Generator(accelerator.device).manual_seed(seed * 1000 + micro)
                accelerator.backward(model(batch, gen) / tcfg.grad_accum)
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(device)
            return time.perf_counter() - t0

        first = step(0)
        timed = [step(1 + i) for i in range(size.timed_steps)]
        res.update(
            step_s=round(statistics.median(timed), 4),
            micro_batch_s=round(statistics.median(timed) / tcfg.grad_accum, 4),
            first_step_s=round(first, 4),
            trainable_params_m=round(sum(p.numel() for p in params) / 1e6, 1),
            peak_mb=round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None,
            peak_reserved_mb=round(torch.cuda.max_memory_reserved(device) / 2**20, 1) if cuda else None,
        )
    except torch.cuda.OutOfMemoryError as err:  # (a CUDA-only error type; never raised on the CPU)
        res.update(status="out of memory", reason=str(err).splitlines()[0])
    finally:
        model = opt = obj = pipe = accelerator = batch = None  # released before the next variant is built
        _free(device)
    return res


def train_part(size: Size, device: torch.device, out: Path | None) -> list[dict[str, Any]]:
    t_start = time.perf_counter()
    tcfg = paper_params().train_base
    if size.train is not None:
        tcfg = tcfg.model_copy(update={"batch_size": size.train[0], "grad_accum": size.train[1]})
    config = {
        "preset": "presets/paper.yaml (train_base)",
        "model": size.model,
        "height": size.height,
        "width": size.width,
        "batch_size": tcfg.batch_size,
        "grad_accum": tcfg.grad_accum,
        "mixed_precision": tcfg.mixed_precision,
        "gradient_checkpointing": tcfg.gradient_checkpointing,
        "train_image_encoder": tcfg.train_image_encoder,
        "optimizer": "adamw (fused where supported)",
        "timed_steps": size.timed_steps,
        "dry_run": size is DRY,
        "cuda": cuda_info(device),
    }
    memory = (
        "torch.cuda.max_memory_allocated (weights + optimizer state + step)"
        if device.type == "cuda"
        else "none on the CPU (dry run)"
    )
    preset = train_step(size, device, tcfg, checkpointing=tcfg.gradient_checkpointing)
    first = emit(
        "gpu_train_paper_preset",
        config,
        {},
        preset,
        None,
        memory_measure=memory,
        wall_s=round(time.perf_counter() - t_start, 1),
    )
    append(out, first)  # the preset's own figure is on disk before the comparison runs
    t0 = time.perf_counter()
    other = train_step(size, device, tcfg, checkpointing=not tcfg.gradient_checkpointing)
    base, ours = (other, preset) if tcfg.gradient_checkpointing else (preset, other)
    ratio = base["peak_mb"] / ours["peak_mb"] if base.get("peak_mb") and ours.get("peak_mb") else None
    second = emit(
        "gpu_train_no_checkpointing",
        config,
        base,
        ours,
        ratio,
        ratio_is="peak memory without / with gradient checkpointing",
        memory_measure=memory,
        wall_s=round(time.perf_counter() - t0, 1),
    )
    append(out, second)
    return [first, second]


def rehearsal_part(timeout_s: float, out: Path | None) -> dict[str, Any]:
    """``pytest tests/rehearsal -q`` with every params file's ``runtime.device`` set to ``cuda``."""
    path = REPO / "tests" / "rehearsal"
    env = {**os.environ, DEVICE_ENV: "cuda"}
    t0 = time.perf_counter()
    if not path.is_dir():
        res: dict[str, Any] = {"status": "unavailable", "reason": "tests/rehearsal does not exist"}
    else:
        try:
            run = subprocess.run(
                [sys.executable, "-m", "pytest", str(path), "-q", "-x"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
            tail = (run.stdout + run.stderr).strip().splitlines()
            res = {
                "status": "passed" if run.returncode == 0 else "failed",
                "returncode": run.returncode,
                "summary": tail[-1] if tail else "",
            }
        except subprocess.TimeoutExpired:
            res = {"status": "failed", "reason": f"timed out after {timeout_s:.0f} s"}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    rec = emit("gpu_rehearsal", {"command": "pytest tests/rehearsal -q -x", "env": {DEVICE_ENV: "cuda"}}, {}, res, None)
    append(out, rec)
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=PARTS, required=True)
    ap.add_argument("--dry-run", action="store_true", help=f"tiny stand-ins on the CPU (or {DRY_ENV}=1)")
    ap.add_argument("--out", type=Path, help="append each JSON line to this file as it is measured")
    ap.add_argument("--budget-s", type=float, default=200.0, help="time for this part (render pairs, rehearsal)")
    args = ap.parse_args(argv)
    dry = args.dry_run or os.environ.get(DRY_ENV, "") not in ("", "0")
    if not dry and not torch.cuda.is_available():
        print(no_cuda_line(), file=sys.stderr)
        return 1
    if args.part == "check":
        return 0
    size, device = (DRY, torch.device("cpu")) if dry else (FULL, torch.device("cuda"))
    if dry:
        torch.set_num_threads(1)  # tiny tensors: on a busy CPU, intra-op threads only wait for each other
    if args.part == "render":
        render_part(size, device, args.budget_s, args.out)
    elif args.part == "train":
        recs = train_part(size, device, args.out)
        return 1 if any(r["ours"].get("status") for r in recs[:1]) else 0
    elif dry:
        print("gpu check: the rehearsal part needs CUDA (skipped in a dry run)", file=sys.stderr)
    else:
        return 0 if rehearsal_part(args.budget_s, args.out)["ours"]["status"] == "passed" else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
