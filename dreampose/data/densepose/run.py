"""The densepose stage: every frame of the frames index -> aligned IUV archives + an index."""

from __future__ import annotations

import logging
import math
import os
import queue
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from tqdm import tqdm

from dreampose.config import DensePoseConfig
from dreampose.data.densepose.base import DensePoseBackend
from dreampose.fsutil import replace_dir, staging_dir

log = logging.getLogger(__name__)

INDEX_SCHEMA = pa.schema(
    [
        ("video", pa.string()),
        ("split", pa.string()),
        ("frame", pa.int32()),
        ("person_found", pa.bool_()),
        ("score", pa.float32()),
        ("box_x0", pa.float32()),
        ("box_y0", pa.float32()),
        ("box_x1", pa.float32()),
        ("box_y1", pa.float32()),
    ]
)
FRAMES_COLUMNS = ("video", "split", "frame", "source_frame", "path", "width", "height")


def rooted_config(cfg: DensePoseConfig, root: Path) -> DensePoseConfig:
    """``cfg`` with its weight/config paths taken relative to the workspace ``root`` (params.yaml names them
    relative to the workspace, not the working directory); the densepose stage and catalog items both use it."""
    return cfg.model_copy(
        update={"weights": str(Path(root) / cfg.weights), "detectron2_config": str(Path(root) / cfg.detectron2_config)}
    )


def make_backend(
    cfg: DensePoseConfig, raw_dir: Path, height: int, width: int, device: str | torch.device = "auto"
) -> DensePoseBackend:
    """The backend named by ``cfg.backend`` on ``device`` (``runtime.device``, or a resolved one);
    ``cfg.weights`` / ``detectron2_config`` are used as given."""
    if cfg.backend == "synthetic":
        from dreampose.data.densepose.synthetic import SyntheticBackend

        return SyntheticBackend(raw_dir, height, width)
    if cfg.backend == "torchscript":
        from dreampose.data.densepose.torchscript import TorchScriptBackend

        return TorchScriptBackend(cfg.weights, cfg.min_score, device)
    from dreampose.data.densepose.detectron2 import Detectron2Backend

    return Detectron2Backend(cfg.detectron2_config, cfg.weights, cfg.min_score, device)


def read_frames_index(frames_dir: Path) -> pd.DataFrame:
    path = Path(frames_dir) / "index.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no frames index (run `dreampose frames` first)")
    df = pd.read_parquet(path)
    missing = [c for c in FRAMES_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: frames index lacks columns {missing}")
    if df.empty:
        raise ValueError(f"{path}: frames index is empty")
    return df.sort_values(["split", "video", "frame"], kind="stable").reset_index(drop=True)


def _load_frames(frames_dir: Path, rows: pd.DataFrame) -> np.ndarray:
    imgs = []
    for r in rows.itertuples(index=False):
        p = Path(frames_dir) / r.split / r.video / Path(r.path).name
        with Image.open(p) as im:
            imgs.append(np.asarray(im.convert("RGB")))
    return np.stack(imgs)


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """The video's IUV archive through the one IUV writer (``dreampose.io.write_iuv_archive``: frame-indexed,
    equal arrays give equal bytes); ``arrays`` is ``iuv=`` alone."""
    from dreampose.io import write_iuv_archive

    if set(arrays) != {"iuv"}:
        raise ValueError(f"{path}: an IUV archive holds 'iuv' alone, got {sorted(arrays)}")
    write_iuv_archive(path, arrays["iuv"])


def _write_archive(out_file: Path, iuvs: list[np.ndarray]) -> None:
    """One video's IUV frames -> its archive (the unit the background writer runs)."""
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_npz(out_file, iuv=np.stack(iuvs))


def default_workers() -> int:
    """Frame-decoding threads when not given: up to 4, one less than the CPUs (the model's thread keeps one)."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


class _Stage:
    """A background thread applying ``fn`` to queued items in order, at most ``depth`` waiting. An error in
    ``fn`` is raised in the caller at its next ``put`` or at ``close``; ``abort`` drops what is still queued."""

    def __init__(self, name: str, fn: Callable[[Any], object], depth: int):
        self._fn = fn
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._abort = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None and not self._abort:
                try:
                    self._fn(item[0])
                except BaseException as err:  # handed to the caller
                    self._error = err

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, item: Any) -> None:
        self._raise()
        self._queue.put((item,))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._raise()

    def abort(self) -> None:
        self._abort = True
        self._queue.put(None)
        self._thread.join()


def _decoded(frames_dir: Path, batches: list[pd.DataFrame], needs_pixels: bool, workers: int) -> Iterator[np.ndarray]:
    """Each batch's pixels, in order; with ``workers`` > 0 decoded ahead on that many threads (JPEG decoding
    releases the GIL), at most ``2 * workers`` batches ahead."""

    def load(batch: pd.DataFrame) -> np.ndarray:
        return _load_frames(frames_dir, batch) if needs_pixels else np.zeros((len(batch), 0, 0, 3), np.uint8)

    if workers == 0 or not needs_pixels:
        yield from (load(b) for b in batches)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="densepose-decode")
    try:
        pending: deque[Future] = deque(pool.submit(load, b) for b in batches[: 2 * workers])
        ahead = len(pending)
        while pending:
            pixels = pending.popleft().result()
            if ahead < len(batches):
                pending.append(pool.submit(load, batches[ahead]))
                ahead += 1
            yield pixels
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _densepose_videos(
    backend: DensePoseBackend,
    cfg: DensePoseConfig,
    frames_dir: Path,
    videos: list[tuple[pd.DataFrame, Path]],
    height: int,
    width: int,
    progress: Callable[[int], object] | None = None,
    workers: int = 0,
) -> list[list[dict[str, Any]]]:
    """Videos' frames (``(rows in index order, archive path)`` each) through ``backend`` into their archives;
    their index records.

    ``workers`` = 0: one step after the other (decode a batch, run the model, turn its outputs into IUV, write
    each archive when its video is done). ``workers`` > 0: a pipeline, so the model's thread only feeds the
    model: frames are decoded ahead on that many threads; a backend with ``infer``/``results`` has its outputs
    turned into IUV on a second thread; archives are written on a third. The same bytes are written either way.
    """
    batches = [
        (v, rows.iloc[s : s + cfg.batch_size])
        for v, (rows, _) in enumerate(videos)
        for s in range(0, len(rows), cfg.batch_size)
    ]
    left = [0] * len(videos)  # batches still to collect, per video
    for v, _ in batches:
        left[v] += 1
    iuvs: list[list[np.ndarray]] = [[] for _ in videos]
    records: list[list[dict[str, Any]]] = [[] for _ in videos]
    split = callable(getattr(backend, "infer", None)) and callable(getattr(backend, "results", None))
    overlap = workers > 0
    writer = _Stage("densepose-writer", lambda job: _write_archive(*job), depth=1) if overlap else None

    def collect(item: tuple[int, pd.DataFrame, Any]) -> None:
        """A batch's model outputs -> its IUVs and index records; a finished video's archive is written."""
        v, batch, raw = item
        results = backend.results(raw) if split else raw
        if len(results) != len(batch):
            raise ValueError(f"backend {backend.name} returned {len(results)} results for {len(batch)} frames")
        for r, res in zip(batch.itertuples(index=False), results, strict=True):
            if res.iuv.shape != (height, width, 3):
                raise ValueError(
                    f"{r.split}/{r.video} frame {r.frame}: IUV shape {res.iuv.shape} != frame {(height, width, 3)}"
                )
            iuvs[v].append(res.iuv)
            records[v].append(
                dict(
                    video=r.video,
                    split=r.split,
                    frame=int(r.frame),
                    person_found=bool(res.person_found),
                    score=float(res.score),
                    box_x0=res.box[0],
                    box_y0=res.box[1],
                    box_x1=res.box[2],
                    box_y1=res.box[3],
                )
            )
        left[v] -= 1
        if left[v] == 0:  # the video is complete: its archive is written, its frames released here
            done, iuvs[v] = iuvs[v], []
            if writer is None:
                _write_archive(videos[v][1], done)
            else:
                writer.put((videos[v][1], done))

    post = _Stage("densepose-results", collect, depth=2) if overlap else None
    decoded = _decoded(frames_dir, [b for _, b in batches], backend.needs_pixels, workers)
    try:
        for (v, batch), pixels in zip(batches, decoded, strict=True):
            raw = backend.infer(pixels, batch) if split else backend.predict(pixels, batch)
            if post is None:
                collect((v, batch, raw))
            else:
                post.put((v, batch, raw))
            if progress is not None:
                progress(len(batch))
        for stage in (post, writer):
            if stage is not None:
                stage.close()
    except BaseException:
        for stage in (post, writer):
            if stage is not None:
                stage.abort()
        raise
    finally:
        decoded.close()  # stops the decoding threads
    return records


def _densepose_video(
    backend: DensePoseBackend,
    cfg: DensePoseConfig,
    frames_dir: Path,
    rows: pd.DataFrame,
    height: int,
    width: int,
    out_file: Path,
    progress: Callable[[int], object] | None = None,
    workers: int = 0,
) -> list[dict[str, Any]]:
    """One video's frames (``rows``, in index order) through ``backend`` into ``out_file``; its index records."""
    return _densepose_videos(backend, cfg, frames_dir, [(rows, out_file)], height, width, progress, workers)[0]


_WORKER_BACKENDS: dict[tuple, DensePoseBackend] = {}  # one loaded model per (settings, device) in a worker


def _densepose_video_job(
    cfg: DensePoseConfig,
    device: str,
    gpus: int,
    frames_dir: Path,
    raw_dir: Path,
    rows: pd.DataFrame,
    height: int,
    width: int,
    out_file: Path,
    workers: int = 0,
) -> tuple[str, str, list[dict[str, Any]]]:
    """One video as a cluster task, on this worker's device; returns ``(backend name, device, records)``."""
    from dreampose.cluster import current_worker_name, device_for_worker

    device = device_for_worker(current_worker_name(), gpus, device)
    key = (cfg.model_dump_json(), device, str(raw_dir), height, width)
    if key not in _WORKER_BACKENDS:
        _WORKER_BACKENDS[key] = make_backend(cfg, raw_dir, height, width, device)
    backend = _WORKER_BACKENDS[key]
    records = _densepose_video(backend, cfg, frames_dir, rows, height, width, out_file, workers=workers)
    return backend.name, device, records


def run_densepose(
    cfg: DensePoseConfig,
    frames_dir: Path,
    raw_dir: Path,
    out_dir: Path,
    backend: DensePoseBackend | None = None,
    device: str | torch.device = "auto",
    client: Any = None,
    gpus: int = 0,
    workers: int | None = None,
) -> dict[str, Any]:
    """Write ``<out_dir>/<split>/<video>.npz`` (key ``iuv``, uint8 ``(T, H, W, 3)``, in frames-index order)
    and ``<out_dir>/index.parquet``. Frames without a person get zeros and ``person_found = False``;
    a video without anybody is a warning, all frames empty is an error. ``backend`` overrides ``cfg.backend``;
    ``device`` (``runtime.device``) is where a model backend runs.

    ``client``: a ``distributed.Client``; each video is then a task, and each worker loads its own backend
    on its device (``gpus`` > 0 and ``device`` auto/cuda: ``cuda:<worker index mod gpus>``, see
    ``dreampose.cluster``). The files written are the same bytes as in-process.

    ``workers``: frame-decoding threads (default ``default_workers()``); with any, decoding, the model and
    writing the archives overlap (a background writer thread). 0 runs them one after the other. The bytes
    written are the same either way.
    """
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise ValueError(f"run_densepose: workers must be >= 0, got {workers}")
    if client is not None and backend is not None:
        raise ValueError("run_densepose: a backend object runs in this process; pass client=None with it")
    frames_dir, raw_dir, out_dir = Path(frames_dir), Path(raw_dir), Path(out_dir)
    index = read_frames_index(frames_dir)
    height, width = int(index["height"].iloc[0]), int(index["width"].iloc[0])
    if client is None:
        backend = backend or make_backend(cfg, raw_dir, height, width, device)
    tmp = staging_dir(out_dir)
    groups = [((split, video), rows) for (split, video), rows in index.groupby(["split", "video"], sort=True)]
    per_video: list[list[dict[str, Any]]]
    devices: list[str] = []
    t0 = time.perf_counter()
    try:
        if client is None:
            name = backend.name
            with tqdm(total=len(index), desc=f"densepose ({name})", unit="frame", leave=False) as bar:
                videos = [(rows, tmp / split / f"{video}.npz") for (split, video), rows in groups]
                per_video = _densepose_videos(backend, cfg, frames_dir, videos, height, width, bar.update, workers)
        else:
            from dreampose.cluster import map_ordered

            jobs = []
            for (split, video), rows in groups:
                out_file = tmp / split / f"{video}.npz"
                jobs.append((cfg, str(device), gpus, frames_dir, raw_dir, rows, height, width, out_file, workers))
            with tqdm(total=len(jobs), desc="densepose (cluster)", unit="video", leave=False) as bar:
                done = map_ordered(client, _densepose_video_job, jobs, on_done=lambda _f: bar.update(1))
            name = done[0][0]
            devices = sorted({d for _, d, _ in done})
            per_video = [recs for _, _, recs in done]
        empty_videos: list[str] = []
        for ((split, video), _), recs in zip(groups, per_video, strict=True):
            if not any(rec["person_found"] for rec in recs):
                log.warning("densepose: no person found in any frame of %s/%s; its frames are flagged", split, video)
                empty_videos.append(f"{split}/{video}")
        records = [rec for recs in per_video for rec in recs]
        table = pa.Table.from_pylist(records, schema=INDEX_SCHEMA)
        found = int(np.sum(table.column("person_found").to_numpy(zero_copy_only=False)))
        if found == 0:
            raise ValueError(
                f"densepose: no person found in any of {len(records)} frames of {index['video'].nunique()} videos "
                f"(backend {name}, min_score {cfg.min_score}); check the frames and the weights"
            )
        pq.write_table(table, tmp / "index.parquet")
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - t0
    summary = {
        "backend": name,
        "device": str(backend.device) if client is None and hasattr(backend, "device") else None,
        "videos": int(index["video"].nunique()),
        "frames": len(records),
        "frames_with_person": found,
        "frames_without_person": len(records) - found,
        "videos_without_person": empty_videos,
        "seconds": round(seconds, 3),
        "frames_per_s": round(len(records) / seconds, 2) if seconds > 0 else math.inf,
    }
    if devices:
        summary["devices"] = devices
    return summary
