"""Frame extraction: decode each raw video (decord), resize + center-crop, write JPEGs and an index.

Geometry policy (``fit_geometry``): scale the source so it *covers* the target (aspect ratio
kept, no padding, no distortion), then crop the centre. A portrait UBC video (940 × 720)
going to 640 × 512 loses a few rows top and bottom; a landscape one loses its sides.
The DensePose stage reuses ``resize_center_crop(..., nearest=True)`` so IUV maps line up
with the frames pixel for pixel.

``cfg.workers`` videos decode at once (decord decodes on its own thread; each video's thread copies the frame
out of one reused buffer into a PIL image) while a pool of ``cfg.workers`` threads resizes, encodes and writes
the JPEGs (PIL releases the GIL for all three), so decoding never waits for the encoder. Beside decode + resize,
a frame costs its JPEG encode and one file creation, little else (see docs/scaling.md, "Frame extraction").
Unreadable videos are quarantined (``quarantine.json``), not fatal, unless none is readable.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from dreampose.config import FramesConfig
from dreampose.fsutil import replace_dir, staging_dir
from dreampose.video import VIDEO_SUFFIXES, iter_video, open_stream

INDEX_SCHEMA = pa.schema(
    [
        ("video", pa.string()),
        ("split", pa.string()),
        ("frame", pa.int32()),
        ("source_frame", pa.int32()),
        ("timestamp", pa.float64()),
        ("path", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)
_MAX_PENDING = 64  # decoded frames (RGBX PIL images) waiting for the encoders, per decoding video, at most
_CHUNK = 8  # frames per encoder task


def fit_geometry(src_h: int, src_w: int, dst_h: int, dst_w: int) -> tuple[int, int, int, int]:
    """``(new_h, new_w, top, left)``: resize ``src`` to ``new_h × new_w`` (covers ``dst``, aspect kept),
    then crop ``dst_h × dst_w`` at ``(top, left)`` (centred; an odd surplus leaves the extra pixel
    at the bottom/right)."""
    if min(src_h, src_w, dst_h, dst_w) <= 0:
        raise ValueError(f"sizes must be positive, got source {src_h}x{src_w}, target {dst_h}x{dst_w}")
    scale = max(dst_h / src_h, dst_w / src_w)
    new_h = max(dst_h, round(src_h * scale))
    new_w = max(dst_w, round(src_w * scale))
    return new_h, new_w, (new_h - dst_h) // 2, (new_w - dst_w) // 2


def _nearest_index(src: int, new: int, start: int, count: int) -> np.ndarray:
    """Source indices of nearest-neighbour resampling ``src -> new``, for outputs ``start..start+count``."""
    centers = (np.arange(start, start + count) + 0.5) * (src / new)
    return np.clip(np.floor(centers).astype(np.int64), 0, src - 1)


def resize_center_crop(img: np.ndarray, height: int, width: int, nearest: bool = False) -> np.ndarray:
    """Resize (aspect kept, covering) and center-crop a uint8 ``(H, W, C)`` image to ``(height, width, C)``.

    ``nearest=True`` never mixes values (for label maps such as IUV, where a blended part index
    would be meaningless); otherwise PIL's antialiased bilinear filter is used.
    """
    if img.ndim != 3 or img.dtype != np.uint8:
        raise ValueError(f"image: expected uint8 (H, W, C), got {img.dtype} {img.shape}")
    src_h, src_w, channels = img.shape
    new_h, new_w, top, left = fit_geometry(src_h, src_w, height, width)
    if (new_h, new_w) == (src_h, src_w):
        return np.ascontiguousarray(img[top : top + height, left : left + width])
    if nearest:
        rows = _nearest_index(src_h, new_h, top, height)
        cols = _nearest_index(src_w, new_w, left, width)
        return np.ascontiguousarray(img[rows[:, None], cols[None, :]])
    box = (left, top, left + width, top + height)
    if channels in (3, 4):
        return np.asarray(_resize_crop_image(img, (new_h, new_w), box))
    planes = [
        np.asarray(Image.fromarray(img[..., c]).resize((new_w, new_h), Image.Resampling.BILINEAR).crop(box))
        for c in range(channels)
    ]
    return np.stack(planes, axis=-1)


def _resize_crop_image(
    img: np.ndarray | Image.Image, size: tuple[int, int], box: tuple[int, int, int, int]
) -> Image.Image:
    """PIL's antialiased bilinear resize of an RGB(A) array or image to ``size`` (h, w), cropped to ``box``; no
    crop (a copy) when the box is the whole resized image."""
    src = img if isinstance(img, Image.Image) else Image.fromarray(img)
    out = src.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return out if box == (0, 0, size[1], size[0]) else out.crop(box)


def frame_image(frame: np.ndarray | Image.Image, height: int, width: int) -> Image.Image:
    """``resize_center_crop`` of an RGB frame (an array, or ``Image.fromarray`` of it) as a PIL image (what the
    frames stage encodes), without the round trip through a numpy array; the pixels are those of
    ``resize_center_crop(frame, height, width)``."""
    if isinstance(frame, Image.Image):
        if frame.mode != "RGB":
            raise ValueError(f"frame: expected an RGB image, got mode {frame.mode}")
        new_h, new_w, top, left = fit_geometry(frame.height, frame.width, height, width)
        box = (left, top, left + width, top + height)
        if (new_h, new_w) != (frame.height, frame.width):
            return _resize_crop_image(frame, (new_h, new_w), box)
        return frame if box == (0, 0, frame.width, frame.height) else frame.crop(box)
    new_h, new_w, top, left = fit_geometry(frame.shape[0], frame.shape[1], height, width)
    if (new_h, new_w) == (frame.shape[0], frame.shape[1]) or frame.ndim != 3 or frame.shape[2] != 3:
        return Image.fromarray(resize_center_crop(frame, height, width))
    return _resize_crop_image(frame, (new_h, new_w), (left, top, left + width, top + height))


def frame_indices(num_frames: int, stride: int, max_frames: int | None) -> list[int]:
    """Source frames kept: every ``stride``-th from 0, at most ``max_frames`` of them."""
    idx = list(range(0, num_frames, stride))
    return idx if max_frames is None else idx[:max_frames]


def list_videos(videos_dir: Path) -> list[tuple[str, Path]]:
    """``(split, path)`` for every video under ``videos_dir/<split>/``, sorted; hidden and ``.part`` files skipped."""
    if not videos_dir.is_dir():
        raise FileNotFoundError(f"{videos_dir}: no videos directory (run `dreampose download` first)")
    out = []
    for split_dir in sorted(p for p in videos_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(split_dir.iterdir()):
            if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in VIDEO_SUFFIXES:
                out.append((split_dir.name, path))
    return out


def _resize_and_save(frame: Image.Image, path: Path, cfg: FramesConfig) -> None:
    # An unbuffered file object: PIL's encoder writes straight to its descriptor, without PIL opening the path
    # itself (an existence check and a buffered read-write file, which seeks); "x" as the staging directory is
    # fresh, so a second writer of one name is a bug, not an overwrite. The encoder and its bytes are PIL's.
    with open(path, "xb", buffering=0) as fh:
        # 4:4:4 chroma: at demo sizes (64 × 48) 4:2:0 visibly smears garment colours across edges
        frame_image(frame, cfg.height, cfg.width).save(fh, format="JPEG", quality=cfg.jpeg_quality, subsampling=0)


def _resize_and_save_all(frames: list[tuple[Image.Image, Path]], cfg: FramesConfig) -> None:
    for frame, path in frames:
        _resize_and_save(frame, path, cfg)


def _display(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _extract_video(
    cfg: FramesConfig, split: str, path: Path, video_dir: Path, rel_dir: str, pool: ThreadPoolExecutor
) -> dict[str, list]:
    """Frames of one video into ``video_dir``, and its index columns; raises ``ValueError`` if it cannot be
    decoded."""
    reader, num_frames, fps = open_stream(path)
    wanted = frame_indices(num_frames, cfg.stride, cfg.max_frames)
    video_dir.mkdir(parents=True)
    decoded = 0
    pending: deque[Future] = deque()
    chunk: list[tuple[Image.Image, Path]] = []
    try:
        for k, (_, frame) in enumerate(iter_video(path, wanted, reader=reader, reuse=True)):
            # the frame becomes a PIL image here (its own copy of the reused decoding buffer); resize, encode and
            # the file write leave the decoding thread, a few frames per task so the hand-over (a lock, a wake-up,
            # the GIL) is paid once per chunk rather than once per frame
            chunk.append((Image.fromarray(frame), video_dir / f"{k:05d}.jpg"))
            decoded = k + 1
            if len(chunk) == _CHUNK:
                pending.append(pool.submit(_resize_and_save_all, chunk, cfg))
                chunk = []
                if len(pending) >= _MAX_PENDING // _CHUNK:
                    pending.popleft().result()
        if chunk:
            pending.append(pool.submit(_resize_and_save_all, chunk, cfg))
    finally:
        for fut in pending:
            fut.result()
    if decoded != len(wanted):
        raise ValueError(f"{path}: not a readable video ({decoded} of {len(wanted)} frames decoded)")
    return index_columns(path.stem, split, rel_dir, wanted, fps, cfg)


def index_columns(
    video: str, split: str, rel_dir: str, source_frames: list[int], fps: float, cfg: FramesConfig
) -> dict[str, list]:
    """One video's rows of ``index.parquet``, column by column (``INDEX_SCHEMA``'s names and order): frame ``k``
    is ``source_frames[k]`` of the video, written as ``rel_dir/kkkkk.jpg``."""
    n = len(source_frames)
    return {
        "video": [video] * n,
        "split": [split] * n,
        "frame": list(range(n)),
        "source_frame": list(source_frames),
        "timestamp": [i / fps if fps > 0 else 0.0 for i in source_frames],
        "path": [f"{rel_dir}/{k:05d}.jpg" for k in range(n)],
        "width": [cfg.width] * n,
        "height": [cfg.height] * n,
    }


def index_table(columns: dict[str, list]) -> pa.Table:
    """``index.parquet``'s table from its columns, with the pandas metadata a ``pa.Table.from_pandas`` of the
    same rows carries (so the file's bytes are those of the pandas-built index), built without pandas: a
    DataFrame of every row cost several milliseconds per run, 3 % of a small extraction."""
    return pa.table(columns, schema=INDEX_SCHEMA.with_metadata(_pandas_metadata()))


@functools.cache
def _pandas_metadata() -> dict[bytes, bytes]:
    # it describes the column types only (the same for one row as for a million): take it from one row
    one = {"video": ["v"], "split": ["s"], "frame": [0], "source_frame": [0], "timestamp": [0.0], "path": ["p"]}
    one |= {"width": [16], "height": [16]}
    return pa.Table.from_pandas(pd.DataFrame(one), schema=INDEX_SCHEMA, preserve_index=False).schema.metadata


def _video_or_quarantine(
    cfg: FramesConfig, split: str, path: Path, video_dir: Path, rel_dir: str, root: Path, pool: ThreadPoolExecutor
) -> tuple[dict[str, list] | None, dict[str, str] | None]:
    """One video's index columns, or none and its quarantine entry when it cannot be decoded."""
    try:
        return _extract_video(cfg, split, path, video_dir, rel_dir, pool), None
    except ValueError as err:
        shutil.rmtree(video_dir, ignore_errors=True)
        return None, {"video": path.stem, "split": split, "path": _display(path, root), "reason": str(err)}


def _video_job(
    cfg: FramesConfig, split: str, path: Path, video_dir: Path, rel_dir: str, root: Path
) -> tuple[dict[str, list] | None, dict[str, str] | None]:
    """One video as a cluster task: its own encoder pool of ``cfg.workers`` threads."""
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        return _video_or_quarantine(cfg, split, path, video_dir, rel_dir, root, pool)


def extract_frames(
    cfg: FramesConfig, videos_dir: Path, out_dir: Path, root: Path | None = None, client: Any = None
) -> dict[str, Any]:
    """Write ``out_dir/<split>/<video>/NNNNN.jpg``, ``index.parquet`` and ``quarantine.json``.

    ``path`` in the index is relative to ``root`` (default: ``out_dir/../..``, the workspace root
    for the standard ``data/frames`` layout). Built in a temporary directory and swapped in at the
    end; raises ``ValueError`` if no video is readable. Returns a summary with the throughput.
    ``client``: a ``distributed.Client`` to run the videos on (``dreampose.cluster``); the files are identical.
    """
    videos_dir, out_dir = Path(videos_dir), Path(out_dir)
    root = Path(root) if root is not None else out_dir.parent.parent
    rel_out = out_dir.resolve().relative_to(root.resolve()).as_posix()
    videos = list_videos(videos_dir)
    if not videos:
        raise ValueError(f"{videos_dir}: no videos found under <split>/ subdirectories")
    tmp = staging_dir(out_dir)
    tmp.mkdir()
    start = time.perf_counter()
    columns: dict[str, list] = {name: [] for name in INDEX_SCHEMA.names}
    videos_per_split: dict[str, int] = {}
    quarantine: list[dict[str, str]] = []
    jobs = [
        (cfg, split, path, tmp / split / path.stem, f"{rel_out}/{split}/{path.stem}", root) for split, path in videos
    ]
    try:
        if client is None:
            # cfg.workers videos decode at once (decord releases the GIL), sharing cfg.workers encoder threads
            with (
                ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="encode") as pool,
                ThreadPoolExecutor(max_workers=min(cfg.workers, len(jobs)), thread_name_prefix="decode") as decoders,
                tqdm(total=len(jobs), desc="frames", unit="video", leave=False) as bar,
            ):
                futures = [decoders.submit(_video_or_quarantine, *job, pool) for job in jobs]
                for fut in futures:
                    fut.add_done_callback(lambda _f: bar.update(1))
                results = [fut.result() for fut in futures]  # in video order, whatever order they finished
        else:
            from dreampose.cluster import map_ordered

            with tqdm(total=len(jobs), desc="frames (cluster)", unit="video", leave=False) as bar:
                results = map_ordered(client, _video_job, jobs, on_done=lambda _f: bar.update(1))
        for (_, split, *_), (video_columns, entry) in zip(jobs, results, strict=True):
            if entry is not None:
                quarantine.append(entry)
                continue
            videos_per_split[split] = videos_per_split.get(split, 0) + 1
            for name, values in video_columns.items():
                columns[name] += values
        frames = len(columns["frame"])
        if not frames:
            reasons = "; ".join(q["reason"] for q in quarantine[:3])
            raise ValueError(f"{videos_dir}: none of {len(videos)} videos is readable ({reasons})")
        seconds = time.perf_counter() - start
        pq.write_table(index_table(columns), tmp / "index.parquet")
        (tmp / "quarantine.json").write_text(json.dumps({"count": len(quarantine), "videos": quarantine}, indent=2))
        replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
    return {
        "videos": len(videos) - len(quarantine),
        "quarantined": len(quarantine),
        "frames": frames,
        "seconds": round(seconds, 3),
        "fps": round(frames / seconds, 1) if seconds > 0 else 0.0,
        **{f"videos_{k}": v for k, v in sorted(videos_per_split.items())},
    }
