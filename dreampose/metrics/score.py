"""The score stage: every evaluation subject's renders against its ground-truth target frames.

Metrics (paper Table 1): L1, SSIM, PSNR (pixels); LPIPS (AlexNet) and VGG (LPIPS, VGG-16 trunk);
FID over all frames; FVD over clips of ``cfg.fvd_clip_len`` consecutive targets; AED (re-id
embedding distance); plus ``color_dist``, a weight-free appearance distance inside the person mask.
A metric whose network is absent is reported ``unavailable`` with the reason, never as a number.

Baselines rendered and scored in the same run (``<out_dir>/baselines/<name>/<subject>/frames``):
``copy_input`` (the input photo as every frame), ``pose_zeroed`` (the subject model with zero pose
channels), ``image_swapped`` (the base model given the next subject's photo), ``base_model``
(``models/base`` with the right photo but without the subject finetune, the paper's Table-2 ablation)
and ``subject_image_swapped`` (the subject model given the next subject's photo; informative only).

Why the must-beat photo test uses the base model: a subject-finetuned model carries its subject's
appearance in its weights (that is what the paper's finetune is for), so swapping its photo barely
changes its output and says little about whether the architecture reads the photo. The base model
is where the photo is the only source of appearance; beating it with a swapped photo shows the photo is used.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dreampose.config import RenderConfig, ScoreConfig
from dreampose.metrics.appearance import color_distance
from dreampose.metrics.features import Backbones, load_backbones
from dreampose.metrics.frechet import frechet_distance_features
from dreampose.metrics.pixel import l1, psnr, ssim
from dreampose.metrics.result import MetricResult
from dreampose.render import (
    FRAME_NAME,
    load_iuv,
    load_pipeline,
    read_rgb,
    read_test_manifest,
    render_to_dir,
    subject_rows,
    write_json,
)

log = logging.getLogger("dreampose.score")

METRICS = ("l1", "ssim", "psnr", "color_dist", "lpips", "vgg", "fid", "fvd", "aed")
FRAME_METRICS = ("l1", "ssim", "psnr", "color_dist", "lpips", "vgg")
LOWER_IS_BETTER = {"l1": True, "ssim": False, "psnr": False, "color_dist": True, "lpips": True, "vgg": True}
BASELINES = ("copy_input", "pose_zeroed", "image_swapped", "base_model", "subject_image_swapped")
MUST_BEAT = ("copy_input", "pose_zeroed", "image_swapped")
FEATURE_BATCH = 16


@dataclass
class SubjectData:
    """One subject's test targets: ground truth, person masks, input photo and pose windows."""

    subject: str
    frames: list[int]
    truth: np.ndarray  # uint8 (N, H, W, 3)
    masks: np.ndarray  # bool (N, H, W)
    image: np.ndarray  # uint8 (H, W, 3)
    poses: torch.Tensor | None = None  # (N, 10, H, W), loaded when a baseline needs it


@dataclass
class MethodScores:
    """Per-frame values and pooled features of one method over all subjects."""

    per_frame: list[dict[str, Any]] = field(default_factory=list)
    inception: dict[str, list[np.ndarray]] = field(default_factory=lambda: {"gen": [], "real": []})
    i3d: dict[str, list[np.ndarray]] = field(default_factory=lambda: {"gen": [], "real": []})
    aed: list[np.ndarray] = field(default_factory=list)


def _to_batch(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0


def _batched(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> np.ndarray:
    outs = []
    with torch.no_grad():
        for i in range(0, len(tensors[0]), FEATURE_BATCH):
            outs.append(fn(*(t[i : i + FEATURE_BATCH] for t in tensors)).detach().cpu().double().numpy())
    return np.concatenate(outs)


def clips(frames: np.ndarray, clip_len: int) -> np.ndarray:
    """Non-overlapping clips of consecutive frames ``(K, 3, clip_len, H, W)`` in [0, 1]; leftovers dropped."""
    k = len(frames) // clip_len
    x = _to_batch(frames[: k * clip_len])
    return x.reshape(k, clip_len, *x.shape[1:]).permute(0, 2, 1, 3, 4).numpy()


def load_renders(render_dir: Path, frames: Sequence[int], truth: np.ndarray) -> np.ndarray:
    """A subject's rendered frames, checked complete and the same size as the ground truth."""
    frames_dir = Path(render_dir) / "frames"
    paths = [frames_dir / FRAME_NAME.format(f) for f in frames]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
        raise ValueError(f"{frames_dir}: {len(missing)} of {len(paths)} rendered frames missing ({shown})")
    out = []
    for p, gt in zip(paths, truth, strict=True):
        img = read_rgb(p)
        if img.shape != gt.shape:
            raise ValueError(f"{p}: rendered frame is {img.shape[:2]} but the ground truth is {gt.shape[:2]} (H, W)")
        out.append(img)
    return np.stack(out)


def load_subject(df: pd.DataFrame, subject: str, test_manifest: Path, root: Path) -> SubjectData:
    rows = subject_rows(df, subject, test_manifest)
    frames = [int(f) for f in rows["target_frame"]]
    truth = np.stack([read_rgb(root / p) for p in rows["target_path"]])
    iuv = load_iuv(root / rows["densepose_path"].iloc[0])
    masks = iuv[frames][..., 0] > 0
    image = read_rgb(root / rows["input_path"].iloc[0])
    return SubjectData(subject, frames, truth, masks, image)


def _subject_poses(df: pd.DataFrame, s: SubjectData, test_manifest: Path, root: Path) -> torch.Tensor:
    from dreampose.data.dataset import load_pose_sequence

    if s.poses is None:
        rows = subject_rows(df, s.subject, test_manifest)
        s.poses = load_pose_sequence(root / rows["densepose_path"].iloc[0], s.frames, len(rows["pose_frames"].iloc[0]))
    return s.poses


def score_frames(
    method: MethodScores, s: SubjectData, generated: np.ndarray, backbones: Backbones, clip_len: int
) -> None:
    """Add one subject's per-frame metrics and features to ``method``."""
    n = len(s.frames)
    vals: dict[str, np.ndarray] = {
        "l1": l1(generated, s.truth),
        "ssim": ssim(generated, s.truth),
        "psnr": psnr(generated, s.truth),
        "color_dist": np.array(
            [
                color_distance(g, t, m) if m.any() else np.nan
                for g, t, m in zip(generated, s.truth, s.masks, strict=True)
            ]
        ),
    }
    gen_t, real_t = _to_batch(generated), _to_batch(s.truth)
    for name in ("lpips", "vgg"):
        net = getattr(backbones, name)
        vals[name] = _batched(net, gen_t, real_t).reshape(n) if net is not None else np.full(n, np.nan)
    if backbones.inception is not None:
        method.inception["gen"].append(_batched(backbones.inception, gen_t))
        method.inception["real"].append(_batched(backbones.inception, real_t))
    if backbones.i3d is not None and n >= clip_len:
        method.i3d["gen"].append(_batched(backbones.i3d, torch.from_numpy(clips(generated, clip_len))))
        method.i3d["real"].append(_batched(backbones.i3d, torch.from_numpy(clips(s.truth, clip_len))))
    if backbones.reid is not None:
        e_gen, e_real = _batched(backbones.reid, gen_t), _batched(backbones.reid, real_t)
        vals["aed"] = np.linalg.norm(e_gen - e_real, axis=1)
        method.aed.append(vals["aed"])
    for i, f in enumerate(s.frames):
        method.per_frame.append({"subject_id": s.subject, "frame": f, **{k: float(v[i]) for k, v in vals.items()}})


def _frechet(feats: dict[str, list[np.ndarray]], what: str, reason: str | None) -> MetricResult:
    if reason is not None:
        return MetricResult.unavailable(reason)
    gen = np.concatenate(feats["gen"]) if feats["gen"] else np.zeros((0, 1))
    real = np.concatenate(feats["real"]) if feats["real"] else np.zeros((0, 1))
    if len(gen) < 2 or len(real) < 2:
        return MetricResult.unavailable(f"needs at least 2 {what}, got {len(gen)}")
    return MetricResult.ok(frechet_distance_features(gen, real))


def summarize(method: MethodScores, backbones: Backbones, clip_len: int) -> dict[str, MetricResult]:
    """Means of the per-frame metrics over all frames, and the set-level FID / FVD / AED."""
    df = pd.DataFrame(method.per_frame)
    out: dict[str, MetricResult] = {}
    for name in FRAME_METRICS:
        col = df[name] if name in df else pd.Series(dtype=float)
        if name in ("lpips", "vgg") and getattr(backbones, name) is None:
            out[name] = MetricResult.unavailable(backbones.reason(name))
        elif col.notna().any():
            vals = col.dropna().to_numpy()
            # PSNR of an exact copy is +inf; the mean keeps that visible instead of dropping it.
            out[name] = MetricResult.ok(float(np.mean(vals)))
        else:
            out[name] = MetricResult.unavailable("no frame had a person mask" if name == "color_dist" else "no frames")
    out["fid"] = _frechet(method.inception, "frames", None if backbones.inception else backbones.reason("inception"))
    out["fvd"] = _frechet(method.i3d, f"clips of {clip_len} frames", None if backbones.i3d else backbones.reason("i3d"))
    if backbones.reid is None:
        out["aed"] = MetricResult.unavailable(backbones.reason("reid"))
    else:
        out["aed"] = MetricResult.ok(float(np.mean(np.concatenate(method.aed))))
    return out


def comparison(ours: dict[str, MetricResult], baselines: dict[str, dict[str, MetricResult]]) -> dict[str, Any]:
    """For each baseline and pixel metric: does ours do better (strictly)?"""
    out: dict[str, Any] = {}
    for name, scores in baselines.items():
        row = {}
        for m in ("l1", "ssim"):
            a, b = ours[m], scores.get(m)
            if a.available and b is not None and b.available:
                row[m] = bool(a.value < b.value) if LOWER_IS_BETTER[m] else bool(a.value > b.value)
        out[name] = row
    return out


def format_table(ours: dict[str, MetricResult], baselines: dict[str, dict[str, MetricResult]]) -> str:
    """A plain-text table: methods as rows, the available metrics as columns."""
    rows = {"ours": ours, **baselines}
    cols = [m for m in METRICS if any(r.get(m) is not None and r[m].available for r in rows.values())]
    lines = [f"{'method':<15}" + "".join(f"{c:>12}" for c in cols)]
    for name, r in rows.items():
        cells = [f"{r[c].value:>12.4f}" if r.get(c) is not None and r[c].available else f"{'n/a':>12}" for c in cols]
        lines.append(f"{name:<15}" + "".join(cells))
    missing = [m for m in METRICS if m not in cols]
    if missing:
        lines.append("unavailable: " + "; ".join(f"{m} ({ours[m].reason})" for m in missing))
    return "\n".join(lines)


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    import os
    import uuid

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        df.to_parquet(tmp, index=False) if path.suffix == ".parquet" else df.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _per_video(method: str, m: MethodScores) -> pd.DataFrame:
    df = pd.DataFrame(m.per_frame)
    agg = df.drop(columns=["frame"]).groupby("subject_id", sort=False).mean(numeric_only=True).reset_index()
    agg.insert(0, "method", method)
    agg.insert(2, "num_frames", df.groupby("subject_id", sort=False).size().to_numpy())
    return agg


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
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """Generated frames per baseline and subject; baselines that cannot run get a reason instead."""
    frames: dict[str, dict[str, np.ndarray]] = {
        "copy_input": {s.subject: np.stack([s.image] * len(s.frames)) for s in data}
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
    for b in model_baselines:
        if b not in reasons:
            frames[b] = {}
    base_pipe = load_pipe(Path(base_model_dir)) if "base_model" in frames else None
    for i, s in enumerate(data):
        poses = _subject_poses(df, s, test_manifest, root)
        other_image = data[(i + 1) % len(data)].image
        runs: list[tuple[str, Any, np.ndarray, torch.Tensor]] = []
        if "pose_zeroed" in frames or "subject_image_swapped" in frames:
            pipe = load_pipe(Path(subjects_model_dir) / s.subject)
            if "pose_zeroed" in frames:
                runs.append(("pose_zeroed", pipe, s.image, torch.zeros_like(poses)))
            if "subject_image_swapped" in frames:
                runs.append(("subject_image_swapped", pipe, other_image, poses))
        if base_pipe is not None:
            runs.append(("base_model", base_pipe, s.image, poses))
            if "image_swapped" in frames:
                runs.append(("image_swapped", base_pipe, other_image, poses))
        for name, pipe, image, pose in runs:
            d = out_dir / "baselines" / name / s.subject
            render_to_dir(pipe, image, pose, s.frames, render_cfg, d / "frames", desc=f"{name} {s.subject}")
            frames[name][s.subject] = load_renders(d, s.frames, s.truth)
    return frames, reasons


def score_renders(
    cfg: ScoreConfig,
    render_cfg: RenderConfig,
    test_manifest: Path,
    renders_dir: Path,
    root: Path,
    subjects: Sequence[str],
    out_dir: Path,
    plots_dir: Path,
    subjects_model_dir: Path | None = None,
    base_model_dir: Path | None = None,
    backbones: Backbones | None = None,
    load_pipe: Callable[[Path], Any] = load_pipeline,
    dataset: str = "synthetic demo",
) -> dict[str, Any]:
    """Score ``renders_dir/<subject>/frames`` against the ground truth; write the DVC metrics and plots.

    Writes ``out_dir/scores.json`` (ours, baselines, the comparison, unavailable metrics with reasons),
    ``out_dir/per_video.parquet`` (one row per method and subject) and ``plots_dir/per_frame.csv``
    (ours, one row per subject and frame). Returns the scores.json content plus ``table`` (text).
    """
    root, out_dir, plots_dir = Path(root), Path(out_dir), Path(plots_dir)
    df = read_test_manifest(test_manifest)
    subjects = list(subjects) or sorted(df["subject_id"].unique())
    data = [load_subject(df, s, test_manifest, root) for s in subjects]
    ours_frames = {s.subject: load_renders(Path(renders_dir) / s.subject, s.frames, s.truth) for s in data}
    if backbones is None:
        backbones = load_backbones(cfg, root)

    generated = {"ours": ours_frames}
    reasons: dict[str, str] = {}
    if cfg.baselines:
        more, reasons = render_baselines(
            df, data, test_manifest, root, render_cfg, out_dir, subjects_model_dir, base_model_dir, load_pipe
        )
        generated.update(more)

    methods: dict[str, MethodScores] = {}
    for name, per_subject in generated.items():
        m = methods[name] = MethodScores()
        for s in data:
            score_frames(m, s, per_subject[s.subject], backbones, cfg.fvd_clip_len)
    summaries = {name: summarize(m, backbones, cfg.fvd_clip_len) for name, m in methods.items()}
    ours = summaries.pop("ours")

    scores: dict[str, Any] = {
        "dataset": dataset,
        "num_subjects": len(data),
        "num_frames": sum(len(s.frames) for s in data),
        "ours": {k: v.to_json() for k, v in ours.items()},
        "baselines": {
            **{b: {k: v.to_json() for k, v in s.items()} for b, s in summaries.items()},
            **{b: {"status": "unavailable", "reason": r} for b, r in reasons.items()},
        },
        "ours_better_than": comparison(ours, summaries),
        "backbone_notes": dict(backbones.notes),  # e.g. random stand-in weights: those metrics mean nothing
    }
    write_json(scores, out_dir / "scores.json")
    per_video = pd.concat([_per_video(n, m) for n, m in methods.items()], ignore_index=True)
    _write_parquet(per_video, out_dir / "per_video.parquet")
    per_frame = pd.DataFrame(methods["ours"].per_frame)[["subject_id", "frame", "l1", "ssim", "psnr"]]
    _write_parquet(per_frame, plots_dir / "per_frame.csv")
    table = format_table(ours, summaries)
    log.debug("scores (%s, %d frames):\n%s", dataset, scores["num_frames"], table)
    return {**scores, "table": table}


def is_finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
