"""The pipeline's stages: each takes the validated ``Params`` and the workspace root, calls
one library function with its own config section and explicit paths, and records the run in
MLflow. The CLI (and so DVC and Prefect) calls these; nothing here parses arguments.

Paths come from ``layout.Workspace(root)``, the DVC layout of docs/architecture.md.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from dreampose import tracking
from dreampose.config import Params
from dreampose.layout import Workspace

log = logging.getLogger("dreampose")


def _check_frame_size(params: Params, model_dir: Path) -> None:
    """``frames.height`` / ``frames.width`` against a saved model's size multiple, before loading or training it."""
    from dreampose.models.sizes import check_saved_model_frame_size

    check_saved_model_frame_size(model_dir, params.frames.height, params.frames.width)


def _log_summary(summary: dict[str, Any], group: str = "") -> None:
    """Numbers go to MLflow metrics (named ``<group><key>``), the whole summary to a JSON artifact."""
    if not tracking.tracking_enabled():
        return
    import mlflow

    nums = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if nums:
        mlflow.log_metrics({f"{group}{k}": v for k, v in nums.items()})
    mlflow.log_dict(summary, "summary.json")


def runtime(params: Params):
    """The inference runtime (``params.runtime``) resolved for this machine: a clear error for a device it lacks."""
    from dreampose.runtime import resolve_runtime

    return resolve_runtime(params.runtime)


def download(params: Params, root: Path) -> dict[str, Any]:
    """``data/raw``: synthetic videos (+ ground-truth IUV) or the UBC Fashion videos."""
    ws = Workspace(root)
    out = ws.raw
    with tracking.stage_run("download", params.data.model_dump(), params.tracking.experiment):
        if params.data.source == "synthetic":
            from dreampose.data.synthetic import generate_dataset

            summary = generate_dataset(params.data.synthetic, out, seed=params.seed)
        else:
            from dreampose.data.ubc import download_ubc

            summary = download_ubc(params.data.ubc, out)
        _log_summary(summary)
    return summary


def frames(params: Params, root: Path) -> dict[str, Any]:
    """``data/frames``: JPEG frames resized + center-cropped to H x W, and ``index.parquet``."""
    ws = Workspace(root)
    from dreampose.cluster import connect
    from dreampose.data.frames import extract_frames

    with tracking.stage_run(
        "frames", params.frames.model_dump(), params.tracking.experiment, inputs={"videos": ws.videos}
    ):
        with connect(params.cluster) as client:  # null: this process; else a Dask cluster (same bytes)
            summary = extract_frames(params.frames, ws.videos, ws.frames, client=client)
        _log_summary(summary)
    return summary


def densepose(params: Params, root: Path) -> dict[str, Any]:
    """``data/densepose``: per-video uint8 IUV archives aligned with the frames, and ``index.parquet``."""
    ws = Workspace(root)
    from dreampose.cluster import connect
    from dreampose.data.densepose import run_densepose
    from dreampose.data.densepose.run import rooted_config

    cfg = rooted_config(params.densepose, root)
    rt = runtime(params)
    with tracking.stage_run(
        "densepose",
        {**params.densepose.model_dump(), "runtime": rt.describe()},
        params.tracking.experiment,
        inputs={"frames": ws.frames},
    ):
        with connect(params.cluster) as client:
            summary = run_densepose(
                cfg,
                ws.frames,
                ws.raw,
                ws.densepose,
                device=rt.device,
                client=client,
                gpus=params.cluster.gpus,
            )
        _log_summary(summary)
    return summary


def manifest(params: Params, root: Path) -> dict[str, Any]:
    """``data/manifests``: train / subject / test pair manifests (Parquet)."""
    ws = Workspace(root)
    from dreampose.data.manifest import build_manifests

    inputs = {"frames_index": ws.frames / "index.parquet", "densepose_index": ws.densepose / "index.parquet"}
    run_params = {**params.manifest.model_dump(), "fvd_clip_len": params.score.fvd_clip_len}
    with tracking.stage_run("manifest", run_params, params.tracking.experiment, inputs=inputs):
        summary = build_manifests(
            params.manifest, ws.frames, ws.densepose, ws.manifests, fvd_clip_len=params.score.fvd_clip_len
        )
        _log_summary(summary)
    return summary


def base_model(params: Params, root: Path) -> dict[str, Any]:
    """``models/pretrained``: the base DreamPosePipeline (tiny, VAE pre-trained on the frames; or SD v1.x)."""
    ws = Workspace(root)
    from dreampose.models.builders import build_base_model

    model_params = {**params.model.model_dump(), "seed": params.seed, "height": params.frames.height}
    model_params["width"] = params.frames.width
    inputs = {"frames": ws.frames} if params.model.source == "tiny" else {}
    with tracking.stage_run("base_model", model_params, params.tracking.experiment, inputs=inputs):
        summary = build_base_model(
            params.model,
            ws.frames,
            ws.pretrained,
            seed=params.seed,
            height=params.frames.height,
            width=params.frames.width,
            root=root,
        )
        _log_summary(summary)
    return summary


def finetune_base(params: Params, root: Path) -> dict[str, Any]:
    """``models/base``: UNet + adapter finetuned on the training pairs (held-out loss before/after)."""
    ws = Workspace(root)
    from dreampose.training import finetune

    _check_frame_size(params, ws.pretrained)
    inputs = {"pretrained": ws.pretrained, "train_manifest": ws.train_manifest}
    cfg = params.train_base
    with tracking.stage_run("finetune_base", cfg.model_dump(), params.tracking.experiment, inputs=inputs) as r:
        summary = finetune.finetune_base(
            cfg,
            ws.pretrained,
            ws.train_manifest,
            root,
            ws.base,
            heldout_manifest=ws.test_manifest,
            size=(params.frames.height, params.frames.width),
            logger=finetune.MlflowLogger() if r is not None else None,
            device=runtime(params).device,
        )
        _log_summary(summary, "train/")
        if r is not None:
            import mlflow

            mlflow.set_tag("model_dir", str(ws.base.resolve()))
    return summary


def finetune_subject(params: Params, root: Path, subject: str) -> dict[str, Any]:
    """``models/subjects/<id>``: phase 1 UNet + adapter (aligned crops), phase 2 VAE decoder, on one subject."""
    ws = Workspace(root)
    from dreampose.training import finetune

    _check_frame_size(params, ws.base)
    out = ws.subject_model(subject)
    inputs = {"base": ws.base, "subject_manifest": ws.subject_manifest}
    cfg = params.train_subject
    with tracking.stage_run(
        "finetune_subject", cfg.model_dump(), params.tracking.experiment, inputs=inputs, tags={"subject": subject}
    ) as r:
        summary = finetune.finetune_subject(
            cfg,
            ws.base,
            ws.subject_manifest,
            subject,
            root,
            out,
            size=(params.frames.height, params.frames.width),
            logger=finetune.MlflowLogger() if r is not None else None,
            device=runtime(params).device,
        )
        _log_summary(summary, "train/")
        if r is not None:
            import mlflow

            mlflow.log_artifacts(str(out), artifact_path="model")
    return summary


def inspect(params: Params, root: Path) -> dict[str, Any]:
    """Manifest counts and schemas, and ``data/inspect/preview.png`` (a frame with its IUV overlaid).

    Not a DVC stage: the preview lives outside the stage outputs so looking never makes them stale.
    """
    ws = Workspace(root)
    from dreampose.data.manifest import inspect_manifests

    return inspect_manifests(ws.manifests, root, ws.inspect_preview)


def _log_files(paths: list[Path], artifact_dir: str) -> None:
    if not tracking.tracking_enabled():
        return
    import mlflow

    for p in paths:
        if p.is_file():
            mlflow.log_artifact(str(p), artifact_dir)


def render(params: Params, root: Path, subject: str) -> dict[str, Any]:
    """``renders/<subject>``: the subject model animated along its test pose windows."""
    ws = Workspace(root)
    from dreampose.render import render_subject

    _check_frame_size(params, ws.subject_model(subject))
    out = ws.render_dir(subject)
    rt = runtime(params)
    inputs = {"model": ws.subject_model(subject), "test_manifest": ws.test_manifest}
    run_params = {**params.render.model_dump(), "runtime": rt.describe()}
    with tracking.stage_run("render", run_params, params.tracking.experiment, inputs=inputs, tags={"subject": subject}):
        summary = render_subject(
            params.render,
            ws.subject_model(subject),
            ws.test_manifest,
            subject,
            root,
            out,
            fvd_manifest=ws.fvd_manifest,
            runtime=rt,
        )
        _log_summary({k: v for k, v in summary.items() if k != "frames"}, "render/")
        _log_files([out / n for n in ("video.mp4", "side_by_side.mp4", "poster.png", "render.json")], "render")
    return summary


def score(params: Params, root: Path) -> dict[str, Any]:
    """``metrics/evaluation.json``, its numbers ``metrics/scores.json`` (DVC metrics), ``metrics/per_video.parquet``,
    ``plots/per_frame.csv``."""
    ws = Workspace(root)
    from dreampose.evaluate import is_finite, score_renders

    if not params.eval.subjects:
        from dreampose.config import ConfigError

        raise ConfigError(
            "eval.subjects is empty, so no subject was finetuned or rendered: run `dreampose eval-subjects --write` "
            "after the manifest stage (the pipeline flow does this itself), or list test video ids in params.yaml"
        )
    dataset = "synthetic demo" if params.data.source == "synthetic" else "UBC Fashion test"
    rt = runtime(params)
    run_params = {"score": params.score.model_dump(), "render": params.render.model_dump(), "runtime": rt.describe()}
    inputs = {"renders": ws.renders, "test_manifest": ws.test_manifest}
    with tracking.stage_run("score", run_params, params.tracking.experiment, inputs=inputs):
        result = score_renders(
            params.score,
            params.render,
            ws.test_manifest,
            ws.renders,
            root,
            list(params.eval.subjects),
            ws.metrics,
            ws.plots,
            subjects_model_dir=ws.subjects,
            base_model_dir=ws.base,
            dataset=dataset,
            runtime=rt,
        )
        table = result.pop("table")
        print(table)
        if tracking.tracking_enabled():
            import mlflow

            flat = tracking.flatten({"ours": result["ours"], "baselines": result["baselines"]})
            # MLflow names only (quality/ours.l1 ...); metrics/scores.json keeps the record's own keys for DVC.
            mlflow.log_metrics({f"quality/{k}": float(v) for k, v in flat.items() if is_finite(v)})
            mlflow.log_text(table, "scores_table.txt")
        files = [ws.evaluation, ws.scores, ws.per_video, ws.per_frame_plot]
        _log_files(files, "scores")
        for subject in params.eval.subjects:
            _log_files(ws.render_videos(subject), f"videos/{subject}")
    return result


def report(params: Params, root: Path) -> None:
    """Print our scores beside the paper's Table 1 (published figures, UBC Fashion)."""
    ws = Workspace(root)
    from dreampose.report import report as build_report

    print(build_report(ws.evaluation))


def dump_summary(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, sort_keys=True, default=str)
