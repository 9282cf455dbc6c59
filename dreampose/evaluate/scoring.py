"""Scoring: each method's per-frame metrics and pooled features over all subjects, their summary (means, FID, FVD,
AED, temporal error, flicker), the comparison of ours with the baselines and the plain-text table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from dreampose.evaluate.baselines import CEILING
from dreampose.evaluate.subjects import SubjectData, eye_view, to_batch
from dreampose.metrics.appearance import color_distance
from dreampose.metrics.features import Backbones
from dreampose.metrics.frechet import frechet_distance_features
from dreampose.metrics.ghosting import ghosting
from dreampose.metrics.pattern import pattern_error
from dreampose.metrics.pixel import l1, psnr, ssim
from dreampose.metrics.result import MetricResult
from dreampose.metrics.temporal import flicker, temporal_error

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
FEATURE_BATCH = 16


@dataclass
class MethodScores:
    """Per-frame values and pooled features of one method over all subjects."""

    per_frame: list[dict[str, Any]] = field(default_factory=list)
    inception: dict[str, list[np.ndarray]] = field(default_factory=lambda: {"gen": [], "real": []})
    i3d: dict[str, list[np.ndarray]] = field(default_factory=lambda: {"gen": [], "real": []})
    aed: list[np.ndarray] = field(default_factory=list)
    temporal: list[float] = field(default_factory=list)  # per subject: mean temporal error of its consecutive clip
    flicker: list[tuple[float, float]] = field(default_factory=list)  # per subject: (excess, deficit) of its clip


def _batched(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> np.ndarray:
    outs = []
    with torch.no_grad():
        for i in range(0, len(tensors[0]), FEATURE_BATCH):
            outs.append(fn(*(t[i : i + FEATURE_BATCH] for t in tensors)).detach().cpu().double().numpy())
    return np.concatenate(outs)


def _truth_features(cache: dict | None, key: tuple, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()``, once per ``key`` when a cache is given: the ground truth's features are the same for every
    method scored against it."""
    if cache is None:
        return compute()
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def clips(frames: np.ndarray, clip_len: int) -> np.ndarray:
    """Non-overlapping clips of consecutive frames ``(K, 3, clip_len, H, W)`` in [0, 1]; leftovers dropped."""
    k = len(frames) // clip_len
    x = to_batch(frames[: k * clip_len])
    return x.reshape(k, clip_len, *x.shape[1:]).permute(0, 2, 1, 3, 4).numpy()


def score_frames(
    method: MethodScores,
    s: SubjectData,
    generated: np.ndarray,
    backbones: Backbones,
    clip_len: int,
    fvd_generated: np.ndarray | None = None,
    truth_cache: dict | None = None,
) -> None:
    """Add one subject's per-frame metrics and features to ``method``; FVD features come from the consecutive
    clip ``fvd_generated`` against ``s.fvd_truth`` (none when either is missing). ``truth_cache`` (one dict for
    all methods scored against the same subjects) keeps the ground truth's Inception, I3D and re-ID features
    after the first method instead of running those networks on the same frames again for every method."""
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
    gen_t, real_t = to_batch(generated), to_batch(s.truth)
    for name in ("lpips", "vgg"):
        net = getattr(backbones, name)
        vals[name] = _batched(net, gen_t, real_t).reshape(n) if net is not None else np.full(n, np.nan)
    if backbones.inception is not None:
        method.inception["gen"].append(_batched(backbones.inception, gen_t))
        method.inception["real"].append(
            _truth_features(truth_cache, ("inception", s.subject), lambda: _batched(backbones.inception, real_t))
        )
    has_clip = fvd_generated is not None and s.fvd_truth is not None and len(s.fvd_truth) >= clip_len
    if backbones.i3d is not None and has_clip:
        method.i3d["gen"].append(_batched(backbones.i3d, torch.from_numpy(clips(fvd_generated, clip_len))))
        method.i3d["real"].append(
            _truth_features(
                truth_cache,
                ("i3d", s.subject, clip_len),
                lambda: _batched(backbones.i3d, torch.from_numpy(clips(s.fvd_truth, clip_len))),
            )
        )
    if fvd_generated is not None and s.fvd_truth is not None and len(s.fvd_truth) >= 2:
        method.temporal.append(float(temporal_error(fvd_generated, s.fvd_truth).mean()))
        excess, deficit = flicker(e_clip, e.fvd_truth)
        method.flicker.append((float(excess.mean()), float(deficit.mean())))
    if backbones.reid is not None:
        e_gen = _batched(backbones.reid, gen_t)
        e_real = _truth_features(truth_cache, ("reid", s.subject), lambda: _batched(backbones.reid, real_t))
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
