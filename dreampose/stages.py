"""The pipeline's stages: each takes the validated ``Params`` and the workspace root, calls
one library function with its own config section and explicit paths, and records the run in
MLflow. The CLI (and so DVC and Prefect) calls these; nothing here parses arguments.

Paths are the DVC layout of DESIGN.md §1, relative to ``root``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from dreampose import tracking
from dreampose.config import Params

log = logging.getLogger("dreampose")

RAW = Path("data/raw")
FRAMES = Path("data/frames")
DENSEPOSE = Path("data/densepose")
MANIFESTS = Path("data/manifests")
PRETRAINED = Path("models/pretrained")
BASE = Path("models/base")
SUBJECTS = Path("models/subjects")
RENDERS = Path("renders")
METRICS = Path("metrics")
PLOTS = Path("plots")


def _log_summary(summary: dict[str, Any]) -> None:
    """Numbers go to MLflow metrics, the whole summary to a JSON artifact."""
    if not tracking.tracking_enabled():
        return
    import mlflow

    nums = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if nums:
        mlflow.log_metrics(nums)
    mlflow.log_dict(summary, "summary.json")


def download(params: Params, root: Path) -> dict[str, Any]:
    """``data/raw``: synthetic videos (+ ground-truth IUV) or the UBC Fashion videos."""
    out = root / RAW
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
    from dreampose.data.frames import extract_frames

    with tracking.stage_run(
        "frames", params.frames.model_dump(), params.tracking.experiment, inputs={"videos": root / RAW / "videos"}
    ):
        summary = extract_frames(params.frames, root / RAW / "videos", root / FRAMES)
        _log_summary(summary)
    return summary


def densepose(params: Params, root: Path) -> dict[str, Any]:
    """``data/densepose``: per-video uint8 IUV archives aligned with the frames, and ``index.parquet``."""
    from dreampose.data.densepose import run_densepose

    cfg = params.densepose
    # Weight/config paths in params.yaml are relative to the workspace root, not the working directory.
    cfg = cfg.model_copy(
        update={"weights": str(root / cfg.weights), "detectron2_config": str(root / cfg.detectron2_config)}
    )
    with tracking.stage_run(
        "densepose", params.densepose.model_dump(), params.tracking.experiment, inputs={"frames": root / FRAMES}
    ):
        summary = run_densepose(cfg, root / FRAMES, root / RAW, root / DENSEPOSE)
        _log_summary(summary)
    return summary


def manifest(params: Params, root: Path) -> dict[str, Any]:
    """``data/manifests``: train / subject / test pair manifests (Parquet)."""
    from dreampose.data.manifest import build_manifests

    inputs = {"frames_index": root / FRAMES / "index.parquet", "densepose_index": root / DENSEPOSE / "index.parquet"}
    with tracking.stage_run("manifest", params.manifest.model_dump(), params.tracking.experiment, inputs=inputs):
        summary = build_manifests(
            params.manifest, root / FRAMES, root / DENSEPOSE, root / MANIFESTS, list(params.eval.subjects)
        )
        _log_summary(summary)
    return summary


def inspect(params: Params, root: Path) -> dict[str, Any]:
    """Manifest counts and schemas, and ``data/inspect/preview.png`` (a frame with its IUV overlaid).

    Not a DVC stage: the preview lives outside the stage outputs so looking never makes them stale.
    """
    from dreampose.data.manifest import inspect_manifests

    return inspect_manifests(root / MANIFESTS, root, root / "data" / "inspect" / "preview.png")


def dump_summary(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, sort_keys=True, default=str)
