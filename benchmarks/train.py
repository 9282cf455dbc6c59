"""Training step cost with and without gradient checkpointing: step time and peak memory.

Baseline = one training step (``DiffusionObjective`` forward + backward + optimizer step) without
gradient checkpointing; ours = the same step with it. Each configuration runs in a fresh process:
on CUDA the peak is ``torch.cuda.max_memory_allocated``; on CPU it is the RSS high-water mark
sampled every few milliseconds over the first step, minus the RSS before it (the step's own memory:
activations, gradients, optimizer state). Times are taken afterwards in the checkpointing process,
alternating steps without and with checkpointing (best of ``rounds`` pairs), so load from other
processes on a shared machine hits both alike.

Models: the demo's tiny model at 64 x 48, batch 8 (AdamW), and a Stable Diffusion v1.x-sized UNet
(random weights, 14 input channels, with the SD VAE and a CLIP ViT-B/32 frozen) at a reduced
256 x 192 (latent 32 x 24), batch 1. For the SD-sized model the optimizer is plain SGD: AdamW's two
moment buffers (6.9 GB) are the same with or without checkpointing and do not fit a small machine.
A third line compares AdamW implementations (for-loop, foreach, fused) on SD-UNet-shaped tensors.

Ratios: memory(without) / memory(with) and time(with) / time(without); ``activation_mb`` is the step's
memory less the gradients and optimizer state (equal in both), i.e. what checkpointing can save.
Run: ``python -m benchmarks.train`` (one JSON line per model).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from benchmarks.common import emit

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "tiny": {"height": 64, "width": 48, "batch_size": 8, "optimizer": "adamw", "rounds": 5},
    "sd_v1_unet": {"height": 256, "width": 192, "batch_size": 1, "optimizer": "sgd", "rounds": 1},
}


class RssPeak:
    """Samples this process's RSS in a thread; ``peak`` is the highest value seen while running."""

    def __init__(self, interval: float = 0.003) -> None:
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.start = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def build_pipeline(model: str, height: int, width: int):
    from dreampose.models.pipeline import DreamPosePipeline

    if model == "tiny":
        from dreampose.config import TinyModelConfig
        from dreampose.models.builders import build_tiny_components

        return DreamPosePipeline(**build_tiny_components(TinyModelConfig(), height, width, "v_prediction", 0, 10))
    from benchmarks.render import sd_components

    return DreamPosePipeline(**sd_components(height, width))


def random_batch(pipe, batch: int, height: int, width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded training batch of ``pipe``'s shapes, values in [-1, 1): photos, targets and pose channels."""
    g = torch.Generator().manual_seed(seed)
    return {
        "input_pixels": torch.rand(batch, 3, height, width, generator=g) * 2 - 1,
        "target_pixels": torch.rand(batch, 3, height, width, generator=g) * 2 - 1,
        "poses": torch.rand(batch, pipe.pose_channels, height, width, generator=g) * 2 - 1,
    }


def measure(model: str, checkpointing: bool) -> dict:
    """The first step's peak memory (MiB) of one configuration in this process; with ``checkpointing``
    also the step times (s) without and with it, alternating."""
    from dreampose.config import DropoutConfig
    from dreampose.training.objectives import DiffusionObjective

    spec = MODELS[model]
    h, w, b = spec["height"], spec["width"], spec["batch_size"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    pipe = build_pipeline(model, h, w)
    obj = DiffusionObjective(pipe, DropoutConfig(), train_image_encoder=False).to(device)
    if checkpointing:
        obj.enable_gradient_checkpointing()
    obj.train()
    params = [p for m in obj.trainable_modules().values() for p in m.parameters() if p.requires_grad]
    if spec["optimizer"] == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=1e-4)
    else:
        opt = torch.optim.SGD(params, lr=1e-4)
    batch = {k: v.to(device) for k, v in random_batch(pipe, b, h, w).items()}

    def step(seed: int) -> float:
        loss = obj(batch, torch.Generator(device).manual_seed(seed))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(0)
        torch.cuda.synchronize()
        peak_mb = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        with RssPeak() as rss:
            step(0)
        peak_mb = (rss.peak - rss.start) / 2**20
    out: dict = {"peak_step_mb": round(peak_mb, 1)}
    if checkpointing:
        times: dict[str, list[float]] = {"without": [], "with": []}
        for k in range(spec["rounds"]):
            for mode in ("without", "with"):
                if mode == "with":
                    obj.enable_gradient_checkpointing()
                else:
                    obj.unet.disable_gradient_checkpointing()
                t0 = time.perf_counter()
                step(k + 1)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[mode].append(round(time.perf_counter() - t0, 4))
        out["times_s"] = times
    return {
        **out,
        "unet_params_m": round(sum(p.numel() for p in pipe.unet.parameters()) / 1e6, 1),
        "trainable_params_m": round(sum(p.numel() for p in params) / 1e6, 1),
    }


def adamw_variants(total_params: int = 60_000_000, repeat: int = 3) -> dict:
    """Best step time of AdamW for-loop / foreach / fused on tensors shaped like the SD v1.x UNet's."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)
    shapes, n = [], 0
    for p in unet.parameters():
        if n >= total_params:
            break
        shapes.append(tuple(p.shape))
        n += p.numel()
    g = torch.Generator().manual_seed(0)
    out = {"params_m": round(n / 1e6, 1), "tensors": len(shapes)}
    for name, kw in (("for_loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        params = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.02) for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, generator=g) * 1e-3
        opt = torch.optim.AdamW(params, lr=1e-4, **kw)
        opt.step()  # allocates the moment buffers
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            opt.step()
            best = min(best, time.perf_counter() - t0)
        out[f"{name}_s"] = round(best, 4)
        del opt, params
    return out


def _worker(args: list[str]) -> None:
    kind = args[0]
    res = adamw_variants() if kind == "adamw" else measure(kind, args[1] == "1")
    print("RESULT " + json.dumps(res), flush=True)


def _run_worker(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.train", "--worker", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark worker {args} failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    for model, spec in MODELS.items():
        t0 = time.perf_counter()
        without = _run_worker(model, "0")
        with_ckpt = _run_worker(model, "1")
        times = with_ckpt.pop("times_s")
        without.update(step_s=min(times["without"]), step_s_all=times["without"])
        with_ckpt.update(step_s=min(times["with"]), step_s_all=times["with"])
        mem_ratio = without["peak_step_mb"] / max(with_ckpt["peak_step_mb"], 1e-9)
        # Gradients (+ AdamW's two moments) are the same in both runs; what checkpointing saves is the rest.
        state_mb = without["trainable_params_m"] * 1e6 * 4 * (3 if spec["optimizer"] == "adamw" else 1) / 2**20
        act = [max(r["peak_step_mb"] - state_mb, 0.0) for r in (without, with_ckpt)]
        emit(
            f"train_step_gradient_checkpointing_{model}",
            spec,
            without,
            with_ckpt,
            mem_ratio,
            memory_ratio_without_over_with=round(mem_ratio, 4),
            grad_and_optimizer_state_mb=round(state_mb, 1),
            activation_mb={"without": round(act[0], 1), "with": round(act[1], 1)},
            activation_ratio_without_over_with=round(act[0] / act[1], 4) if act[1] > 0 else None,
            time_ratio_with_over_without=round(with_ckpt["step_s"] / max(without["step_s"], 1e-9), 4),
            memory_measure="cuda max_memory_allocated" if torch.cuda.is_available() else "RSS high-water - RSS before",
            wall_s=round(time.perf_counter() - t0, 1),
        )
    t0 = time.perf_counter()
    opt = _run_worker("adamw")
    emit(
        "train_adamw_fused_vs_for_loop",
        {"params_m": opt["params_m"], "tensors": opt["tensors"], "shapes": "SD v1.x UNet, first tensors"},
        {"step_s": opt["for_loop_s"]},
        {"step_s": opt["fused_s"], "foreach_step_s": opt["foreach_s"]},
        opt["for_loop_s"] / max(opt["fused_s"], 1e-9),
        wall_s=round(time.perf_counter() - t0, 1),
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2:])
    else:
        main()
