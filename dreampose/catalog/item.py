"""The catalog item: validate → subject finetune from the base model → render → score → log to MLflow →
register a ``review=pending`` version, with a reuse key so an identical item is not trained twice.
Every run writes only under ``catalog/<item_id>/<run_id>/`` so two items running at once never mix.
``run_catalog_item`` holds the reuse check and attempt bookkeeping; ``_train_render_register`` the locked
finetune, render, scoring and registration.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dreampose.catalog.attempts import remove_run_dir, run_tags, settle_attempts
from dreampose.catalog.photo import Photo, photo_url_policy, validate_photo
from dreampose.catalog.poses import PoseSequence, densepose_backend, item_id_from, load_ground_truth, resolve_poses
from dreampose.catalog.register import log_and_register
from dreampose.catalog.spec import ItemSpec
from dreampose.io import read_rgb, write_iuv_archive
from dreampose.layout import Workspace
from dreampose.metrics.item import appearance_drift, temporal_l1

# diffusers' from_pretrained patches torch module construction process-wide while it loads, so two
# items in one process (threads) must not load or train at the same time; separate processes (the
# Prefect process worker runs each flow run in its own) are fully independent.
_MODEL_LOCK = threading.Lock()

# ---------------------------------------------------------------- photo pose and scoring


def photo_pose(photo: Photo, seq: PoseSequence, params, root: Path = Path(".")) -> tuple[np.ndarray, str]:
    """The photo's own IUV: detected by a real DensePose backend (no person → error), else known from the
    workspace (a test video's input frame), else the sequence's first pose (the synthetic-backend limitation)."""
    if params.densepose.backend != "synthetic":
        import pandas as pd

        h, w = photo.pixels.shape[:2]
        backend = densepose_backend(params.densepose, root, h, w)
        rows = pd.DataFrame({"video": ["photo"], "split": ["catalog"], "frame": [0]})
        result = backend.predict(photo.pixels[None], rows)[0]
        if not result.person_found:
            raise ValueError(
                f"photo {photo.source}: DensePose found no person (min score {params.densepose.min_score})"
            )
        return result.iuv, "densepose"
    if seq.photo_iuv is not None:
        return seq.photo_iuv, "test video input frame"
    return seq.iuv[seq.frame_ids[0]], "first pose of the sequence (synthetic backend)"


def score_item(
    frames: np.ndarray, seq: PoseSequence, photo: np.ndarray, photo_iuv: np.ndarray, truth: np.ndarray | None
) -> dict[str, float]:
    """What can be scored for a catalog item; pixel metrics against ground truth when it is given."""
    iuv = seq.iuv[seq.frame_ids]
    scores = {
        "temporal_l1": temporal_l1(frames),
        "appearance_drift": appearance_drift(frames, iuv, photo, photo_iuv),
        "num_frames": float(len(frames)),
    }
    if truth is not None:
        from dreampose.metrics.pixel import l1, psnr, ssim

        scores.update(
            l1=float(np.mean(l1(frames, truth))),
            ssim=float(np.mean(ssim(frames, truth))),
            psnr=float(np.mean(psnr(frames, truth))),
        )
    return scores


# ---------------------------------------------------------------- the catalog item


def model_digest(model_dir: Path) -> str:
    """A cheap identity for a model directory: relative paths, sizes and md5 of files up to 64 MB."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.relative_to(model_dir)}:{size}".encode())
        if size <= 64 << 20:
            h.update(hashlib.md5(f.read_bytes()).digest())
    return h.hexdigest()


def input_key(
    photo: np.ndarray,
    seq: PoseSequence,
    base_digest: str,
    params,
    more_photos: tuple[np.ndarray, ...] = (),
    finetune: bool = True,
) -> str:
    """Identity of a catalog item's inputs: photo pixels (every photo, in order), poses, base model and the settings
    that shape the result. One photo with the subject finetune keys exactly as before those options existed."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(photo).tobytes())
    for extra in more_photos:
        h.update(b"|photo|" + np.ascontiguousarray(extra).tobytes())
    h.update(np.ascontiguousarray(seq.iuv[seq.frame_ids]).tobytes())
    h.update(json.dumps(seq.frame_ids).encode())
    h.update(base_digest.encode())
    render = params.render.model_dump()
    if not render["temporal_smoothing"]:  # off: keys stay as they were before the setting existed
        del render["temporal_smoothing"]
    settings: dict[str, Any] = {"train_subject": params.train_subject.model_dump(), "render": render}
    if not finetune:  # the base model renders: the subject settings play no part
        settings = {"render": render, "subject_finetune": False}
    if params.runtime.dtype != "fp32":  # reduced-precision renders differ; fp32 keys stay as they always were
        settings["runtime_dtype"] = params.runtime.dtype
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def photo_file(k: int) -> str:
    """The run directory's name for photo ``k`` (0 = the conditioning photo, ``input/photo.png`` as always)."""
    return "input/photo.png" if k == 0 else f"input/photo_{k}.png"


def _write_subject_inputs(
    run_dir: Path, item_id: str, photos: list[np.ndarray], photo_iuvs: list[np.ndarray], window: int
) -> Path:
    """The subject-manifest rows a finetune expects, one per photo: each photo as both input and target, with its
    own pose repeated over the window (photos are not a video); as for a test video's ``subject_frames``."""
    import pyarrow as pa

    from dreampose.data.manifest import SCHEMA, write_parquet_atomic

    inp = run_dir / "input"
    inp.mkdir(parents=True, exist_ok=True)
    for k, photo in enumerate(photos):
        Image.fromarray(photo).save(run_dir / photo_file(k))
    write_iuv_archive(inp / "photo_iuv.npz", np.stack(photo_iuvs))
    rows = [
        {
            "subject_id": item_id,
            "video": item_id,
            "split": "catalog",
            "input_frame": k,
            "target_frame": k,
            "input_path": photo_file(k),
            "target_path": photo_file(k),
            "densepose_path": "input/photo_iuv.npz",
            "pose_frames": [k] * window,
        }
        for k in range(len(photos))
    ]
    table = pa.Table.from_pylist([{k: row.get(k) for k in SCHEMA.names} for row in rows], schema=SCHEMA)
    manifest = inp / "subject.parquet"
    write_parquet_atomic(table, manifest)
    return manifest


def _reused(info, item_id: str) -> dict[str, Any]:
    from dreampose import registry

    return {
        "item_id": item_id,
        "reused": True,
        "model_name": info.name,
        "version": info.version,
        "review": info.review,
        "run_id": info.run_id,
        "video": info.links.get("video"),
        "scores": info.metrics,
        "registry": registry.describe(info),
    }


def run_catalog_item(
    params,
    root: Path,
    photo: str | list[str] | tuple[str, ...],
    poses: str,
    item_id: str | None = None,
    ground_truth: str | None = None,
    reuse: bool = False,
    base_dir: Path | None = None,
    allow_private_urls: bool = False,
    flow_run_id: str | None = None,
    attempt_key: str | None = None,
    finetune: bool = True,
) -> dict[str, Any]:
    """One catalog item end to end; returns a JSON-able summary with the registered version.

    ``photo``: one photo, or several photos of the same garment (paper supplement, "Multiple Input Frames"): the
    first is the conditioning photo of the render, all of them are subject-finetune targets. Each is validated,
    resized and center-cropped like a single photo. ``finetune=False`` skips the subject finetune and renders
    with the base model (tagged ``catalog.subject_finetune=false`` on the run and the version; one photo only).

    A photo URL follows ``params.photo_url``; ``allow_private_urls`` also admits internal addresses.

    ``attempt_key`` (the Prefect flow run id) names one logical run across its attempts: a retry first
    settles what an earlier attempt of the same key left (a killed process cannot clean up after itself):
    a finished, registered attempt is returned as is (registered once), an unfinished one is marked
    KILLED, its registry versions deleted and its ``catalog/<item>/<run_id>/`` directory removed.

    ``reuse``: when a version was already registered for exactly these inputs (photo, poses, base
    model, subject/render settings), return it instead of training again. Bad input raises
    ``ValueError``/``FileNotFoundError`` before anything is written or registered. ``flow_run_id``
    (the Prefect flow run, when there is one) is tagged on the MLflow run.
    """
    from dreampose import registry, tracking
    from dreampose.runtime import resolve_runtime

    runtime = resolve_runtime(params.runtime)  # a device this machine lacks fails before any work
    root = Path(root).resolve()
    base_dir = Path(base_dir) if base_dir is not None else Workspace(root).base
    photos = [photo] if isinstance(photo, str) else list(photo)
    if not photos or not all(isinstance(p, str) and p for p in photos):
        raise ValueError(f"photo: expected one or more paths or URLs, got {photo!r}")
    if not finetune and len(photos) > 1:
        raise ValueError(
            f"{len(photos)} photos without the subject finetune: the extra photos are finetune targets only; "
            "give one photo, or drop --no-finetune"
        )
    item_id = item_id_from(photos[0], item_id)
    h, w = params.frames.height, params.frames.width
    policy = photo_url_policy(params.photo_url, allow_private_urls)
    checked, *more = [validate_photo(p, h, w, url_policy=policy) for p in photos]
    if not (base_dir / "model_index.json").is_file():
        raise FileNotFoundError(f"{base_dir}: no base model (run the pipeline up to finetune_base first)")
    from dreampose.models.sizes import check_saved_model_frame_size

    check_saved_model_frame_size(base_dir, h, w)
    seq = resolve_poses(poses, root, params)
    truth = load_ground_truth(ground_truth, seq, root, params.frames) if ground_truth else None
    p_iuv, p_iuv_source = photo_pose(checked, seq, params, root)
    more_iuvs = tuple(photo_pose(m, seq, params, root)[0] for m in more)
    base_digest = model_digest(base_dir)
    key = input_key(checked.pixels, seq, base_digest, params, tuple(m.pixels for m in more), finetune)
    name = params.tracking.registered_model
    enabled = tracking.tracking_enabled()
    if enabled:
        tracking.configure(params.tracking.experiment, root)
        if attempt_key:
            done = settle_attempts(root, item_id, attempt_key, params.tracking.experiment, name)
            if done is not None:
                return _reused(done, item_id)
        if reuse:
            found = registry.find_by_input_key(name, key)
            if found is not None:
                return _reused(found, item_id)
    item = ItemSpec(
        item_id, checked, seq, truth, p_iuv, p_iuv_source, key, base_digest, tuple(more), more_iuvs, finetune
    )
    attempt_key = attempt_key or uuid.uuid4().hex
    try:
        return _train_render_register(params, root, base_dir, item, enabled, flow_run_id, runtime, attempt_key)
    except BaseException:  # e.g. logging or registration failed: no version, no directory stays
        if enabled:
            with contextlib.suppress(Exception):
                settle_attempts(root, item_id, attempt_key, params.tracking.experiment, name)
        raise


def _train_render_register(
    params,
    root: Path,
    base_dir: Path,
    item: ItemSpec,
    enabled: bool,
    flow_run_id: str | None = None,
    runtime=None,
    attempt_key: str | None = None,
) -> dict[str, Any]:
    """Finetune → render → score → log → register, all under ``catalog/<item_id>/<run_id>/``.

    The render runs on ``runtime`` (device, dtype, offload); the finetune trains on its device (accelerate)."""
    from dreampose import registry, tracking
    from dreampose.models.subject import load_subject_pipeline
    from dreampose.render import render_sequence
    from dreampose.training.finetune import finetune_subject

    run_ctx = (
        tracking.stage_run(
            "catalog_item",
            {
                "train_subject": params.train_subject.model_dump(),
                "render": params.render.model_dump(),
                "runtime": runtime.describe() if runtime is not None else None,
            },
            params.tracking.experiment,
            tags=run_tags(item, flow_run_id, attempt_key),
            run_name=f"catalog_item@{item.item_id}",
        )
        if enabled
        else contextlib.nullcontext(None)
    )
    with run_ctx as run:
        run_id = run.info.run_id if run is not None else uuid.uuid4().hex
        run_dir = Workspace(root).catalog_item(item.item_id) / run_id
        if run_dir.exists():
            raise ValueError(f"{run_dir} already exists; refusing to mix two runs' outputs")
        try:
            window = params.manifest.pose_window
            photos = [item.photo.pixels, *(m.pixels for m in item.more_photos)]
            manifest = _write_subject_inputs(
                run_dir, item.item_id, photos, [item.photo_iuv, *item.more_photo_iuvs], window
            )
            t0 = time.perf_counter()
            size = (params.frames.height, params.frames.width)
            model_dir = run_dir / "model" if item.finetune else base_dir
            with _MODEL_LOCK:
                trained: dict[str, Any] = {"skipped": "no subject finetune: the base model renders"}
                if item.finetune:
                    trained = finetune_subject(
                        params.train_subject,
                        base_dir,
                        manifest,
                        item.item_id,
                        run_dir,
                        model_dir,
                        size=size,
                        logger=tracking.MlflowLogger(prefix="train/") if run is not None else None,
                        device=runtime.device if runtime is not None else None,
                    )
                t_train = time.perf_counter() - t0
                pipe = load_subject_pipeline(model_dir, base_dir, runtime)
            render = render_sequence(
                pipe,
                item.photo.pixels,
                item.seq.iuv,
                params.render,
                run_dir / "render",
                window=params.manifest.pose_window,
                frame_ids=item.seq.frame_ids,
            )
            frames = np.stack([read_rgb(run_dir / "render" / "frames" / f"{f:05d}.png") for f in item.seq.frame_ids])
            t1 = time.perf_counter()
            scores = score_item(frames, item.seq, item.photo.pixels, item.photo_iuv, item.truth)
            t_score = time.perf_counter() - t1
            summary = {
                "item_id": item.item_id,
                "reused": False,
                "run_id": run_id,
                "run_dir": str(run_dir),
                "photo": item.photo.source,
                "photos": [item.photo.source, *(m.source for m in item.more_photos)],
                "subject_finetune": item.finetune,
                "model_dir": str(model_dir),
                "photo_notes": list(item.photo.notes),
                "photo_pose": item.photo_iuv_source,
                "poses": item.seq.source,
                "frames": item.seq.frame_ids,
                "input_key": item.key,
                "finetune": {k: v for k, v in trained.items() if isinstance(v, (int, float, str))},
                "scores": scores,
                "seconds": {"finetune": round(t_train, 2), **render.get("seconds", {}), "score": round(t_score, 3)},
                "video": str(run_dir / "render" / "video.mp4"),
                "poster": str(run_dir / "render" / "poster.png"),
            }
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        except BaseException:
            remove_run_dir(root, item.item_id, run_id)  # nothing half-written survives a failed item
            raise
        if run is None:
            return {**summary, "model_name": None, "version": None, "review": None}
        t2 = time.perf_counter()
        info = log_and_register(params, root, item, run_id, run_dir, scores, summary, frames, model_dir)
    seconds = {**summary["seconds"], "registry": round(time.perf_counter() - t2, 2)}  # log + register
    return {
        **summary,
        "seconds": seconds,
        "model_name": info.name,
        "version": info.version,
        "review": info.review,
        "review_page": info.links.get("review_page"),
        "approved_uri": registry.approved_uri(info.name, item.item_id),
    }
