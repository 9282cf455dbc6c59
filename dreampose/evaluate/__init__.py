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

The package, by concern: ``subjects`` (test targets, renders, resizing), ``baselines`` (rendering them and the VAE
ceiling), ``scoring`` (per-frame metrics, summaries, the comparison and table), ``records`` (the files written);
``score_renders`` here runs them in order.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dreampose.config import RenderConfig, ScoreConfig
from dreampose.evaluate.baselines import CEILING, render_baselines
from dreampose.evaluate.records import is_finite, metric_values, write_records
from dreampose.evaluate.scoring import METRICS, MethodScores, comparison, format_table, score_frames, summarize
from dreampose.evaluate.subjects import (
    attach_fvd_clips,
    load_renders,
    load_subject,
    resize_frames,
    resize_subject,
    table1_shape,
)
from dreampose.metrics.features import Backbones, load_backbones
from dreampose.models.subject import load_subject_pipeline
from dreampose.render import read_test_manifest
from dreampose.runtime import Runtime

__all__ = ["METRICS", "is_finite", "metric_values", "score_renders"]  # what the score stage and its tests use

log = logging.getLogger("dreampose.score")


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
    truth_cache: dict = {}  # the truth's network features, computed for the first method only
    for name, per_subject in generated.items():
        m = methods[name] = MethodScores()
        for s in data:
            clip = generated_fvd[name].get(s.subject)
            score_frames(m, s, per_subject[s.subject], backbones, cfg.fvd_clip_len, clip, truth_cache)
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
    write_records(scores, methods, out_dir, plots_dir)
    table = format_table(ours, summaries)
    log.debug("scores (%s, %d frames):\n%s", dataset, scores["num_frames"], table)
    return {**scores, "table": table}
