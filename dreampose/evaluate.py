"""The score stage: every evaluation subject's renders against its ground-truth target frames.

Metrics (paper Table 1): L1, SSIM, PSNR (pixels); LPIPS (AlexNet) and VGG (LPIPS, VGG-16 trunk);
FID over all frames; FVD over one clip per video of ``cfg.fvd_clip_len`` consecutive test frames
(``data/manifests/fvd.parquet``, rendered to ``renders/<subject>/fvd/frames``; the paper's "FVD (16f)");
AED (re-id embedding distance); plus ``color_dist``, a weight-free appearance distance inside the person
mask. A metric whose network is absent is reported ``unavailable`` with the reason, never as a number.
What the eye sees (``docs/metrics.md``): ``ghost_fraction`` / ``missing_fraction`` (``metrics.ghosting``),
``pattern_error`` (``metrics.pattern``) and ``flicker`` = ``flicker_excess`` + ``motion_deficit`` (``metrics.temporal``,
on the consecutive clips), for ours and every baseline.

Resolution: the top-level numbers are at the frames' native size. With ``cfg.table1_size`` set, the
same metrics of ``ours`` are computed again on frames resized (antialiased, aspect kept) so their longer
side is ``table1_size`` pixels, the resolution of the paper's Table 1, under ``table1``.

Two records: ``evaluation.json`` holds everything (with the reasons and notes); ``scores.json``, the DVC metrics
file, holds its numbers only (``metric_values``), so ``dvc metrics diff`` and ``dvc exp show`` list metrics, not
"unavailable" strings.

Baselines rendered and scored in the same run (``<out_dir>/baselines/<name>/<subject>/frames``):
``copy_input`` (the input photo as every frame), ``pose_zeroed`` (the subject model with zero pose
channels), ``image_swapped`` (the base model given the next subject's photo), ``base_model``
(``models/base`` with the right photo but without the subject finetune, the paper's Table-2 ablation)
and ``subject_image_swapped`` (the subject model given the next subject's photo; informative only).
Beside them, ``vae_ceiling``: the test targets encoded and decoded by the model's own VAE (each subject model's,
else the base model's), the upper bound of anything rendered through that latent space; not in ``ours_better_than``.

Why the must-beat photo test uses the base model: a subject-finetuned model carries its subject's
appearance in its weights (that is what the paper's finetune is for), so swapping its photo barely
changes its output and says little about whether the architecture reads the photo. The base model
is where the photo is the only source of appearance; beating it with a swapped photo shows the photo is used.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dreampose.config import RenderConfig, ScoreConfig
from dreampose.fsutil import atomic_write
from dreampose.io import load_iuv, read_rgb, write_json, write_png
from dreampose.layout import EVALUATION, SCORES
from dreampose.metrics.appearance import color_distance
from dreampose.metrics.features import Backbones, load_backbones
from dreampose.metrics.frechet import frechet_distance_features
from dreampose.metrics.ghosting import estimate_background, ghosting
from dreampose.metrics.pattern import pattern_error
from dreampose.metrics.pixel import l1, psnr, ssim
from dreampose.metrics.result import MetricResult
from dreampose.metrics.temporal import flicker, temporal_error
from dreampose.models.subject import load_subject_pipeline
from dreampose.render import (
    FRAME_NAME,
    fvd_rows,
    image_to_tensor,
    read_test_manifest,
    render_to_dir,
    subject_rows,
    to_uint8,
)
from dreampose.runtime import Runtime

log = logging.getLogger("dreampose.score")

METRICS = ("l1", "ssim", "psnr", "color_dist", "lpips", "vgg", "fid", "fvd", "aed", "temporal_error")
# What the eye sees (docs/metrics.md): ghost limbs, missing body, lost pattern, flicker; all lower is better.
VISUAL_METRICS = ("ghost_fraction", "missing_fraction", "pattern_error", "flicker", "flicker_excess", "motion_deficit")
FRAME_METRICS = ("l1", "ssim", "psnr", "color_dist", "lpips", "vgg", *VISUAL_METRICS[:3])
LOWER_IS_BETTER = {
    "l1": True, "ssim": False, "psnr": False, "color_dist": True, "lpips": True, "vgg": True,
    "ghost_fraction": True, "missing_fraction": True, "pattern_error": True,
}  # fmt: skip
NAN_REASONS = {
    "color_dist": "no frame had a person mask",
    "ghost_fraction": "no frame had background outside the person mask",
    "missing_fraction": "no frame had body pixels that differ from a known background (the body never moved away)",
    "pattern_error": "no frame had detail inside the person mask",
}
BASELINES = ("copy_input", "pose_zeroed", "image_swapped", "base_model", "subject_image_swapped")
# The test targets encoded and decoded by the model's own VAE: what the latent space allows (an upper bound, not
# a baseline to beat; left out of ``ours_better_than``).
CEILING = "vae_ceiling"
# The eye metrics are measured on frames at most this long (the paper's Table-1 size); their blur radii grow with the
# frame size, so at 640 px their cost would grow with its cube (docs/metrics.md).
EYE_LONG_SIDE = 256
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
    fvd_frames: list[int] = field(default_factory=list)  # consecutive frames of the FVD clip, if any
    fvd_truth: np.ndarray | None = None  # uint8 (L, H, W, 3)
    fvd_poses: torch.Tensor | None = None  # (L, 10, H, W), loaded when a baseline needs it
    background: tuple[np.ndarray, np.ndarray] | None = None  # (colour, known) estimated from truth and masks
    eye: SubjectData | None = None  # this subject at EYE_LONG_SIDE, for the eye metrics of frames larger than that

    def background_estimate(self) -> tuple[np.ndarray, np.ndarray]:
        """The video's background and where it is known (see ``dreampose.metrics.ghosting``), computed once."""
        if self.background is None:
            self.background = estimate_background(self.truth, self.masks)
        return self.background


@dataclass
class MethodScores:
    """Per-frame values and pooled features of one method over all subjects."""

    per_frame: list[dict[str, Any]] = field(default_factory=list)
    inception: dict[str, list[np.ndarray]] = field(default_factory=lambda: {"gen": [], "real": []})
    i3d: dict[str, list[np.ndarray]] = field(default_factory=lambda: {"gen": [], "real": []})
    aed: list[np.ndarray] = field(default_factory=list)
    temporal: list[float] = field(default_factory=list)  # per subject: mean temporal error of its consecutive clip
    flicker: list[tuple[float, float]] = field(default_factory=list)  # per subject: (excess, deficit) of its clip


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


def table1_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """``(h, w)`` with the longer side ``long_side`` and the aspect kept (640 x 512 at 256 -> 256 x 205)."""
    if long_side > max(height, width):
        raise ValueError(
            f"score.table1_size {long_side} is larger than the {height}x{width} frames; the Table-1 numbers "
            "are a downsampled copy (set it to null for frames this small)"
        )
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``(N, H, W, 3)`` -> uint8 ``(N, h, w, 3)``, antialiased bilinear (what an image library's resize does)."""
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames
    x = torch.nn.functional.interpolate(_to_batch(np.array(frames)), size=size, mode="bilinear", antialias=True)
    return (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def resize_subject(s: SubjectData, size: tuple[int, int]) -> SubjectData:
    """The subject's ground truth, masks, photo and FVD clip at ``size`` (masks by nearest neighbour)."""
    m = torch.from_numpy(s.masks[:, None].astype(np.float32))
    masks = torch.nn.functional.interpolate(m, size=size, mode="nearest")[:, 0].numpy() > 0.5
    fvd_truth = resize_frames(s.fvd_truth, size) if s.fvd_truth is not None else None
    return SubjectData(
        s.subject, s.frames, resize_frames(s.truth, size), masks, resize_frames(s.image[None], size)[0],
        fvd_frames=s.fvd_frames, fvd_truth=fvd_truth,
    )  # fmt: skip


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


def subject_poses(df: pd.DataFrame, s: SubjectData, test_manifest: Path, root: Path) -> torch.Tensor:
    from dreampose.data.dataset import load_pose_sequence

    if s.poses is None:
        rows = subject_rows(df, s.subject, test_manifest)
        s.poses = load_pose_sequence(root / rows["densepose_path"].iloc[0], s.frames, len(rows["pose_frames"].iloc[0]))
    return s.poses


def _fvd_poses(df: pd.DataFrame, s: SubjectData, test_manifest: Path, root: Path) -> torch.Tensor:
    from dreampose.data.dataset import load_pose_sequence

    if s.fvd_poses is None:
        rows = subject_rows(df, s.subject, test_manifest)
        window = len(rows["pose_frames"].iloc[0])
        s.fvd_poses = load_pose_sequence(root / rows["densepose_path"].iloc[0], s.fvd_frames, window)
    return s.fvd_poses


def attach_fvd_clips(data: list[SubjectData], fvd_manifest: Path, root: Path) -> str | None:
    """Load each subject's FVD clip ground truth from ``fvd_manifest``; returns why FVD cannot run, or None."""
    fvd_manifest = Path(fvd_manifest)
    if not fvd_manifest.is_file():
        return f"no FVD clip manifest at {fvd_manifest} (re-run `dreampose manifest`)"
    for s in data:
        rows = fvd_rows(fvd_manifest, s.subject)
        s.fvd_frames = [int(f) for f in rows["target_frame"]]
        s.fvd_truth = np.stack([read_rgb(root / p) for p in rows["target_path"]]) if len(rows) else None
    return None


def eye_view(
    s: SubjectData, generated: np.ndarray, clip: np.ndarray | None
) -> tuple[SubjectData, np.ndarray, np.ndarray | None]:
    """The subject, its generated frames and clip at most ``EYE_LONG_SIDE`` pixels long (the eye metrics' size);
    unchanged when already that small. The resized subject is kept on ``s``, so its background is estimated once."""
    h, w = s.truth.shape[1:3]
    if max(h, w) <= EYE_LONG_SIDE:
        return s, generated, clip
    size = table1_shape(h, w, EYE_LONG_SIDE)
    if s.eye is None:
        s.eye = resize_subject(s, size)
    return s.eye, resize_frames(generated, size), (resize_frames(clip, size) if clip is not None else None)


def score_frames(
    method: MethodScores,
    s: SubjectData,
    generated: np.ndarray,
    backbones: Backbones,
    clip_len: int,
    fvd_generated: np.ndarray | None = None,
) -> None:
    """Add one subject's per-frame metrics and features to ``method``; FVD features come from the consecutive
    clip ``fvd_generated`` against ``s.fvd_truth`` (none when either is missing)."""
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
    e, e_gen, e_clip = eye_view(s, generated, fvd_generated)
    triples = list(zip(e_gen, e.truth, e.masks, strict=True))
    vals["pattern_error"] = np.array([pattern_error(g, t, m) for g, t, m in triples])
    bg, known = e.background_estimate()
    ghost = [ghosting(g, t, m, bg, known) for g, t, m in triples]
    vals["ghost_fraction"] = np.array([g for g, _ in ghost])
    vals["missing_fraction"] = np.array([m for _, m in ghost])
    gen_t, real_t = _to_batch(generated), _to_batch(s.truth)
    for name in ("lpips", "vgg"):
        net = getattr(backbones, name)
        vals[name] = _batched(net, gen_t, real_t).reshape(n) if net is not None else np.full(n, np.nan)
    if backbones.inception is not None:
        method.inception["gen"].append(_batched(backbones.inception, gen_t))
        method.inception["real"].append(_batched(backbones.inception, real_t))
    has_clip = fvd_generated is not None and s.fvd_truth is not None and len(s.fvd_truth) >= clip_len
    if backbones.i3d is not None and has_clip:
        method.i3d["gen"].append(_batched(backbones.i3d, torch.from_numpy(clips(fvd_generated, clip_len))))
        method.i3d["real"].append(_batched(backbones.i3d, torch.from_numpy(clips(s.fvd_truth, clip_len))))
    if fvd_generated is not None and s.fvd_truth is not None and len(s.fvd_truth) >= 2:
        method.temporal.append(float(temporal_error(fvd_generated, s.fvd_truth).mean()))
        excess, deficit = flicker(e_clip, e.fvd_truth)
        method.flicker.append((float(excess.mean()), float(deficit.mean())))
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


def summarize(
    method: MethodScores, backbones: Backbones, clip_len: int, fvd_reason: str | None = None
) -> dict[str, MetricResult]:
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
            out[name] = MetricResult.unavailable(NAN_REASONS.get(name, "no frames"))
    out["fid"] = _frechet(method.inception, "frames", None if backbones.inception else backbones.reason("inception"))
    reason = fvd_reason if backbones.i3d else backbones.reason("i3d")
    out["fvd"] = _frechet(method.i3d, f"clips of {clip_len} consecutive frames", reason)
    if backbones.reid is None:
        out["aed"] = MetricResult.unavailable(backbones.reason("reid"))
    else:
        out["aed"] = MetricResult.ok(float(np.mean(np.concatenate(method.aed))))
    no_clip = "no clip of consecutive frames rendered (score.fvd_clip_len unset, or no data/manifests/fvd.parquet)"
    if method.temporal:
        out["temporal_error"] = MetricResult.ok(float(np.mean(method.temporal)))
    else:
        out["temporal_error"] = MetricResult.unavailable(no_clip)
    if method.flicker:
        excess, deficit = (float(np.mean(v)) for v in zip(*method.flicker, strict=True))
        out["flicker"] = MetricResult.ok(excess + deficit)
        out["flicker_excess"], out["motion_deficit"] = MetricResult.ok(excess), MetricResult.ok(deficit)
    else:
        for name in ("flicker", "flicker_excess", "motion_deficit"):
            out[name] = MetricResult.unavailable(no_clip)
    return out


def comparison(ours: dict[str, MetricResult], baselines: dict[str, dict[str, MetricResult]]) -> dict[str, Any]:
    """For each baseline and pixel metric: does ours do better (strictly)?"""
    out: dict[str, Any] = {}
    for name, scores in baselines.items():
        if name == CEILING:
            continue
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
    every = METRICS + VISUAL_METRICS
    cols = [m for m in every if any(r.get(m) is not None and r[m].available for r in rows.values())]
    width = max(12, *(len(c) + 1 for c in cols)) if cols else 12
    lines = [f"{'method':<15}" + "".join(f"{c:>{width}}" for c in cols)]
    for name, r in rows.items():
        cells = [
            f"{r[c].value:>{width}.4f}" if r.get(c) is not None and r[c].available else f"{'n/a':>{width}}"
            for c in cols
        ]
        lines.append(f"{name:<15}" + "".join(cells))
    missing = [m for m in every if m not in cols]
    if missing:
        lines.append("unavailable: " + "; ".join(f"{m} ({ours[m].reason})" for m in missing))
    return "\n".join(lines)


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    atomic_write(
        path, lambda tmp: df.to_parquet(tmp, index=False) if path.suffix == ".parquet" else df.to_csv(tmp, index=False)
    )


def _per_video(method: str, m: MethodScores) -> pd.DataFrame:
    df = pd.DataFrame(m.per_frame)
    agg = df.drop(columns=["frame"]).groupby("subject_id", sort=False).mean(numeric_only=True).reset_index()
    agg.insert(0, "method", method)
    agg.insert(2, "num_frames", df.groupby("subject_id", sort=False).size().to_numpy())
    return agg


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
                clip_poses = _fvd_poses(df, s, test_manifest, root)
                clip_poses = torch.zeros_like(clip_poses) if name == "pose_zeroed" else clip_poses
                render_to_dir(pipe, image, clip_poses, s.fvd_frames, render_cfg, d / "fvd" / "frames", desc=name)
                fvd[name][s.subject] = load_renders(d / "fvd", s.fvd_frames, s.fvd_truth)
    return frames, fvd, reasons


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
    load_pipe: Callable[[Path], Any] | None = None,
    dataset: str = "synthetic demo",
    fvd_manifest: Path | None = None,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Score ``renders_dir/<subject>/frames`` against the ground truth; write the DVC metrics and plots.

    Writes ``out_dir/evaluation.json`` (ours, baselines, the comparison, unavailable metrics with reasons),
    ``out_dir/scores.json`` (its numbers only, for DVC), ``out_dir/per_video.parquet`` (one row per method and
    subject) and ``plots_dir/per_frame.csv`` (ours, one row per subject and frame). Returns the evaluation.json
    content plus ``table`` (text).
    Consecutive-frame clips come from ``fvd_manifest`` (default: ``fvd.parquet`` beside ``test_manifest``); they
    feed FVD (when an I3D network is available) and the temporal error.
    ``runtime`` places the baseline pipelines (device, dtype, offload) and the metric networks (device, fp32).
    """
    root, out_dir, plots_dir = Path(root), Path(out_dir), Path(plots_dir)
    df = read_test_manifest(test_manifest)
    subjects = list(subjects) or sorted(df["subject_id"].unique())
    data = [load_subject(df, s, test_manifest, root) for s in subjects]
    ours_frames = {s.subject: load_renders(Path(renders_dir) / s.subject, s.frames, s.truth) for s in data}
    native = tuple(data[0].truth.shape[1:3])
    t1_size = table1_shape(*native, cfg.table1_size) if cfg.table1_size is not None else None
    if backbones is None:
        backbones = load_backbones(cfg, root, runtime.device if runtime is not None else None)
    # The consecutive clips serve FVD (with I3D) and the temporal error (no network), so they are read either way.
    fvd_manifest = Path(fvd_manifest) if fvd_manifest is not None else Path(test_manifest).with_name("fvd.parquet")
    fvd_reason = attach_fvd_clips(data, fvd_manifest, root)
    ours_fvd = {
        s.subject: load_renders(Path(renders_dir) / s.subject / "fvd", s.fvd_frames, s.fvd_truth)
        for s in data
        if s.fvd_truth is not None
    }
    if load_pipe is None:
        load_pipe = functools.partial(load_subject_pipeline, runtime=runtime)

    generated = {"ours": ours_frames}
    generated_fvd = {"ours": ours_fvd}
    reasons: dict[str, str] = {}
    if cfg.baselines:
        more, more_fvd, reasons = render_baselines(
            df, data, test_manifest, root, render_cfg, out_dir, subjects_model_dir, base_model_dir, load_pipe
        )
        generated.update(more)
        generated_fvd.update(more_fvd)

    methods: dict[str, MethodScores] = {}
    for name, per_subject in generated.items():
        m = methods[name] = MethodScores()
        for s in data:
            clip = generated_fvd[name].get(s.subject)
            score_frames(m, s, per_subject[s.subject], backbones, cfg.fvd_clip_len, clip)
    summaries = {name: summarize(m, backbones, cfg.fvd_clip_len, fvd_reason) for name, m in methods.items()}
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
    if CEILING in generated:
        scores["vae_ceiling_source"] = (
            f"each subject model's own VAE ({subjects_model_dir}/<subject>/vae)"
            if subjects_model_dir is not None
            else f"the base model's VAE ({base_model_dir}/vae)"
        )
    if t1_size is not None:
        m = MethodScores()
        for s in data:
            clip = ours_fvd.get(s.subject)
            clip = resize_frames(clip, t1_size) if clip is not None else None
            small = resize_subject(s, t1_size)
            score_frames(m, small, resize_frames(ours_frames[s.subject], t1_size), backbones, cfg.fvd_clip_len, clip)
        t1 = summarize(m, backbones, cfg.fvd_clip_len, fvd_reason)
        scores["table1"] = {
            "size": list(t1_size),
            "native_size": list(native),
            "ours": {k: v.to_json() for k, v in t1.items()},
        }
    write_json(scores, out_dir / EVALUATION)
    write_json(metric_values(scores), out_dir / SCORES)
    per_video = pd.concat([_per_video(n, m) for n, m in methods.items()], ignore_index=True)
    _write_parquet(per_video, out_dir / "per_video.parquet")
    per_frame = pd.DataFrame(methods["ours"].per_frame)[["subject_id", "frame", "l1", "ssim", "psnr"]]
    _write_parquet(per_frame, plots_dir / "per_frame.csv")
    table = format_table(ours, summaries)
    log.debug("scores (%s, %d frames):\n%s", dataset, scores["num_frames"], table)
    return {**scores, "table": table}


def is_finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def metric_values(record: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of an evaluation record, nested as they are: finite ints and floats only; strings, bools,
    lists, ``None``, unavailable-metric records and mappings left empty are dropped."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            value = metric_values(value)
            if value:
                out[key] = value
        elif is_finite(value):
            out[key] = value
    return out
