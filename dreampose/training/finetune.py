"""The two finetunes: base (UNet + adapter on the training pairs) and per subject (phase 1 UNet +
adapter with aligned crop augmentation, phase 2 VAE decoder). Each writes its directory atomically; checkpoints
live beside it in ``<out_dir>.ckpt/`` and are removed on success. The base finetune writes a whole
``DreamPosePipeline``; a subject directory holds only what the subject changed, on top of its base
(``dreampose.models.subject``; loaded with ``load_subject_pipeline``).

The model is saved before the post-training evaluation (the held-out loss after training), which then
runs with the optimizer freed, at the training's precision and at most the training's batch; an
out-of-memory there is recorded in ``train.json`` (``<key>_error``) instead of failing the stage.
A subject keeps at most one checkpoint on disk (phase 1's goes once phase 2 has its own).

With ``SubjectConfig.lora_rank > 0`` phase 1 trains LoRA layers instead of the full UNet (see ``lora.py``); the
subject directory then stores the UNet as that LoRA delta.
With ``TrainConfig.sample_every > 0`` a grid of held-out renders is logged to MLflow that often.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import Dataset, Subset

from dreampose.config import SubjectConfig, TrainConfig
from dreampose.fsutil import atomic_write, recorded, replace_dir, staging_dir
from dreampose.models.pipeline import load_pipeline
from dreampose.training.checkpoint import list_checkpoints
from dreampose.training.loop import MetricsLogger, make_accelerator, train
from dreampose.training.objectives import DecoderObjective, DiffusionObjective, autocast_dtype, heldout_loss

#: The held-out evaluation's batch is at most this (and at most the training batch, which is known to fit).
EVAL_BATCH = 16

log = logging.getLogger("dreampose.training")


def ckpt_dir_for(out_dir: Path) -> Path:
    return Path(out_dir).with_name(Path(out_dir).name + ".ckpt")


def _frame_size(size: tuple[int, int] | None, manifest: Path, root: Path) -> tuple[int, int]:
    """``size`` when given, else the size of the manifest's first target frame."""
    if size is not None:
        return size
    from PIL import Image

    row = pd.read_parquet(manifest).iloc[0]
    with Image.open(Path(root) / row["target_path"]) as im:
        return im.height, im.width


def _save(
    pipe: Any, out_dir: Path, summary: dict[str, Any], writer: Callable[[Path], dict[str, Any]] | None = None
) -> None:
    """Write the model + ``train.json`` atomically: the whole pipeline (``save_pretrained``), or, with ``writer``,
    what ``writer(staging_dir)`` writes (it returns summary keys)."""
    import json

    from dreampose.models.builders import save_pipeline_atomic

    out_dir = Path(out_dir)
    if writer is None:
        text = json.dumps(recorded(summary), indent=2, sort_keys=True, default=str)
        save_pipeline_atomic(pipe, out_dir, {"train.json": text})
        return
    staging = staging_dir(out_dir)
    try:
        staging.mkdir()
        summary.update(writer(staging))
        (staging / "train.json").write_text(json.dumps(recorded(summary), indent=2, sort_keys=True, default=str))
        replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _sampler(cfg: TrainConfig, pipe: Any, dataset: Dataset, name: str) -> Callable[[int], None] | None:
    from dreampose.training.preview import mlflow_sampler

    return mlflow_sampler(pipe, dataset, name, seed=cfg.seed) if cfg.sample_every > 0 else None


def _heldout(objective: DiffusionObjective, dataset: Dataset, cfg: TrainConfig, device: torch.device) -> float:
    """The held-out loss at the training's precision and a batch no larger than the training's."""
    dtype = autocast_dtype(cfg.mixed_precision, torch.device(device).type)
    return heldout_loss(objective, dataset, seed=cfg.seed, batch_size=min(EVAL_BATCH, cfg.batch_size), dtype=dtype)


def _evaluate_saved(
    evaluate: Callable[[], float], out_dir: Path, summary: dict[str, Any], key: str, write: bool
) -> float | None:
    """Run a post-training evaluation of the already saved model in ``out_dir``, put its value under ``key`` in
    ``summary`` and (``write``) in ``out_dir/train.json``. Out of memory there loses nothing: it is logged and
    recorded as ``<key>_error`` with ``key`` null. Any other error propagates (the model stays saved)."""
    try:
        value: float | None = evaluate()
    except (torch.OutOfMemoryError, MemoryError) as err:
        log.warning("%s: evaluation after training ran out of memory; the model is saved (%s)", out_dir, err)
        value = None
        summary[f"{key}_error"] = f"{type(err).__name__}: {err}"
    summary[key] = value
    if write:
        text = json.dumps(recorded(summary), indent=2, sort_keys=True, default=str)
        atomic_write(Path(out_dir) / "train.json", lambda tmp: tmp.write_text(text))
    return value


def _drop_when_superseded(new: Path, old: Path, main: bool) -> Callable[[int, float], None]:
    """An ``on_step`` hook: once ``new`` holds a checkpoint, delete ``old`` (one checkpoint per subject on disk)."""

    def hook(step: int, loss: float) -> None:
        if main and old.exists() and list_checkpoints(new):
            shutil.rmtree(old, ignore_errors=True)

    return hook


def _on_cpu(device: torch.device | None) -> bool:
    """Whether the runtime pins training to the CPU (``None``: let accelerate choose)."""
    return device is not None and torch.device(device).type == "cpu"


def finetune_base(
    cfg: TrainConfig,
    model_dir: Path,
    manifest: Path,
    root: Path,
    out_dir: Path,
    *,
    heldout_manifest: Path | None = None,
    size: tuple[int, int] | None = None,
    logger: MetricsLogger | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Finetune UNet + adapter (+ image encoder) of ``model_dir`` on the pairs of ``manifest``; write ``out_dir``.

    The held-out loss (fixed pairs of ``heldout_manifest``, else of ``manifest``; fixed noise and
    timesteps) is measured before and after training. A CPU ``device`` (``runtime.device: cpu``) keeps
    training on the CPU even where CUDA exists; otherwise accelerate places it (one GPU per process).
    """
    from dreampose.data.dataset import PairDataset

    t0 = time.perf_counter()
    pipe = load_pipeline(model_dir)
    h, w = _frame_size(size, Path(manifest), Path(root))
    data = PairDataset(manifest, root, h, w, seed=cfg.seed, color_augment=cfg.color_augment)
    held = PairDataset(heldout_manifest, root, h, w) if heldout_manifest and Path(heldout_manifest).is_file() else data
    accelerator = make_accelerator(cfg.mixed_precision, cpu=_on_cpu(device))
    objective = DiffusionObjective(pipe, cfg.dropout, cfg.train_image_encoder, cfg.timestep_sampling).to(
        accelerator.device
    )
    before = _heldout(objective, held, cfg, accelerator.device)
    ckpt = ckpt_dir_for(out_dir)
    result = train(
        objective, data, cfg, ckpt_dir=ckpt, accelerator=accelerator, logger=logger,
        fingerprint=f"base|{Path(model_dir).resolve()}|{h}x{w}", desc="base",
        sample_fn=_sampler(cfg, pipe, held, "base"),
    )  # fmt: skip
    summary: dict[str, Any] = {
        "steps": result.steps,
        "resumed_from_step": result.start_step,
        "pairs": len(data),
        "heldout_pairs": min(32, len(held)),
        "heldout_loss_before": before,
        "heldout_loss_after": None,  # measured once the model is saved
        "final_train_loss": result.losses[-1] if result.losses else None,
        "samples_per_s": result.samples_per_s,
        "peak_memory_mb": result.peak_memory_mb,
        "seconds": time.perf_counter() - t0,
    }
    if accelerator.is_main_process:
        _save(pipe.to("cpu"), Path(out_dir), summary)
        shutil.rmtree(ckpt, ignore_errors=True)
    objective.to(accelerator.device)
    after = _evaluate_saved(
        lambda: _heldout(objective, held, cfg, accelerator.device), Path(out_dir), summary, "heldout_loss_after",
        write=accelerator.is_main_process,
    )  # fmt: skip
    log.info("base finetune: held-out loss %.4f -> %s", before, after)
    return summary


class _SubjectFrames(Dataset):
    """The distinct input and target frames of a subject's pairs, for the decoder phase."""

    def __init__(self, pairs: Dataset) -> None:
        seen: dict[bytes, torch.Tensor] = {}
        for i in range(len(pairs)):  # type: ignore[arg-type]
            item = pairs[i]
            for key in ("input_pixels", "target_pixels"):
                x = item[key]
                seen.setdefault(x.numpy().tobytes(), x)
        self.frames = list(seen.values())

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixels": self.frames[i]}


def subject_rows(manifest: Path, subject: str) -> list[int]:
    """Row positions of ``subject`` in ``manifest``; ``ValueError`` naming both when there are none."""
    ids = pd.read_parquet(manifest, columns=["subject_id"])["subject_id"].astype(str)
    rows = [i for i, s in enumerate(ids) if s == subject]
    if not rows:
        known = sorted(set(ids))[:10]
        raise ValueError(f"{manifest}: no rows for subject {subject!r} (subjects include {known})")
    return rows


def finetune_subject(
    cfg: SubjectConfig,
    base_dir: Path,
    manifest: Path,
    subject: str,
    root: Path,
    out_dir: Path,
    *,
    size: tuple[int, int] | None = None,
    logger: MetricsLogger | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Phase 1: UNet + adapter (or UNet LoRA + adapter when ``cfg.lora_rank > 0``) on ``subject``'s pairs with
    aligned random crops; phase 2: VAE decoder (L1), skipped when ``cfg.decoder_steps == 0`` (the subject model
    then keeps the base model's VAE, bit for bit). ``device`` as in :func:`finetune_base`."""
    from dreampose.data.dataset import PairDataset

    t0 = time.perf_counter()
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no subject manifest (run `dreampose manifest` first)")
    rows = subject_rows(manifest, subject)
    pipe = load_pipeline(base_dir)
    h, w = _frame_size(size, manifest, Path(root))
    pairs = Subset(PairDataset(manifest, root, h, w, augment=tuple(cfg.crop_scale), seed=cfg.unet.seed), rows)
    plain = Subset(PairDataset(manifest, root, h, w), rows)
    ckpt = ckpt_dir_for(out_dir)
    accelerator = make_accelerator(cfg.unet.mixed_precision, cpu=_on_cpu(device))
    fp = f"subject|{subject}|{Path(base_dir).resolve()}|{h}x{w}|lora={cfg.lora_rank}"

    if cfg.lora_rank > 0:
        from dreampose.training.lora import LoraDiffusionObjective

        objective: DiffusionObjective = LoraDiffusionObjective(
            pipe, cfg.unet.dropout, cfg.lora_rank, seed=cfg.unet.seed, timestep_sampling=cfg.unet.timestep_sampling
        )
    else:
        objective = DiffusionObjective(pipe, cfg.unet.dropout, cfg.unet.train_image_encoder, cfg.unet.timestep_sampling)
    objective.to(accelerator.device)
    before = _heldout(objective, plain, cfg.unet, accelerator.device)
    # One checkpoint per subject on disk: when phase 2 already has one (a rerun after a crash in phase 2), phase 1
    # (whose result phase 2 does not depend on) runs again without writing any. It frees its optimizer on return.
    phase1_ckpt = None if list_checkpoints(ckpt / "decoder") else ckpt / "unet"
    phase1 = train(objective, pairs, cfg.unet, ckpt_dir=phase1_ckpt, accelerator=accelerator, logger=logger,
                   fingerprint=fp, desc="subject_unet", keep_checkpoints=1,
                   sample_fn=_sampler(cfg.unet, pipe, plain, "subject_unet"))  # fmt: skip
    lora_state = None
    if cfg.lora_rank > 0:
        from dreampose.training.lora import lora_state_dict, merge_lora

        lora_state = lora_state_dict(pipe.unet)
        # The render stage loads a plain UNet: fold the adapters in before phase 2 and saving.
        merge_lora(pipe.unet)
        pipe.unet.requires_grad_(False)

    summary: dict[str, Any] = {
        "subject": subject,
        "pairs": len(rows),
        "unet_steps": phase1.steps,
        "unet_loss_before": before,
        "unet_loss_after": None,  # measured once the model is saved (phase 2 leaves what it measures unchanged)
        "unet_loss_first": phase1.losses[0] if phase1.losses else None,
        "unet_loss_last": phase1.losses[-1] if phase1.losses else None,
        "lora_rank": cfg.lora_rank,
    }
    if cfg.decoder_steps > 0:
        frames = _SubjectFrames(plain)
        # Its own step interval (wall-time interval, gradient checkpointing and clipping as the subject's); the UNet
        # phase's LR schedule and weight EMA are phase 1's alone.
        dec_cfg = cfg.unet.model_copy(
            update={"max_steps": cfg.decoder_steps, "lr": cfg.decoder_lr, "batch_size": cfg.decoder_batch_size,
                    "grad_accum": 1, "lr_warmup_steps": 0, "lr_schedule": "constant", "ema_decay": 0.0,
                    "checkpoint_every": cfg.decoder_checkpoint_every}
        )  # fmt: skip
        dec = DecoderObjective(pipe.vae)
        # Phase 1's last checkpoint stays (a crash here resumes phase 1 from it) until phase 2 has its own.
        drop_phase1 = _drop_when_superseded(ckpt / "decoder", ckpt / "unet", accelerator.is_main_process)
        phase2 = train(dec, frames, dec_cfg, ckpt_dir=ckpt / "decoder", accelerator=accelerator, logger=logger,
                       fingerprint=fp, desc="subject_decoder", keep_checkpoints=1, on_step=drop_phase1)  # fmt: skip
        summary.update(
            decoder_steps=phase2.steps,
            decoder_frames=len(frames),
            decoder_l1_first=phase2.losses[0] if phase2.losses else None,
            decoder_l1_last=phase2.losses[-1] if phase2.losses else None,
        )
    else:  # UNet only (paper Table 2 "Ours_No-VAE-FT"): the subject model keeps the base model's VAE decoder
        summary["decoder_steps"] = 0
    summary["seconds"] = time.perf_counter() - t0
    if accelerator.is_main_process:
        pipe.vae.requires_grad_(False)
        _save(pipe.to("cpu"), Path(out_dir), summary, _subject_writer(pipe, base_dir, out_dir, cfg, lora_state))
        shutil.rmtree(ckpt, ignore_errors=True)
    objective.to(accelerator.device)
    _evaluate_saved(
        lambda: _heldout(objective, plain, cfg.unet, accelerator.device), Path(out_dir), summary, "unet_loss_after",
        write=accelerator.is_main_process,
    )  # fmt: skip
    return summary


def _subject_writer(
    pipe: Any, base_dir: Path, out_dir: Path, cfg: SubjectConfig, lora_state: dict[str, torch.Tensor] | None
) -> Callable[[Path], dict[str, Any]]:
    """Writes what the subject finetune changed (``dreampose.models.subject``) into the staged subject directory:
    the UNet (or its LoRA delta), the adapter, the VAE decoder when phase 2 ran, the image encoder when phase 1
    trained it, in ``cfg.save_dtype``; reports the bytes."""
    from dreampose.models.subject import LORA_FILE, save_subject

    def write(staging: Path) -> dict[str, Any]:
        lora = (lora_state, cfg.lora_rank, float(cfg.lora_rank)) if lora_state is not None else None
        sizes = save_subject(
            pipe, staging, base_dir, dtype=cfg.save_dtype, lora=lora, decoder=cfg.decoder_steps > 0,
            image_encoder=lora is None and cfg.unet.train_image_encoder, final_dir=out_dir,
        )  # fmt: skip
        out: dict[str, Any] = {"save_dtype": cfg.save_dtype, "subject_bytes": sum(sizes.values())}
        if lora is not None:
            out["lora_bytes"] = sizes[LORA_FILE]
        return out

    return write
