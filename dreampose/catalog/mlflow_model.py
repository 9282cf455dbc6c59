"""A catalog item's subject model as a real MLflow model (``pyfunc`` flavor).

The MLflow model directory holds ``MLmodel``, the wrapper and its artifacts:
``artifacts/model/`` (the subject model: what the subject finetune changed, see ``dreampose.models.subject``; or a
whole diffusers folder when the item rendered with the base model), the base model a subject model is rebuilt on
(``artifacts/base_ref.json``: the ``runs:/`` URI of the base logged once per content hash by :func:`log_base`, fetched
on first load into ``$DREAMPOSE_BASE_CACHE`` (default ``~/.cache/dreampose/bases``) and checked against its SHA-256;
or, saved without a tracking store, the folder itself in ``artifacts/base/``),
``artifacts/photo.png`` (the product photo the subject was finetuned on) and ``artifacts/render_settings.json``
(render settings and pose window). ``predict`` takes a pose sequence and returns frames:

    model = mlflow.pyfunc.load_model("models:/dreampose-subject@approved-sku-42")
    frames = model.predict(iuv, params={"frame_ids": [0, 2, 4]})  # iuv uint8 (T, H, W, 3) -> uint8 (N, H, W, 3)

Frames are seeded per (render seed, frame id), so the same poses and frame ids reproduce the registered
render exactly. The ``dreampose`` package must be importable where the model is loaded.
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

try:  # the wrapper subclasses PythonModel; importing mlflow is only needed here
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - mlflow is a core dependency
    PythonModel = object  # type: ignore[misc,assignment]

PIPELINE, BASE, BASE_REF, PHOTO, SETTINGS = "pipeline", "base", "base_ref", "photo", "settings"
BASE_SHA_TAG = "dreampose.base_sha256"
CACHE_ENV = "DREAMPOSE_BASE_CACHE"
REQUIREMENTS = ("torch", "diffusers", "transformers", "numpy", "pillow", "mlflow")


def frame_ids_for(num_frames: int, frame_ids: Any) -> list[int]:
    """The frames to render: all of ``range(num_frames)`` when ``frame_ids`` is empty/None, else checked ids."""
    if frame_ids is None or len(frame_ids) == 0:
        return list(range(num_frames))
    ids = [int(f) for f in frame_ids]
    bad = [f for f in ids if not 0 <= f < num_frames]
    if bad:
        raise ValueError(f"frame_ids {bad} are outside the {num_frames}-frame pose sequence")
    return ids


def check_iuv(iuv: Any, size: tuple[int, int]) -> np.ndarray:
    """A pose sequence as uint8 ``(T, H, W, 3)`` at the model's ``size``; a clear error otherwise."""
    arr = np.asarray(iuv)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"poses must be IUV frames (T, H, W, 3), got shape {arr.shape}")
    if tuple(arr.shape[1:3]) != tuple(size):
        raise ValueError(f"poses are {tuple(arr.shape[1:3])} (H, W) but this model renders {tuple(size)}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 255:
            raise ValueError(f"poses must be uint8 IUV (0..255), got {arr.dtype}")
        arr = arr.astype(np.uint8)
    return arr


class DreamPoseSubjectModel(PythonModel):
    """``pyfunc`` wrapper: pose sequence in, rendered frames out (see the module docstring)."""

    def load_context(self, context) -> None:
        from dreampose.config import RenderConfig
        from dreampose.io import read_rgb
        from dreampose.models.subject import load_subject_pipeline

        base = context.artifacts.get(BASE)
        if BASE_REF in context.artifacts:
            base = fetch_base(json.loads(Path(context.artifacts[BASE_REF]).read_text()))
        self.pipe = load_subject_pipeline(Path(context.artifacts[PIPELINE]), Path(base) if base else None)
        self.photo = read_rgb(Path(context.artifacts[PHOTO]))
        settings = json.loads(Path(context.artifacts[SETTINGS]).read_text())
        self.render_cfg = RenderConfig(**settings["render"])
        self.window = int(settings["pose_window"])

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> np.ndarray:
        import torch

        from dreampose.data.densepose.iuv import pose_window
        from dreampose.render import render_frames, smooth_over_runs, smoothing_support

        iuv = check_iuv(model_input, self.photo.shape[:2])
        ids = frame_ids_for(len(iuv), (params or {}).get("frame_ids"))
        k = self.render_cfg.temporal_smoothing
        # As the catalog render does: when smoothing, the neighbours are rendered too, then smoothed over
        # consecutive frames.
        needed = smoothing_support(ids, k, len(iuv)) if k > 1 else ids
        poses = torch.stack([pose_window(iuv, t, self.window) for t in needed])
        frames = render_frames(self.pipe, self.photo, poses, self.render_cfg, frame_ids=needed)
        if k <= 1:
            return frames
        smoothed = smooth_over_runs(dict(zip(needed, frames, strict=True)), k)
        return np.stack([smoothed[f] for f in ids])


def signature(height: int, width: int):
    """Input: uint8 IUV ``(-1, H, W, 3)``; output: uint8 frames ``(-1, H, W, 3)``; param ``frame_ids``
    (default ``[]``: every frame of the sequence)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    tensor = Schema([TensorSpec(np.dtype(np.uint8), (-1, height, width, 3))])
    out = Schema([TensorSpec(np.dtype(np.uint8), (-1, height, width, 3))])
    params = ParamSchema([ParamSpec("frame_ids", "long", [], shape=(-1,))])
    return ModelSignature(inputs=tensor, outputs=out, params=params)


def pip_requirements() -> list[str]:
    """Pinned to what is installed (inferring them would load the model in a subprocess)."""
    reqs = []
    for name in REQUIREMENTS:
        try:
            reqs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            reqs.append(name)
    return reqs


def base_cache() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dreampose" / "bases")


def log_base(base_dir: Path) -> dict[str, str]:
    """The base model folder as artifacts of one MLflow run per content hash in the active experiment (logged the
    first time, found by its ``dreampose.base_sha256`` tag after); returns ``{"uri": "runs:/<id>/base", "sha256"}``.

    Catalog items registered on one base share that one copy; each registered model holds only its subject delta."""
    import mlflow

    from dreampose.models.subject import base_sha256

    sha = base_sha256(base_dir)
    client = mlflow.MlflowClient()
    active = mlflow.active_run()
    exp_id = active.info.experiment_id if active is not None else mlflow.get_experiment_by_name("Default").experiment_id
    found = client.search_runs(
        [exp_id], filter_string=f"tags.`{BASE_SHA_TAG}` = '{sha}' and attributes.status = 'FINISHED'", max_results=1
    )
    if found:
        run_id = found[0].info.run_id
    else:
        run = client.create_run(exp_id, tags={BASE_SHA_TAG: sha}, run_name=f"base_model@{sha[:12]}")
        run_id = run.info.run_id
        try:
            client.log_artifacts(run_id, str(base_dir), "base")
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id)
    return {"uri": f"runs:/{run_id}/base", "sha256": sha}


def fetch_base(ref: dict[str, str]) -> Path:
    """The local copy of a logged base (:func:`log_base`): ``base_cache()/<sha256>``, downloaded when absent."""
    import shutil
    import tempfile

    import mlflow

    from dreampose.models.subject import base_sha256

    local = base_cache() / ref["sha256"]
    if (local / "model_index.json").is_file():
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=local.parent, prefix=f".{ref['sha256'][:12]}-"))
    try:
        got = Path(mlflow.artifacts.download_artifacts(ref["uri"], dst_path=str(tmp)))
        if base_sha256(got) != ref["sha256"]:
            raise ValueError(f"{ref['uri']}: the logged base model's SHA-256 is not {ref['sha256']}")
        try:
            os.replace(got, local)
        except OSError:  # another process put it there first
            if not (local / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return local


def save_subject_model(
    path: Path,
    pipeline_dir: Path,
    photo_png: Path,
    render: dict[str, Any],
    pose_window: int,
    example: np.ndarray,
    base_ref: dict[str, str] | None = None,
) -> Path:
    """Write an MLflow ``pyfunc`` model directory at ``path`` (must not exist yet). A subject model directory needs
    its base: referenced by ``base_ref`` (:func:`log_base`), else copied in (``artifacts/base/``)."""
    import mlflow

    from dreampose.models.subject import is_subject_dir, resolve_base

    path = Path(path)
    artifacts = {PIPELINE: str(pipeline_dir)}
    ref_file = path.with_name("base_ref.json")
    if is_subject_dir(pipeline_dir) and base_ref is not None:
        ref_file.write_text(json.dumps(base_ref, indent=2))
        artifacts[BASE_REF] = str(ref_file)
    elif is_subject_dir(pipeline_dir):
        artifacts[BASE] = str(resolve_base(pipeline_dir))
    settings = path.with_name("render_settings.json")
    settings.write_text(json.dumps({"render": render, "pose_window": int(pose_window)}, indent=2))
    try:
        h, w = example.shape[1:3]
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=DreamPoseSubjectModel(),
            artifacts={**artifacts, PHOTO: str(photo_png), SETTINGS: str(settings)},
            signature=signature(h, w),
            input_example=(np.ascontiguousarray(example, dtype=np.uint8), {"frame_ids": [0]}),
            pip_requirements=pip_requirements(),
        )
    finally:
        settings.unlink(missing_ok=True)
        ref_file.unlink(missing_ok=True)
    return path
