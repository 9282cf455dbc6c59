"""Logging a finished catalog item to MLflow: the pyfunc model, the review page and a ``review=pending``
registered version."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from dreampose.catalog.attempts import subject_tags
from dreampose.catalog.spec import ItemSpec
from dreampose.layout import Workspace


def _log_model(params, item: ItemSpec, run_dir: Path, model_dir: Path | None = None) -> None:
    """The subject model (``model_dir``, default the run's ``model/``; the base model when the item skipped the
    subject finetune) as an MLflow ``pyfunc`` model under the run's ``model/``; a subject model references its base,
    logged once per content hash (``mlflow_model.log_base``)."""
    import mlflow

    from dreampose.catalog.mlflow_model import log_base, save_subject_model
    from dreampose.models.subject import is_subject_dir, resolve_base

    staging = run_dir / "mlflow_model"
    model_dir = model_dir if model_dir is not None else run_dir / "model"
    save_subject_model(
        staging,
        model_dir,
        run_dir / "input" / "photo.png",
        params.render.model_dump(),
        params.manifest.pose_window,
        example=item.seq.iuv[item.seq.frame_ids[:1]],
        base_ref=log_base(resolve_base(model_dir)) if is_subject_dir(model_dir) else None,
    )
    try:
        mlflow.log_artifacts(str(staging), "model")
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the run directory keeps the subject model in model/


def _review_page(params, root: Path, item: ItemSpec, info, run_id: str, frames: np.ndarray, scores) -> Path:
    """Write the version's self-contained review page into the run directory."""
    from dreampose.catalog.review_page import PAGE_NAME, ReviewPage, demo_reference, write_page
    from dreampose.render import iuv_to_rgb

    page = ReviewPage(
        item_id=item.item_id,
        model_name=info.name,
        version=info.version,
        photo=item.photo.pixels,
        pose=np.stack([iuv_to_rgb(item.seq.iuv[t]) for t in item.seq.frame_ids]),
        generated=frames,
        truth=item.truth,
        fps=params.render.fps,
        scores=scores,
        reference=demo_reference(root),
        reference_label="demo evaluation (metrics/scores.json)",
        run_id=run_id,
        notes=[*item.photo.notes, f"photo pose: {item.photo_iuv_source}", f"poses: {item.seq.source}"],
    )
    return write_page(page, Workspace(root).catalog_item(item.item_id) / run_id / PAGE_NAME)


def _description(run, model_name: str, item_id: str) -> str:
    """The version's description (Markdown in the MLflow UI): a link to the review page and the load URI."""
    from dreampose import registry

    page = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifacts/review.html"
    uri = registry.approved_uri(model_name, item_id)
    return (
        f"Catalog item **{item_id}**. [Open the review page]({page}) (or `dreampose review show {item_id}`).\n\n"
        f'Once approved it loads as `mlflow.pyfunc.load_model("{uri}")`.'
    )


def log_and_register(
    params,
    root: Path,
    item: ItemSpec,
    run_id: str,
    run_dir: Path,
    scores,
    summary,
    frames,
    model_dir: Path | None = None,
) -> Any:
    """Quality metrics, the pyfunc model, media, the registered version and its review page."""
    import mlflow

    from dreampose import registry

    mlflow.log_metrics({f"quality/{k}": v for k, v in scores.items() if np.isfinite(v)})
    _log_model(params, item, run_dir, model_dir)
    for f in ("video.mp4", "side_by_side.mp4", "poster.png", "render.json"):
        if (run_dir / "render" / f).is_file():
            mlflow.log_artifact(str(run_dir / "render" / f), "render")
    for photo in sorted((run_dir / "input").glob("photo*.png")):
        mlflow.log_artifact(str(photo), "input")
    mlflow.log_dict(summary, "metrics.json")
    runs = f"runs:/{run_id}"
    run = mlflow.active_run()
    info = registry.register_version(
        params.tracking.registered_model,
        source=f"{mlflow.get_artifact_uri()}/model",
        run_id=run_id,
        item_id=item.item_id,
        tags={
            registry.INPUT_KEY_TAG: item.key,
            "link.review_page": f"{runs}/review.html",
            "link.video": f"{runs}/render/video.mp4",
            "link.side_by_side": f"{runs}/render/side_by_side.mp4",
            "link.poster": f"{runs}/render/poster.png",
            "link.metrics": f"{runs}/metrics.json",
            "base_model.sha256": item.base_digest,
            "photo": item.photo.source[:500],
            "poses": item.seq.source[:500],
            **subject_tags(item),
        },
        description=_description(run, params.tracking.registered_model, item.item_id),
    )
    page = _review_page(params, root, item, info, run_id, frames, scores)
    mlflow.log_artifact(str(page))
    mlflow.set_tag("registered_version", info.version)
    mlflow.set_tag("registered_model", f"models:/{info.name}/{info.version}")
    return info
