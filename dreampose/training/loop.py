"""The one training loop (accelerate), shared by the base finetune and both subject phases.

The loop knows nothing about diffusion: it optimizes an *objective*, an ``nn.Module`` whose
``forward(batch, generator)`` returns a scalar loss and whose ``trainable_modules()`` names the
modules to optimize and checkpoint (see ``objectives.py``). Per step it takes this process's shard
of the global batch ``batch_indices(seed, step)`` from a DataLoader (``training/data.py``; items arrive compact,
uint8 where they can, and are expanded to float32 on the training device), seeds every
generator from ``(seed, step, micro-batch, rank)`` and accumulates ``grad_accum`` micro-batches, so a run
resumed from a checkpoint continues exactly as an uninterrupted run would (the fp16 loss scaler's
state and the weight EMA are checkpointed too). The learning rate follows :func:`lr_multiplier`; with
``ema_decay`` the run ends holding the moving average of the weights. Gradients are clipped to
``max_grad_norm`` when set; on CUDA devices with TF32 tensor cores, fp32 matmuls and convolutions use
them. When the loop returns, the optimizer, its state and the gradients are released, so what runs next
(an evaluation, the next phase) has the memory back.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset, default_collate
from tqdm.auto import tqdm

from dreampose.config import TrainConfig
from dreampose.training.checkpoint import apply_checkpoint, latest_checkpoint, save_checkpoint
from dreampose.training.data import to_device, train_batches
from dreampose.training.sampling import seed_everything, step_seed

log = logging.getLogger("dreampose.training")


class MetricsLogger(Protocol):
    """Where the main process sends metrics (MLflow in the stages, a list in tests)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


@dataclass
class TrainResult:
    steps: int
    start_step: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    samples_per_s: float = 0.0
    peak_memory_mb: float = 0.0

    @property
    def resumed(self) -> bool:
        return self.start_step > 0


def make_accelerator(mixed_precision: str = "no", cpu: bool = False):
    """An ``Accelerator`` for one training run (accelerate keeps process-wide state, reset here per run)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    # Parts of a pretrained image encoder may not feed the adapter (e.g. CLIP's projection head).
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu, kwargs_handlers=[ddp])


def constant_with_warmup(step: int, warmup_steps: int) -> float:
    """LR multiplier: linear ramp over ``warmup_steps`` optimizer steps, then 1."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def lr_multiplier(step: int, warmup_steps: int, max_steps: int, schedule: str = "constant") -> float:
    """LR multiplier of optimizer step ``step``: the warm-up ramp, then 1 (``constant``) or a half cosine from 1
    after warm-up down to 0 at ``max_steps`` (``cosine``)."""
    ramp = constant_with_warmup(step, warmup_steps)
    if schedule == "constant":
        return ramp
    if schedule != "cosine":
        raise ValueError(f"unknown lr schedule {schedule!r} (constant or cosine)")
    decay_steps = max(1, max_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    return ramp * 0.5 * (1.0 + math.cos(math.pi * progress))


def tf32_supported(device_type: str, capability: tuple[int, int] | None) -> bool:
    """Whether fp32 matmuls/convolutions should run on TF32 tensor cores: CUDA devices of compute capability
    8.0 or newer (Ampere on); never on the CPU or older GPUs."""
    return device_type == "cuda" and capability is not None and capability[0] >= 8


def enable_tf32(device: torch.device) -> bool:
    """Turn TF32 on for the fp32 paths of ``device`` where :func:`tf32_supported`; returns whether it did.

    Process-wide and a no-op elsewhere (the CPU keeps full fp32)."""
    device = torch.device(device)
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    if not tf32_supported(device.type, capability):
        return False
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    return True


def checkpoint_due(done: int, max_steps: int, every: int, every_s: float, seconds_since_last: float) -> bool:
    """Whether to checkpoint after ``done`` optimizer steps: every ``every`` steps and/or once ``every_s`` seconds
    passed since the last checkpoint (0 disables either); never after the last step (the model is saved then)."""
    if done >= max_steps:
        return False
    by_steps = every > 0 and done % every == 0
    by_time = every_s > 0 and seconds_since_last >= every_s
    return by_steps or by_time


def build_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, fused when every parameter lives on a device the fused kernel supports."""
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    fused = all(p.device.type in ("cuda", "cpu") and p.dtype.is_floating_point for p in params)
    try:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    except (RuntimeError, TypeError):  # e.g. a dtype the fused kernel rejects
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_ema(params: list[torch.nn.Parameter], decay: float) -> Any:
    """diffusers' ``EMAModel`` over ``params`` (a shadow copy on their device), or ``None`` for ``decay == 0``."""
    if decay <= 0:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(params, decay=decay, foreach=True)


def run_fingerprint(cfg: TrainConfig, num_items: int, extra: str = "") -> str:
    """Identifies runs that may share checkpoints: same settings, same data size, same caller context.
    ``num_workers`` is left out: the batches do not depend on it (``training/data.py``)."""
    text = f"{cfg.model_dump_json(exclude={'num_workers'})}|{num_items}|{extra}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss: KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def load_batch(dataset: Dataset, indices: list[int]) -> dict[str, Any]:
    return default_collate([dataset[i] for i in indices])


def train(
    objective: torch.nn.Module,
    dataset: Dataset,
    cfg: TrainConfig,
    *,
    ckpt_dir: Path | None = None,
    accelerator: Any = None,
    logger: MetricsLogger | None = None,
    fingerprint: str = "",
    on_step: Callable[[int, float], None] | None = None,
    sample_fn: Callable[[int], None] | None = None,
    stop_after: int | None = None,
    desc: str = "train",
    keep_checkpoints: int = 2,
) -> TrainResult:
    """Optimize ``objective`` on ``dataset`` for ``cfg.max_steps`` optimizer steps.

    ``stop_after`` ends the run early at that step (the schedule still spans ``max_steps``).
    Checkpoints go to ``ckpt_dir/step_NNNNNN`` as :func:`checkpoint_due` says (``cfg.checkpoint_every`` steps,
    ``cfg.checkpoint_every_s`` seconds), the newest ``keep_checkpoints`` kept; a matching checkpoint found there
    at start is resumed. Only the main process logs and writes. On return the optimizer is freed.
    """
    if accelerator is None:
        accelerator = make_accelerator(cfg.mixed_precision)
    enable_tf32(accelerator.device)
    num_items = len(dataset)  # type: ignore[arg-type]
    if num_items == 0:
        raise ValueError("the training dataset is empty")
    world = accelerator.num_processes
    global_batch = cfg.batch_size * world
    modules: dict[str, torch.nn.Module] = objective.trainable_modules()
    if cfg.gradient_checkpointing:
        objective.enable_gradient_checkpointing()

    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    objective.to(accelerator.device)
    optimizer = build_optimizer(params, cfg)
    ema = make_ema(params, cfg.ema_decay)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, cfg.lr_warmup_steps, cfg.max_steps, cfg.lr_schedule)
    )
    # The scheduler is stepped here once per optimizer step; accelerate's wrapper would step it world-size times.
    model, optimizer = accelerator.prepare(objective, optimizer)

    fp = run_fingerprint(cfg, num_items, f"{fingerprint}|world={world}")
    start = 0
    if ckpt_dir is not None:
        ckpt = latest_checkpoint(ckpt_dir, fp)
        if ckpt is not None:
            start = apply_checkpoint(
                ckpt, modules, optimizer.optimizer, lr_scheduler, scaler=accelerator.scaler, ema=ema
            )
            log.info("resuming %s from %s", desc, ckpt.path)
    end = cfg.max_steps if stop_after is None else min(cfg.max_steps, stop_after)

    result = TrainResult(steps=start, start_step=start)
    model.train()
    bar = tqdm(total=cfg.max_steps, initial=start, desc=desc, disable=not accelerator.is_main_process, leave=False)
    t0, samples = time.perf_counter(), 0
    batches = train_batches(dataset, cfg, start, end, accelerator.process_index, world, accelerator.device)
    last_ckpt = t0
    for step in range(start, end):
        loss = _train_step(model, optimizer, batches, cfg, accelerator, step, global_batch, params)
        lr_scheduler.step()
        if ema is not None:
            ema.step(params)
        samples += global_batch * cfg.grad_accum
        step_loss = accelerator.reduce(loss.detach().reshape(1), reduction="mean").item()
        result.losses.append(step_loss)
        result.steps = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        if accelerator.is_main_process:
            if logger is not None and ((step + 1) % cfg.log_every == 0 or step + 1 == end):
                elapsed = time.perf_counter() - t0
                logger.log_metrics(
                    {
                        f"{desc}/loss": step_loss,
                        f"{desc}/lr": lr_scheduler.get_last_lr()[0],
                        f"{desc}/samples_per_s": samples / max(elapsed, 1e-9),
                        f"{desc}/peak_memory_mb": peak_memory_mb(accelerator.device),
                    },
                    step + 1,
                )
            if sample_fn is not None and cfg.sample_every and (step + 1) % cfg.sample_every == 0:
                sample_fn(step + 1)
        if ckpt_dir is not None and _agreed(
            accelerator,
            checkpoint_due(step + 1, cfg.max_steps, cfg.checkpoint_every, cfg.checkpoint_every_s,
                           time.perf_counter() - last_ckpt),
        ):  # fmt: skip
            if accelerator.is_main_process:
                save_checkpoint(ckpt_dir, step + 1, modules, optimizer.optimizer, lr_scheduler, fp,
                                keep=keep_checkpoints, scaler=accelerator.scaler, ema=ema)  # fmt: skip
            accelerator.wait_for_everyone()
            last_ckpt = time.perf_counter()
        if on_step is not None:
            on_step(step + 1, step_loss)
    bar.close()
    result.seconds = time.perf_counter() - t0
    result.samples_per_s = samples / max(result.seconds, 1e-9)
    result.peak_memory_mb = peak_memory_mb(accelerator.device)
    accelerator.wait_for_everyone()
    model.eval()
    if ema is not None:
        ema.copy_to(params)  # the run's result is the averaged weights
    # Free the optimizer (its state is twice the trainable weights) and the gradients before whatever runs next.
    optimizer.zero_grad(set_to_none=True)
    del optimizer, lr_scheduler, model, batches, ema  # batches: the DataLoader's worker processes end with it
    accelerator.free_memory()  # drops accelerate's references to them, then runs one full gc.collect()
    if accelerator.device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _agreed(accelerator: Any, due: bool) -> bool:
    """The main process's decision, on every process (a wall-clock interval may differ between processes)."""
    if accelerator.num_processes == 1:
        return due
    from accelerate.utils import broadcast

    flag = torch.tensor([int(due)], device=accelerator.device)
    return bool(broadcast(flag, from_process=0).item())


def _train_step(
    model: torch.nn.Module,
    optimizer: Any,
    batches: Iterator[dict[str, Any]],
    cfg: TrainConfig,
    accelerator: Any,
    step: int,
    global_batch: int,
    params: list[torch.nn.Parameter] | None = None,
) -> torch.Tensor:
    """One optimizer step over ``cfg.grad_accum`` micro-batches; returns the mean micro-batch loss.

    With ``cfg.max_grad_norm`` the (unscaled, all-reduced) gradients of ``params`` are clipped to that norm."""
    rank = accelerator.process_index
    total = torch.zeros((), device=accelerator.device)
    for micro in range(cfg.grad_accum):
        stream_step = step * cfg.grad_accum + micro
        # Augmentations and layers that draw from the global generators see the same state on resume.
        seed_everything(step_seed(cfg.seed, stream_step, rank, 1))
        # This stream step's items (training/data.py), shipped compact and expanded to float on the device.
        batch = to_device(next(batches), accelerator.device)
        generator = torch.Generator(accelerator.device).manual_seed(step_seed(cfg.seed, stream_step, rank, 2))
        last = micro == cfg.grad_accum - 1
        # Only the last micro-batch all-reduces gradients across processes.
        sync = contextlib.nullcontext() if last else accelerator.no_sync(model)
        with sync:
            loss = model(batch, generator)
            accelerator.backward(loss / cfg.grad_accum)
        total = total + loss.detach().float() / cfg.grad_accum
    if cfg.max_grad_norm and params and accelerator.sync_gradients:
        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total
