"""The baselines, rendered and scored in the same run as ours (``<out_dir>/baselines/<name>/<subject>/frames``), and
the ``vae_ceiling`` row: the test targets through the model's own VAE."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dreampose.config import RenderConfig
from dreampose.evaluate.subjects import SubjectData, load_renders, subject_poses
from dreampose.io import write_png
from dreampose.render import FRAME_NAME, image_to_tensor, render_to_dir, to_uint8

BASELINES = ("copy_input", "pose_zeroed", "image_swapped", "base_model", "subject_image_swapped")
# The test targets encoded and decoded by the model's own VAE: what the latent space allows (an upper bound, not
# a baseline to beat; left out of ``ours_better_than``).
CEILING = "vae_ceiling"


def vae_roundtrip(pipe, frames: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """uint8 frames ``(N, H, W, 3)`` encoded (posterior mode) and decoded by ``pipe``'s VAE, as uint8: the best any
    render through that latent space can do."""
    frames = np.asarray(frames)
    mult = int(pipe.vae_scale_factor)
    if frames.shape[1] % mult or frames.shape[2] % mult:
        raise ValueError(f"frames {frames.shape[1]}x{frames.shape[2]} are not a multiple of the VAE's factor {mult}")
    device = getattr(pipe, "_execution_device", None) or pipe.vae.device
    out = []
    with torch.no_grad():
        for i in range(0, len(frames), batch_size):
            x = torch.stack([image_to_tensor(f) for f in frames[i : i + batch_size]]).to(device, pipe.vae.dtype)
            y = pipe.decode_latents(pipe.encode_latents(x)).float()
            out.append(to_uint8(((y + 1.0) / 2.0).permute(0, 2, 3, 1)))
    return np.concatenate(out)


def vae_ceiling_frames(
    name: str, pipe, s: SubjectData, out_dir: Path, batch_size: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """The subject's test targets (and FVD clip) through ``pipe``'s VAE, written as PNGs beside the baselines."""
    frames = vae_roundtrip(pipe, s.truth, batch_size)
    d = Path(out_dir) / "baselines" / name / s.subject / "frames"
    for f, img in zip(s.frames, frames, strict=True):
        write_png(img, d / FRAME_NAME.format(f))
    clip = vae_roundtrip(pipe, s.fvd_truth, batch_size) if s.fvd_truth is not None else None
    return frames, clip


def render_baselines(
    df: pd.DataFrame,
    data: list[SubjectData],
    test_manifest: Path,
    root: Path,
    render_cfg: RenderConfig,
    out_dir: Path,
    subjects_model_dir: Path | None,
    base_model_dir: Path | None,
    load_pipe: Callable[[Path], Any],
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """Generated frames per baseline and subject, the same for the FVD clips of subjects that have one
    loaded (``s.fvd_truth``); baselines that cannot run get a reason instead.

    The ``vae_ceiling`` row takes each subject model's VAE (the subject finetune may change the decoder) when
    subject models are given, else the base model's (evaluation.json's ``vae_ceiling_source`` says which)."""
    frames: dict[str, dict[str, np.ndarray]] = {
        "copy_input": {s.subject: np.stack([s.image] * len(s.frames)) for s in data}
    }
    fvd: dict[str, dict[str, np.ndarray]] = {
        "copy_input": {s.subject: np.stack([s.image] * len(s.fvd_frames)) for s in data if s.fvd_truth is not None}
    }
    reasons: dict[str, str] = {}
    model_baselines = [b for b in BASELINES if b != "copy_input"]
    if subjects_model_dir is None:
        for b in ("pose_zeroed", "subject_image_swapped"):
            reasons[b] = "no subject models given"
    if base_model_dir is None or not (Path(base_model_dir) / "model_index.json").is_file():
        for b in ("base_model", "image_swapped"):
            reasons[b] = f"no base model at {base_model_dir}"
    if len(data) < 2:
        for b in ("image_swapped", "subject_image_swapped"):
            reasons.setdefault(b, "needs at least two evaluation subjects")
    if subjects_model_dir is None and "base_model" in reasons:
        reasons[CEILING] = f"no subject models given and {reasons['base_model']}: no VAE to round-trip through"
    for b in (*model_baselines, CEILING):
        if b not in reasons:
            frames[b], fvd[b] = {}, {}
    base_pipe = load_pipe(Path(base_model_dir)) if "base_model" in frames else None
    for i, s in enumerate(data):
        poses = subject_poses(df, s, test_manifest, root)
        other_image = data[(i + 1) % len(data)].image
        runs: list[tuple[str, Any, np.ndarray, torch.Tensor]] = []
        ceiling_pipe = base_pipe
        if subjects_model_dir is not None:
            pipe = ceiling_pipe = load_pipe(Path(subjects_model_dir) / s.subject)
            if "pose_zeroed" in frames:
                runs.append(("pose_zeroed", pipe, s.image, torch.zeros_like(poses)))
            if "subject_image_swapped" in frames:
                runs.append(("subject_image_swapped", pipe, other_image, poses))
        if CEILING in frames:
            frames[CEILING][s.subject], clip = vae_ceiling_frames(
                CEILING, ceiling_pipe, s, out_dir, render_cfg.frame_batch_size
            )
            if clip is not None:
                fvd[CEILING][s.subject] = clip
        if base_pipe is not None:
            runs.append(("base_model", base_pipe, s.image, poses))
            if "image_swapped" in frames:
                runs.append(("image_swapped", base_pipe, other_image, poses))
        for name, pipe, image, pose in runs:
            d = out_dir / "baselines" / name / s.subject
            render_to_dir(pipe, image, pose, s.frames, render_cfg, d / "frames", desc=f"{name} {s.subject}")
            frames[name][s.subject] = load_renders(d, s.frames, s.truth)
            if s.fvd_truth is not None:
                clip_poses = subject_poses(df, s, test_manifest, root, clip=True)
                clip_poses = torch.zeros_like(clip_poses) if name == "pose_zeroed" else clip_poses
                render_to_dir(pipe, image, clip_poses, s.fvd_frames, render_cfg, d / "fvd" / "frames", desc=name)
                fvd[name][s.subject] = load_renders(d / "fvd", s.fvd_frames, s.fvd_truth)
    return frames, fvd, reasons
