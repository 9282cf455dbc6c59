"""Render pose sequences with a DreamPose pipeline: frames -> mp4, side-by-side mp4, poster, render.json.

Guidance (paper eq. 4) uses ``cfg.image_guidance_scale`` (s_I) and ``cfg.pose_guidance_scale`` (s_p).
The paper's demo used s_I = 8, s_p = 3 with PNDM 100 steps on Stable Diffusion. The demo preset uses
s_I = 1, s_p = 2 with DDIM 10 steps: on the tiny model the subject finetune already carries the
appearance, so extra image guidance only saturates colours, while s_p = 2 sharpens the limbs; 10
DDIM steps scored as well as 20 on pixel metrics.

Rendering is resumable: each frame is written as ``frames/NNNNN.png`` (named by its frame number)
through a temporary file and a rename, and a rerun skips every frame whose PNG is already complete.
The video, side-by-side, poster and ``render.json`` are rewritten atomically at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from dreampose.config import RenderConfig
from dreampose.fsutil import recorded
from dreampose.io import load_iuv, png_complete, read_rgb, write_json, write_png
from dreampose.models.subject import load_subject_pipeline
from dreampose.runtime import Runtime

log = logging.getLogger("dreampose.render")

FRAME_NAME = "{:05d}.png"
POSTER_ROWS = 4


# ---------------------------------------------------------------- small pure helpers


def to_uint8(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """Pipeline output (float in [0, 1], channels last, or uint8) -> uint8 ``(N, H, W, 3)``."""
    arr = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if arr.dtype == np.uint8:
        return arr
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> float32 ``(3, H, W)`` in [-1, 1] (the one pixel convention)."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"input image must be uint8 (H, W, 3), got {img.dtype} {img.shape}")
    return torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def iuv_to_rgb(iuv: np.ndarray) -> np.ndarray:
    """Colour-coded IUV for display: red = part index I (scaled from 1..24), green = U, blue = V."""
    iuv = np.asarray(iuv)
    if iuv.dtype != np.uint8 or iuv.ndim != 3 or iuv.shape[2] != 3:
        raise ValueError(f"IUV must be uint8 (H, W, 3), got {iuv.dtype} {iuv.shape}")
    out = iuv.astype(np.float32)
    out[..., 0] = np.clip(out[..., 0] * (255.0 / 24.0), 0, 255)
    out[iuv[..., 0] == 0] = 0
    return out.round().astype(np.uint8)


def side_by_side(columns: Sequence[np.ndarray]) -> np.ndarray:
    """Stack equally sized ``(T, H, W, 3)`` (or ``(H, W, 3)`` broadcast over T) columns left to right."""
    n = max(c.shape[0] for c in columns if c.ndim == 4)
    cols = [np.broadcast_to(c, (n, *c.shape)) if c.ndim == 3 else c for c in columns]
    heights = {c.shape[1:] for c in cols}
    if len(heights) != 1:
        raise ValueError(f"side-by-side columns differ in size: {sorted(heights)}")
    return np.concatenate(cols, axis=2)


def poster(rows: np.ndarray, max_rows: int = POSTER_ROWS) -> np.ndarray:
    """Evenly spaced rows of a side-by-side sequence ``(T, H, W', 3)`` stacked into one image."""
    idx = np.unique(np.linspace(0, rows.shape[0] - 1, min(max_rows, rows.shape[0])).round().astype(int))
    return np.concatenate(list(rows[idx]), axis=0)


def temporal_smooth(frames: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over time of consecutive frames ``(T, H, W, C)``: frame ``t`` becomes the mean of
    frames ``t - k//2 .. t + k//2`` (``k = window``); at the ends the window is cut to the frames that exist.

    A box over an odd window of whole frames, not a Gaussian of some sigma: the parameter is a count of video
    frames, the same unit as the pose window the full model sees (5), and a constant sequence stays bit for bit
    constant. ``window`` 0 or 1 returns the frames unchanged. uint8 in, uint8 out (rounded); floats in, float32 out.
    """
    arr = np.asarray(frames)
    if window < 0 or (window > 1 and window % 2 == 0):
        raise ValueError(f"smoothing window must be 0, 1 or odd, got {window}")
    if arr.ndim != 4:
        raise ValueError(f"frames must be (T, H, W, C), got {arr.shape}")
    if window <= 1 or len(arr) <= 1:
        return arr.copy()
    half, n = window // 2, len(arr)
    csum = np.concatenate([np.zeros((1, *arr.shape[1:])), np.cumsum(arr, axis=0, dtype=np.float64)])
    t = np.arange(n)
    lo, hi = np.maximum(t - half, 0), np.minimum(t + half + 1, n)
    mean = (csum[hi] - csum[lo]) / (hi - lo).reshape(-1, 1, 1, 1)
    if arr.dtype == np.uint8:
        return np.clip(np.rint(mean), 0, 255).astype(np.uint8)
    return mean.astype(np.float32)


def smoothing_support(frame_ids: Sequence[int], window: int, num_frames: int) -> list[int]:
    """The video frames whose raw renders smoothing ``frame_ids`` over ``window`` needs: each id's centred
    neighbourhood, clipped to ``[0, num_frames - 1]``; sorted, distinct."""
    half = max(window, 1) // 2
    ids = {i for f in frame_ids for i in range(max(int(f) - half, 0), min(int(f) + half, num_frames - 1) + 1)}
    return sorted(ids)


def consecutive_runs(ids: Sequence[int]) -> list[list[int]]:
    """Sorted distinct ids split into runs of consecutive numbers: ``[1, 2, 3, 7, 8] -> [[1, 2, 3], [7, 8]]``."""
    runs: list[list[int]] = []
    for i in sorted(set(int(x) for x in ids)):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def smooth_over_runs(raw: Mapping[int, np.ndarray], window: int) -> dict[int, np.ndarray]:
    """Raw renders by video frame id -> the same ids, each smoothed over ``window`` video frames
    (:func:`temporal_smooth`) within its run of consecutive ids only (:func:`consecutive_runs`)."""
    out: dict[int, np.ndarray] = {}
    for run in consecutive_runs(raw):
        out.update(zip(run, temporal_smooth(np.stack([raw[f] for f in run]), window), strict=True))
    return out


# ---------------------------------------------------------------- pipeline calls


def pipeline_runtime(pipe) -> dict[str, Any] | None:
    """Where a pipeline actually runs (device, UNet dtype, offload), for render.json; ``None`` if unknown."""
    unet = getattr(pipe, "unet", None)
    if unet is None:
        return None
    from dreampose.runtime import DTYPE_NAMES

    offload = getattr(pipe, "_offload_device", None)
    device = offload if offload is not None else pipe._execution_device
    return {
        "device": str(device),
        "dtype": DTYPE_NAMES.get(unet.dtype, str(unet.dtype)),
        "cpu_offload": offload is not None,
    }


def frame_generators(seed: int, frame_ids: Sequence[int]) -> list[torch.Generator]:
    """One generator per frame, seeded by (seed, frame id): a frame's noise does not depend on which
    other frames share its batch, so a resumed render matches a fresh one."""
    return [torch.Generator().manual_seed(int(seed) * 1_000_003 + int(f)) for f in frame_ids]


def render_frames(
    pipe,
    image: np.ndarray | torch.Tensor,
    poses: torch.Tensor,
    cfg: RenderConfig,
    *,
    frame_ids: Sequence[int] | None = None,
    on_batch: Callable[[Sequence[int], np.ndarray], None] | None = None,
    desc: str = "render",
) -> np.ndarray:
    """Render one frame per pose window: ``poses (N, 10, H, W)`` -> uint8 ``(N, H, W, 3)``.

    ``image`` is uint8 ``(H, W, 3)`` or a ``(3, H, W)`` tensor in [-1, 1]; the pipeline is handed it in
    [0, 1] (diffusers' image convention), which no pixel values can make ambiguous — a [-1, 1] tensor of a
    bright photo (white background, light garment) has no negative value and would be read as [0, 1].
    Frames go through the pipeline ``cfg.frame_batch_size`` at a time; ``on_batch(ids, frames)`` runs after each batch
    (used to write frames as they come, so an interrupted render keeps its work).
    """
    poses = torch.as_tensor(poses, dtype=torch.float32)
    if poses.ndim != 4:
        raise ValueError(f"poses must be (N, C, H, W), got {tuple(poses.shape)}")
    pixels = image_to_tensor(image) if isinstance(image, np.ndarray) else torch.as_tensor(image, dtype=torch.float32)
    if pixels.shape[-2:] != poses.shape[-2:]:
        raise ValueError(f"input image is {tuple(pixels.shape[-2:])} but poses are {tuple(poses.shape[-2:])} (H, W)")
    ids = list(range(len(poses))) if frame_ids is None else [int(f) for f in frame_ids]
    if len(ids) != len(poses):
        raise ValueError(f"{len(ids)} frame ids for {len(poses)} pose windows")
    # uint8 -> x / 255 (the pipeline maps it back to x / 127.5 - 1 bit for bit); tensors -> (x + 1) / 2
    unit = image.astype(np.float32) / 255.0 if isinstance(image, np.ndarray) else (pixels + 1.0) / 2.0
    pipe.set_scheduler(cfg.scheduler)
    out: list[np.ndarray] = []
    step = cfg.frame_batch_size
    for start in tqdm(range(0, len(poses), step), desc=desc, unit="batch", leave=False):
        batch_ids = ids[start : start + step]
        result = pipe(
            unit,
            poses[start : start + step],
            num_inference_steps=cfg.num_inference_steps,
            image_guidance_scale=cfg.image_guidance_scale,
            pose_guidance_scale=cfg.pose_guidance_scale,
            generator=frame_generators(cfg.seed, batch_ids),
            output_type="np",
            frame_batch_size=step,
        )
        frames = to_uint8(result.frames)
        if on_batch is not None:
            on_batch(batch_ids, frames)
        out.append(frames)
    if not out:
        return np.zeros((0, *poses.shape[-2:], 3), np.uint8)
    return np.concatenate(out)


def render_to_dir(
    pipe, image, poses: torch.Tensor, frame_ids: Sequence[int], cfg: RenderConfig, frames_dir: Path, desc: str
) -> dict[str, int]:
    """Render the frames whose PNG is missing or incomplete into ``frames_dir``; returns counts."""
    frames_dir = Path(frames_dir)
    frames_dir.mkdir(parents=True, exist_ok=True)
    size = tuple(poses.shape[-2:])
    todo = [i for i, f in enumerate(frame_ids) if not png_complete(frames_dir / FRAME_NAME.format(f), size)]

    def save(ids: Sequence[int], frames: np.ndarray) -> None:
        for f, frame in zip(ids, frames, strict=True):
            write_png(frame, frames_dir / FRAME_NAME.format(f))

    if todo:
        render_frames(pipe, image, poses[todo], cfg, frame_ids=[frame_ids[i] for i in todo], on_batch=save, desc=desc)
    return {"rendered": len(todo), "skipped": len(frame_ids) - len(todo)}


def render_windows_to_dir(
    pipe,
    image,
    iuv_seq: np.ndarray,
    frame_ids: Sequence[int],
    pose_window: int,
    cfg: RenderConfig,
    frames_dir: Path,
    raw_dir: Path,
    desc: str,
) -> dict[str, int]:
    """``frames_dir/NNNNN.png`` for ``frame_ids``, each from its centred ``pose_window`` of ``iuv_seq`` (the whole
    ``(T, H, W, 3)`` DensePose sequence), rendered resumably (:func:`render_to_dir`).

    With ``cfg.temporal_smoothing`` = k > 1 the frames are smoothed over k video frames. The test targets lie far
    apart, so each target's neighbours in the video are rendered too, into ``raw_dir`` (resumable, shared by the
    targets and the FVD clip: a frame's render depends only on its id), and the smoothing runs over consecutive
    video frames only. Counts are those of the renders (the raw ones when smoothing)."""
    from dreampose.data.densepose.iuv import pose_window as window_of

    k = cfg.temporal_smoothing
    smooth = k > 1
    needed = smoothing_support(frame_ids, k, len(iuv_seq)) if smooth else list(frame_ids)
    poses = torch.stack([window_of(iuv_seq, int(t), pose_window) for t in needed])
    counts = render_to_dir(pipe, image, poses, needed, cfg, raw_dir if smooth else frames_dir, desc=desc)
    if smooth:
        smoothed = smooth_over_runs({f: read_rgb(Path(raw_dir) / FRAME_NAME.format(f)) for f in needed}, k)
        Path(frames_dir).mkdir(parents=True, exist_ok=True)
        for f in {int(f) for f in frame_ids}:
            write_png(smoothed[f], Path(frames_dir) / FRAME_NAME.format(f))
    return counts


def _write_videos(out_dir: Path, generated: np.ndarray, columns: list[np.ndarray], fps: int) -> dict[str, str]:
    from dreampose.video import write_video

    sbs = side_by_side(columns)
    write_video(generated, out_dir / "video.mp4", fps=fps)
    write_video(sbs, out_dir / "side_by_side.mp4", fps=fps)
    write_png(poster(sbs), out_dir / "poster.png")
    return {"video": "video.mp4", "side_by_side": "side_by_side.mp4", "poster": "poster.png"}


# ---------------------------------------------------------------- manifests


def read_test_manifest(test_manifest: Path) -> pd.DataFrame:
    test_manifest = Path(test_manifest)
    if not test_manifest.is_file():
        raise FileNotFoundError(f"{test_manifest}: no such test manifest")
    df = pd.read_parquet(test_manifest)
    if df.empty:
        raise ValueError(f"{test_manifest}: test manifest is empty")
    missing = {"subject_id", "input_path", "target_path", "densepose_path", "target_frame", "pose_frames"} - set(
        df.columns
    )
    if missing:
        raise ValueError(f"{test_manifest}: missing columns {sorted(missing)}")
    return df


def subject_rows(df: pd.DataFrame, subject: str, test_manifest: Path) -> pd.DataFrame:
    rows = df[df["subject_id"] == subject].sort_values("target_frame")
    if rows.empty:
        known = sorted(df["subject_id"].unique())
        raise ValueError(f"subject {subject!r} is not in {test_manifest} (subjects: {known})")
    return rows.reset_index(drop=True)


# ---------------------------------------------------------------- entry points


def fvd_rows(fvd_manifest: Path, subject: str) -> pd.DataFrame:
    """The subject's FVD clip rows (consecutive frames, sorted), empty when the manifest has none for it."""
    fvd_manifest = Path(fvd_manifest)
    if not fvd_manifest.is_file():
        raise FileNotFoundError(f"{fvd_manifest}: no FVD clip manifest (re-run `dreampose manifest`)")
    df = pd.read_parquet(fvd_manifest)
    return df[df["subject_id"] == subject].sort_values("target_frame").reset_index(drop=True)


def render_subject(
    cfg: RenderConfig,
    model_dir: Path,
    test_manifest: Path,
    subject: str,
    root: Path,
    out_dir: Path,
    pipe=None,
    fvd_manifest: Path | None = None,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Render one evaluation subject's test targets with its finetuned model into ``out_dir``.

    Writes ``frames/NNNNN.png`` (one per target, by target frame), ``video.mp4``,
    ``side_by_side.mp4`` (input photo | colour-coded IUV | generated | ground truth),
    ``poster.png`` and ``render.json``. With ``fvd_manifest``, also the subject's FVD clip
    (consecutive frames) as ``fvd/frames/NNNNN.png``. With ``cfg.temporal_smoothing`` (an odd k > 1) the frames
    are smoothed over the k video frames around each (:func:`render_windows_to_dir`; the raw renders, targets'
    neighbours included, stay in ``raw/frames/``). ``pipe`` overrides loading ``model_dir`` (tests, flows).
    ``runtime`` places the loaded pipeline (device, dtype, offload).
    """
    root, out_dir = Path(root), Path(out_dir)
    rows = subject_rows(read_test_manifest(test_manifest), subject, test_manifest)
    input_path = root / rows["input_path"].iloc[0]
    image = read_rgb(input_path)
    iuv = load_iuv(root / rows["densepose_path"].iloc[0])
    frame_ids = [int(f) for f in rows["target_frame"]]
    if image.shape[:2] != tuple(iuv.shape[1:3]):
        raise ValueError(f"{input_path}: image is {image.shape[:2]} but its poses are {tuple(iuv.shape[1:3])}")

    t0 = time.perf_counter()
    if pipe is None:
        pipe = load_subject_pipeline(model_dir, runtime=runtime)
    t_load = time.perf_counter() - t0
    t1 = time.perf_counter()
    # The same windows the manifest lists (pose_frames); raw renders (when smoothing) shared by targets and clip.
    raw = out_dir / "raw" / "frames"
    window = len(rows["pose_frames"].iloc[0])
    counts = render_windows_to_dir(
        pipe, image, iuv, frame_ids, window, cfg, out_dir / "frames", raw, desc=f"render {subject}"
    )
    fvd: dict[str, Any] = {}
    if fvd_manifest is not None:
        clip = fvd_rows(fvd_manifest, subject)
        clip_ids = [int(f) for f in clip["target_frame"]]
        if clip_ids:
            c = render_windows_to_dir(
                pipe, image, iuv, clip_ids, len(clip["pose_frames"].iloc[0]), cfg, out_dir / "fvd" / "frames",
                raw, desc=f"fvd {subject}",
            )  # fmt: skip
            counts = {k: counts[k] + c[k] for k in counts}
        fvd = {"fvd_frames": clip_ids}
    t_render = time.perf_counter() - t1

    generated = np.stack([read_rgb(out_dir / "frames" / FRAME_NAME.format(f)) for f in frame_ids])
    truth = np.stack([read_rgb(root / p) for p in rows["target_path"]])
    if truth.shape != generated.shape:
        raise ValueError(f"ground-truth frames are {truth.shape[1:3]} but renders are {generated.shape[1:3]}")
    centers = [int(w[len(w) // 2]) for w in rows["pose_frames"]]
    pose_rgb = np.stack([iuv_to_rgb(iuv[c]) for c in centers])
    files = _write_videos(out_dir, generated, [image, pose_rgb, generated, truth], cfg.fps)
    summary = {
        "subject": subject,
        "model_dir": str(model_dir),
        "input_path": str(rows["input_path"].iloc[0]),
        "frames": frame_ids,
        "num_frames": len(frame_ids),
        **fvd,
        **counts,
        "settings": cfg.model_dump(),
        "runtime": pipeline_runtime(pipe),
        "columns": ["input", "pose", "generated", "ground_truth"],
        "files": files,
        "seconds": {"load": round(t_load, 3), "render": round(t_render, 3)},
        "seconds_per_frame": round(t_render / counts["rendered"], 4) if counts["rendered"] else None,
    }
    write_json(recorded(summary), out_dir / "render.json")
    return summary


def render_sequence(
    pipe,
    image: np.ndarray,
    iuv_seq: np.ndarray,
    cfg: RenderConfig,
    out_dir: Path,
    window: int = 5,
    frame_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Animate a photo along an IUV sequence with no ground truth (a new catalog item).

    ``image`` uint8 ``(H, W, 3)``; ``iuv_seq`` uint8 ``(T, H, W, 3)``. Renders ``frame_ids``
    (default every frame) and writes the same files as :func:`render_subject`, with the
    side-by-side columns input photo | colour-coded IUV | generated.
    """
    from dreampose.data.densepose.iuv import pose_window

    out_dir = Path(out_dir)
    iuv_seq = np.asarray(iuv_seq)
    if iuv_seq.ndim != 4 or iuv_seq.dtype != np.uint8:
        raise ValueError(f"IUV sequence must be uint8 (T, H, W, 3), got {iuv_seq.dtype} {iuv_seq.shape}")
    ids = list(range(len(iuv_seq))) if frame_ids is None else [int(f) for f in frame_ids]
    if not ids:
        raise ValueError("no frames to render")
    poses = torch.stack([pose_window(iuv_seq, t, window) for t in ids])
    if np.asarray(image).shape[:2] != tuple(poses.shape[-2:]):
        raise ValueError(f"input image is {np.asarray(image).shape[:2]} but the poses are {tuple(poses.shape[-2:])}")
    t0 = time.perf_counter()
    raw = out_dir / "raw" / "frames"
    counts = render_windows_to_dir(pipe, image, iuv_seq, ids, window, cfg, out_dir / "frames", raw, "render")
    t_render = time.perf_counter() - t0
    generated = np.stack([read_rgb(out_dir / "frames" / FRAME_NAME.format(f)) for f in ids])
    pose_rgb = np.stack([iuv_to_rgb(iuv_seq[t]) for t in ids])
    files = _write_videos(out_dir, generated, [np.asarray(image), pose_rgb, generated], cfg.fps)
    summary = {
        "frames": ids,
        "num_frames": len(ids),
        **counts,
        "settings": cfg.model_dump(),
        "runtime": pipeline_runtime(pipe),
        "columns": ["input", "pose", "generated"],
        "files": files,
        "seconds": {"render": round(t_render, 3)},
        "seconds_per_frame": round(t_render / counts["rendered"], 4) if counts["rendered"] else None,
    }
    write_json(recorded(summary), out_dir / "render.json")
    return summary
