"""Catalog items: one product photo + a pose sequence in, a reviewed subject model and video out.

``validate_photo`` turns whatever a catalog team uploads into the model's ``H x W`` RGB frame or
fails with one clear line (not an image, truncated, tiny, decompression bomb, blank). CMYK, RGBA,
16-bit and EXIF-rotated photos are converted, not rejected.

``run_catalog_item`` is the library core of the ``catalog-item`` flow: validate → subject finetune
from the base model → render → score → log to MLflow → register a ``review=pending`` version.
Every run writes only under ``catalog/<item_id>/<run_id>/`` so two items running at once never mix.

Person detection: with a real DensePose backend (``torchscript``/``detectron2``) the photo must
contain a detected person. The ``synthetic`` backend cannot look at arbitrary photos, so there the
check is only that the photo is not blank or uniform, and the photo's own pose is taken to be the
first pose of the sequence (true for the demo, whose photo is frame 0 of a test video).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dreampose.io import read_rgb
from dreampose.safe_fetch import UrlPolicy, fetch_url

# diffusers' from_pretrained patches torch module construction process-wide while it loads, so two
# items in one process (threads) must not load or train at the same time; separate processes (the
# Prefect process worker runs each flow run in its own) are fully independent.
_MODEL_LOCK = threading.Lock()

MIN_SIDE = 64
MAX_PIXELS = 40_000_000  # 40 MP: larger than any catalog camera, far below a decompression bomb
MAX_DOWNLOAD_BYTES = 50_000_000
BLANK_STD = 2.0 / 255.0  # a photo whose pixels barely vary holds no person


@dataclass(frozen=True)
class Photo:
    """A validated photo: ``pixels`` is uint8 ``(H, W, 3)`` at the model's size."""

    pixels: np.ndarray
    source: str
    original_size: tuple[int, int]  # (width, height) after EXIF rotation
    original_mode: str
    notes: tuple[str, ...] = field(default=())


def read_photo_bytes(
    photo: str,
    timeout_s: float = 30.0,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
    url_policy: UrlPolicy | None = None,
) -> bytes:
    """The photo's bytes from a local path or an http(s) URL (size-capped).

    A URL may not reach loopback, private, link-local or other internal addresses, nor redirect to them,
    unless ``url_policy`` allows it (``dreampose.safe_fetch``).
    """
    parsed = urlparse(photo)
    if parsed.scheme in ("http", "https"):
        try:
            return fetch_url(photo, url_policy or UrlPolicy(), timeout_s=timeout_s, max_bytes=max_bytes)
        except ValueError as err:  # BlockedUrlError stays itself
            raise type(err)(f"photo {err}") from None
    if parsed.scheme and len(parsed.scheme) > 1:  # a one-letter "scheme" is a Windows drive
        raise ValueError(f"photo {photo!r}: only local paths and http(s) URLs are accepted")
    path = Path(photo)
    if not path.is_file():
        raise FileNotFoundError(f"photo {photo}: no such file")
    if path.stat().st_size > max_bytes:
        raise ValueError(f"photo {photo} is larger than {max_bytes} bytes")
    return path.read_bytes()


def photo_url_policy(cfg, allow_private: bool = False) -> UrlPolicy:
    """The URL policy of a ``photo_url`` config section; ``allow_private`` (a CLI flag) widens it."""
    return UrlPolicy.of(cfg.allow_private or allow_private, cfg.allow_hosts, cfg.max_redirects)


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer and float images to 8 bits (``convert('RGB')`` would clip at 255)."""
    arr = np.asarray(img)
    if img.mode == "F":
        arr8 = np.clip(arr * 255.0 + 0.5, 0, 255)
    else:
        # PNG 16-bit greyscale opens as I;16 (or I); its range is 0..65535.
        arr8 = np.clip(arr.astype(np.float64) / 257.0 + 0.5, 0, 255)
    return Image.fromarray(arr8.astype(np.uint8)).convert("RGB")


def to_rgb(img: Image.Image) -> tuple[Image.Image, list[str]]:
    """Any Pillow mode → 8-bit RGB; transparency composited on white. Returns the notes of what changed."""
    notes: list[str] = []
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _sixteen_bit_to_rgb(img), [f"converted {mode} to 8-bit RGB (scaled, not clipped)"]
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        notes.append(f"composited {mode} on white")
        return Image.alpha_composite(white, rgba).convert("RGB"), notes
    if img.mode != "RGB":
        notes.append(f"converted {mode} to RGB")
        img = img.convert("RGB")
    return img, notes


def resize_center_crop(img: Image.Image, height: int, width: int) -> Image.Image:
    """Resize (aspect kept) so the image covers ``height x width``, then center-crop: the frames-stage geometry."""
    from dreampose.data.frames import resize_center_crop as fit

    return Image.fromarray(fit(np.asarray(img), height, width))


def is_blank(pixels: np.ndarray, threshold: float = BLANK_STD) -> bool:
    """True when every channel's standard deviation (in [0, 1] units) is below ``threshold``."""
    arr = np.asarray(pixels, dtype=np.float64) / 255.0
    return bool(arr.reshape(-1, arr.shape[-1]).std(axis=0).max() < threshold)


def validate_photo(
    photo: str,
    height: int,
    width: int,
    min_side: int | None = None,
    max_pixels: int = MAX_PIXELS,
    url_policy: UrlPolicy | None = None,
) -> Photo:
    """Load, check and convert one catalog photo to uint8 ``(height, width, 3)``.

    A side shorter than ``min_side`` (default: 64 px, or the model's side when that is smaller) is
    refused. Raises ``ValueError`` (``FileNotFoundError`` for a missing path) with one line naming the photo.
    """
    data = read_photo_bytes(photo, url_policy=url_policy)
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ValueError(f"photo {photo}: not an image (Pillow cannot identify it)") from None
    except Image.DecompressionBombError:
        raise ValueError(
            f"photo {photo}: refusing a decompression bomb (claims more than {max_pixels} pixels)"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:  # a recognised header with broken data after it
        raise ValueError(f"photo {photo}: truncated or corrupt image data ({err})") from None
    w, h = img.size
    # The header's claimed size is checked before any pixel is decoded.
    if w * h > max_pixels:
        raise ValueError(f"photo {photo}: {w}x{h} is too large ({w * h} pixels > {max_pixels}); refusing to decode")
    mode = img.mode
    notes: list[str] = []
    try:
        img.load()
        orientation = img.getexif().get(0x0112, 1)  # EXIF Orientation
        img = ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"photo {photo}: truncated or corrupt image data ({err})") from None
    if orientation not in (1, None):
        notes.append(f"applied EXIF orientation {orientation}")
    w, h = img.size
    # 64 px, or the model's own side when the model is smaller (the demo renders 48 px wide).
    min_w = min(MIN_SIDE, width) if min_side is None else min_side
    min_h = min(MIN_SIDE, height) if min_side is None else min_side
    if w < min_w or h < min_h:
        raise ValueError(f"photo {photo}: {w}x{h} is too small (need at least {min_w}x{min_h} px)")
    img, conv = to_rgb(img)
    notes.extend(conv)
    pixels = np.asarray(resize_center_crop(img, height, width), dtype=np.uint8)
    if is_blank(pixels):
        raise ValueError(f"photo {photo}: the image is blank/uniform, no person to animate")
    return Photo(pixels=pixels, source=photo, original_size=(w, h), original_mode=mode, notes=tuple(notes))


# ---------------------------------------------------------------- pose sequences

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
ITEM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class PoseSequence:
    """``iuv`` uint8 ``(T, H, W, 3)``; ``frame_ids`` the frames to render; ``truth`` uint8 frames aligned
    with ``frame_ids`` when ground truth is known; ``photo_iuv`` the photo's own pose when known."""

    iuv: np.ndarray
    frame_ids: list[int]
    source: str
    truth: np.ndarray | None = None
    photo_iuv: np.ndarray | None = None


def item_id_from(photo: str, item_id: str | None) -> str:
    """A safe directory name for the item: given, or derived from the photo's file name."""
    if item_id is None:
        stem = Path(urlparse(photo).path).stem or "item"
        item_id = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._") or "item"
        item_id = item_id[:64]
    if not ITEM_ID.match(item_id) or item_id in (".", ".."):
        raise ValueError(f"item id {item_id!r}: use 1-64 letters, digits, '.', '_' or '-' (no path separators)")
    return item_id


def fit_iuv(iuv: np.ndarray, height: int, width: int) -> np.ndarray:
    """IUV frames ``(T, h, w, 3)`` → ``(T, height, width, 3)`` with the frames geometry, nearest-neighbour
    (part indices must never be interpolated)."""
    from dreampose.data.frames import resize_center_crop as fit

    if iuv.shape[1:3] == (height, width):
        return iuv
    return np.stack([fit(frame, height, width, nearest=True) for frame in iuv])


def _load_iuv_dir(path: Path) -> np.ndarray:
    from dreampose.io import load_iuv_npz

    npz = sorted(path.glob("*.npz"))
    pngs = sorted(path.glob("*.png"))
    if npz:
        arrays = [load_iuv_npz(p) for p in npz]
        return np.concatenate(arrays)
    if pngs:
        frames = []
        for p in pngs:
            with Image.open(p) as im:
                if im.mode != "RGB":
                    raise ValueError(f"{p}: IUV PNG must be 8-bit RGB (I, U, V), got mode {im.mode}")
                frames.append(np.asarray(im))
        if len({f.shape for f in frames}) != 1:
            raise ValueError(f"{path}: IUV PNGs differ in size")
        return np.stack(frames)
    raise ValueError(f"poses directory {path}: no IUV .npz or .png files")


def _densepose_backend(params, root: Path, height: int, width: int):
    """The configured DensePose backend, its weight/config paths taken relative to the workspace ``root``
    (as the densepose stage does), so the item works from any working directory."""
    from dreampose.data.densepose.run import make_backend

    cfg = params.densepose
    cfg = cfg.model_copy(
        update={"weights": str(root / cfg.weights), "detectron2_config": str(root / cfg.detectron2_config)}
    )
    return make_backend(cfg, root / "data" / "raw", height, width)


def _video_iuv(path: Path, params, height: int, width: int, root: Path = Path(".")) -> np.ndarray:
    """Run the configured DensePose backend over a driving video's frames."""
    if params.densepose.backend == "synthetic":
        raise ValueError(
            f"poses video {path}: DensePose on a video needs densepose.backend torchscript or detectron2 "
            "(the synthetic backend only knows the generated videos); pass a test video id or an IUV directory"
        )
    import pandas as pd

    from dreampose.video import read_video

    frames, _fps = read_video(path)
    frames = np.stack([np.asarray(resize_center_crop(Image.fromarray(f), height, width)) for f in frames])
    backend = _densepose_backend(params, root, height, width)
    rows = pd.DataFrame({"video": path.stem, "split": "catalog", "frame": range(len(frames))})
    results = []
    for start in range(0, len(frames), params.densepose.batch_size):
        batch = frames[start : start + params.densepose.batch_size]
        results.extend(backend.predict(batch, rows.iloc[start : start + len(batch)]))
    if not any(r.person_found for r in results):
        raise ValueError(f"poses video {path}: DensePose found no person in any frame")
    return np.stack([r.iuv for r in results])


def _test_video(video: str, root: Path) -> PoseSequence:
    """A test video of the workspace: the test manifest's target frames, their ground truth and input pose."""
    import pandas as pd

    from dreampose.io import load_iuv_npz

    manifest = root / "data" / "manifests" / "test.parquet"
    if not manifest.is_file():
        raise ValueError(f"poses {video!r}: not a path, and there is no {manifest} to look it up as a test video id")
    df = pd.read_parquet(manifest)
    rows = df[df["video"] == video].sort_values("target_frame")
    if rows.empty:
        known = sorted(df["video"].unique())[:10]
        raise ValueError(f"poses {video!r}: not a path and not a test video id in {manifest} (e.g. {known})")
    iuv = load_iuv_npz(root / rows["densepose_path"].iloc[0])
    truth = np.stack([read_rgb(root / p) for p in rows["target_path"]])
    input_frame = int(rows["input_frame"].iloc[0])
    return PoseSequence(
        iuv=iuv,
        frame_ids=[int(f) for f in rows["target_frame"]],
        source=f"test video {video}",
        truth=truth,
        photo_iuv=iuv[input_frame],
    )


def resolve_poses(poses: str, root: Path, params) -> PoseSequence:
    """A pose sequence from a test video id, a directory of IUV ``.npz``/``.png``, an ``.npz``, or a video."""
    height, width = params.frames.height, params.frames.width
    path = Path(poses) if Path(poses).is_absolute() else root / poses
    if path.is_dir():
        iuv = fit_iuv(_load_iuv_dir(path), height, width)
        return PoseSequence(iuv=iuv, frame_ids=list(range(len(iuv))), source=str(path))
    if path.is_file() and path.suffix == ".npz":
        from dreampose.io import load_iuv_npz

        iuv = fit_iuv(load_iuv_npz(path), height, width)
        return PoseSequence(iuv=iuv, frame_ids=list(range(len(iuv))), source=str(path))
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        iuv = _video_iuv(path, params, height, width, root)
        return PoseSequence(iuv=iuv, frame_ids=list(range(len(iuv))), source=str(path))
    if path.exists():
        raise ValueError(f"poses {poses}: expected a directory of IUV files, an .npz or a video ({VIDEO_SUFFIXES})")
    seq = _test_video(poses, root)
    if seq.iuv.shape[1:3] != (height, width):
        raise ValueError(f"test video {poses}: IUV is {seq.iuv.shape[1:3]}, params frames are {(height, width)}")
    return seq


def load_ground_truth(ground_truth: str, seq: PoseSequence, root: Path, params) -> np.ndarray:
    """Ground-truth frames aligned with ``seq.frame_ids``: the test video's own, or a directory of images."""
    path = Path(ground_truth) if Path(ground_truth).is_absolute() else root / ground_truth
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if len(files) != len(seq.iuv):
            raise ValueError(f"ground truth {path}: {len(files)} images for a {len(seq.iuv)}-frame pose sequence")
        h, w = params.frames.height, params.frames.width
        imgs = [np.asarray(resize_center_crop(Image.fromarray(read_rgb(files[i])), h, w)) for i in seq.frame_ids]
        return np.stack(imgs)
    if seq.truth is not None and seq.source == f"test video {ground_truth}":
        return seq.truth
    raise ValueError(f"ground truth {ground_truth!r}: expected a frames directory or the test video id given as poses")


# ---------------------------------------------------------------- photo pose and scoring


def photo_pose(photo: Photo, seq: PoseSequence, params, root: Path = Path(".")) -> tuple[np.ndarray, str]:
    """The photo's own IUV: detected by a real DensePose backend (no person → error), else known from the
    workspace (a test video's input frame), else the sequence's first pose (the synthetic-backend limitation)."""
    if params.densepose.backend != "synthetic":
        import pandas as pd

        h, w = photo.pixels.shape[:2]
        backend = _densepose_backend(params, root, h, w)
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


def temporal_l1(frames: np.ndarray) -> float:
    """Mean absolute change between consecutive frames, in [0, 1] units (0 for a single frame)."""
    f = np.asarray(frames, dtype=np.float64) / 255.0
    if len(f) < 2:
        return 0.0
    return float(np.abs(np.diff(f, axis=0)).mean())


def appearance_drift(frames: np.ndarray, iuv: np.ndarray, photo: np.ndarray, photo_iuv: np.ndarray) -> float:
    """Mean distance between each frame's colour statistics inside its pose mask and the photo's inside its own:
    how far the rendered garment's colours drift from the input photo (no ground truth needed)."""
    from dreampose.metrics.appearance import color_stats

    ref_mask = photo_iuv[..., 0] > 0
    if not ref_mask.any():
        ref_mask = np.ones(photo.shape[:2], bool)
    ref = color_stats(photo, ref_mask)
    dists = []
    for frame, pose in zip(frames, iuv, strict=True):
        mask = pose[..., 0] > 0
        if mask.any():
            dists.append(float(np.linalg.norm(color_stats(frame, mask) - ref)))
    return float(np.mean(dists)) if dists else float("nan")


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


def input_key(photo: np.ndarray, seq: PoseSequence, base_digest: str, params) -> str:
    """Identity of a catalog item's inputs: photo pixels, poses, base model and the settings that shape the result."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(photo).tobytes())
    h.update(np.ascontiguousarray(seq.iuv[seq.frame_ids]).tobytes())
    h.update(json.dumps(seq.frame_ids).encode())
    h.update(base_digest.encode())
    settings = {"train_subject": params.train_subject.model_dump(), "render": params.render.model_dump()}
    if params.runtime.dtype != "fp32":  # reduced-precision renders differ; fp32 keys stay as they always were
        settings["runtime_dtype"] = params.runtime.dtype
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def _write_subject_inputs(run_dir: Path, item_id: str, photo: np.ndarray, photo_iuv: np.ndarray, window: int) -> Path:
    """The subject-manifest row a finetune expects: the photo as both input and target, with its pose."""
    import pyarrow as pa

    from dreampose.data.manifest import SCHEMA, write_parquet_atomic

    inp = run_dir / "input"
    inp.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo).save(inp / "photo.png")
    np.savez_compressed(inp / "photo_iuv.npz", iuv=photo_iuv[None])
    row = {
        "subject_id": item_id,
        "video": item_id,
        "split": "catalog",
        "input_frame": 0,
        "target_frame": 0,
        "input_path": "input/photo.png",
        "target_path": "input/photo.png",
        "densepose_path": "input/photo_iuv.npz",
        "pose_frames": [0] * window,
    }
    table = pa.Table.from_pylist([{k: row.get(k) for k in SCHEMA.names}], schema=SCHEMA)
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


@dataclass(frozen=True)
class _Item:
    """A validated catalog item, ready to train."""

    item_id: str
    photo: Photo
    seq: PoseSequence
    truth: np.ndarray | None
    photo_iuv: np.ndarray
    photo_iuv_source: str
    key: str
    base_digest: str = ""


def run_catalog_item(
    params,
    root: Path,
    photo: str,
    poses: str,
    item_id: str | None = None,
    ground_truth: str | None = None,
    reuse: bool = False,
    base_dir: Path | None = None,
    allow_private_urls: bool = False,
    flow_run_id: str | None = None,
    attempt_key: str | None = None,
) -> dict[str, Any]:
    """One catalog item end to end; returns a JSON-able summary with the registered version.

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
    base_dir = Path(base_dir) if base_dir is not None else root / "models" / "base"
    item_id = item_id_from(photo, item_id)
    h, w = params.frames.height, params.frames.width
    checked = validate_photo(photo, h, w, url_policy=photo_url_policy(params.photo_url, allow_private_urls))
    if not (base_dir / "model_index.json").is_file():
        raise FileNotFoundError(f"{base_dir}: no base model (run the pipeline up to finetune_base first)")
    from dreampose.models.sizes import check_saved_model_frame_size

    check_saved_model_frame_size(base_dir, h, w)
    seq = resolve_poses(poses, root, params)
    truth = load_ground_truth(ground_truth, seq, root, params) if ground_truth else None
    p_iuv, p_iuv_source = photo_pose(checked, seq, params, root)
    base_digest = model_digest(base_dir)
    key = input_key(checked.pixels, seq, base_digest, params)
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
    item = _Item(item_id, checked, seq, truth, p_iuv, p_iuv_source, key, base_digest)
    attempt_key = attempt_key or uuid.uuid4().hex
    try:
        return _train_render_register(params, root, base_dir, item, enabled, flow_run_id, runtime, attempt_key)
    except BaseException:  # e.g. logging or registration failed: no version, no directory stays
        if enabled:
            with contextlib.suppress(Exception):
                settle_attempts(root, item_id, attempt_key, params.tracking.experiment, name)
        raise


ATTEMPT_TAG = "catalog.attempt_key"


def _run_tags(item: _Item, flow_run_id: str | None, attempt_key: str | None = None) -> dict[str, str]:
    """What leads a version back to exactly what made it (the git commit is added by ``stage_run``)."""
    tags = {"catalog_item": item.item_id, "catalog.input_key": item.key, "base_model.sha256": item.base_digest}
    if flow_run_id:
        tags["prefect.flow_run_id"] = str(flow_run_id)
    if attempt_key:
        tags[ATTEMPT_TAG] = attempt_key
    return tags


def remove_run_dir(root: Path, item_id: str, run_id: str) -> None:
    """Remove ``catalog/<item>/<run_id>/`` and the item directory when that leaves it empty."""
    item_dir = Path(root) / "catalog" / item_id
    shutil.rmtree(item_dir / run_id, ignore_errors=True)
    with contextlib.suppress(OSError):  # not empty: another run of the item keeps it
        item_dir.rmdir()


def settle_attempts(root: Path, item_id: str, attempt_key: str, experiment: str, model_name: str):
    """Earlier attempts of ``attempt_key``: the registered version of a finished one (or ``None``); unfinished
    ones are marked KILLED, their versions deleted and their directories removed."""
    import mlflow
    from mlflow import MlflowClient

    from dreampose import registry

    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    client = MlflowClient()
    runs = client.search_runs([exp.experiment_id], f"tags.`{ATTEMPT_TAG}` = '{registry._quote(attempt_key)}'")
    for run in runs:
        versions = registry.versions_of_run(model_name, run.info.run_id)
        if run.info.status == "FINISHED" and versions:
            return versions[0]
    for run in runs:
        registry.delete_versions_of_run(model_name, run.info.run_id)
        if run.info.status in ("RUNNING", "SCHEDULED"):
            client.set_terminated(run.info.run_id, "KILLED")
        remove_run_dir(root, item_id, run.info.run_id)
    return None


def _train_render_register(
    params,
    root: Path,
    base_dir: Path,
    item: _Item,
    enabled: bool,
    flow_run_id: str | None = None,
    runtime=None,
    attempt_key: str | None = None,
) -> dict[str, Any]:
    """Finetune → render → score → log → register, all under ``catalog/<item_id>/<run_id>/``.

    The render runs on ``runtime`` (device, dtype, offload); the finetune trains on its device (accelerate)."""
    from dreampose import registry, tracking
    from dreampose.render import load_pipeline, render_sequence
    from dreampose.training.finetune import MlflowLogger, finetune_subject

    run_ctx = (
        tracking.stage_run(
            "catalog_item",
            {
                "train_subject": params.train_subject.model_dump(),
                "render": params.render.model_dump(),
                "runtime": runtime.describe() if runtime is not None else None,
            },
            params.tracking.experiment,
            tags=_run_tags(item, flow_run_id, attempt_key),
            run_name=f"catalog_item@{item.item_id}",
        )
        if enabled
        else contextlib.nullcontext(None)
    )
    with run_ctx as run:
        run_id = run.info.run_id if run is not None else uuid.uuid4().hex
        run_dir = root / "catalog" / item.item_id / run_id
        if run_dir.exists():
            raise ValueError(f"{run_dir} already exists; refusing to mix two runs' outputs")
        try:
            window = params.manifest.pose_window
            manifest = _write_subject_inputs(run_dir, item.item_id, item.photo.pixels, item.photo_iuv, window)
            t0 = time.perf_counter()
            size = (params.frames.height, params.frames.width)
            with _MODEL_LOCK:
                trained = finetune_subject(
                    params.train_subject,
                    base_dir,
                    manifest,
                    item.item_id,
                    run_dir,
                    run_dir / "model",
                    size=size,
                    logger=MlflowLogger(prefix="train/") if run is not None else None,
                    device=runtime.device if runtime is not None else None,
                )
                t_train = time.perf_counter() - t0
                pipe = load_pipeline(run_dir / "model", runtime)
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
        info = _log_and_register(params, root, item, run_id, run_dir, scores, summary, frames)
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


def _log_model(params, item: _Item, run_dir: Path) -> None:
    """The subject model as an MLflow ``pyfunc`` model under the run's ``model/`` (diffusers folder inside)."""
    import mlflow

    from dreampose.mlflow_model import save_subject_model

    staging = run_dir / "mlflow_model"
    save_subject_model(
        staging,
        run_dir / "model",
        run_dir / "input" / "photo.png",
        params.render.model_dump(),
        params.manifest.pose_window,
        example=item.seq.iuv[item.seq.frame_ids[:1]],
    )
    try:
        mlflow.log_artifacts(str(staging), "model")
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the run directory keeps the diffusers folder in model/


def _review_page(params, root: Path, item: _Item, info, run_id: str, frames: np.ndarray, scores) -> Path:
    """Write the version's self-contained review page into the run directory."""
    from dreampose.render import iuv_to_rgb
    from dreampose.review_page import PAGE_NAME, ReviewPage, demo_reference, write_page

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
    return write_page(page, root / "catalog" / item.item_id / run_id / PAGE_NAME)


def _description(run, model_name: str, item_id: str) -> str:
    """The version's description (Markdown in the MLflow UI): a link to the review page and the load URI."""
    from dreampose import registry

    page = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifacts/review.html"
    uri = registry.approved_uri(model_name, item_id)
    return (
        f"Catalog item **{item_id}**. [Open the review page]({page}) (or `dreampose review show {item_id}`).\n\n"
        f'Once approved it loads as `mlflow.pyfunc.load_model("{uri}")`.'
    )


def _log_and_register(params, root: Path, item: _Item, run_id: str, run_dir: Path, scores, summary, frames) -> Any:
    """Quality metrics, the pyfunc model, media, the registered version and its review page."""
    import mlflow

    from dreampose import registry

    mlflow.log_metrics({f"quality/{k}": v for k, v in scores.items() if np.isfinite(v)})
    _log_model(params, item, run_dir)
    for f in ("video.mp4", "side_by_side.mp4", "poster.png", "render.json"):
        if (run_dir / "render" / f).is_file():
            mlflow.log_artifact(str(run_dir / "render" / f), "render")
    mlflow.log_artifact(str(run_dir / "input" / "photo.png"), "input")
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
        },
        description=_description(run, params.tracking.registered_model, item.item_id),
    )
    page = _review_page(params, root, item, info, run_id, frames, scores)
    mlflow.log_artifact(str(page))
    mlflow.set_tag("registered_version", info.version)
    mlflow.set_tag("registered_model", f"models:/{info.name}/{info.version}")
    return info
