"""The densepose stage: every frame of the frames index -> aligned IUV archives + an index."""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
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
from dreampose.fsutil import replace_dir

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


def run_densepose(
    cfg: DensePoseConfig,
    frames_dir: Path,
    raw_dir: Path,
    out_dir: Path,
    backend: DensePoseBackend | None = None,
    device: str | torch.device = "auto",
) -> dict[str, Any]:
    """Write ``<out_dir>/<split>/<video>.npz`` (key ``iuv``, uint8 ``(T, H, W, 3)``, in frames-index order)
    and ``<out_dir>/index.parquet``. Frames without a person get zeros and ``person_found = False``;
    a video without anybody is a warning, all frames empty is an error. ``backend`` overrides ``cfg.backend``;
    ``device`` (``runtime.device``) is where a model backend runs.
    """
    frames_dir, raw_dir, out_dir = Path(frames_dir), Path(raw_dir), Path(out_dir)
    index = read_frames_index(frames_dir)
    height, width = int(index["height"].iloc[0]), int(index["width"].iloc[0])
    backend = backend or make_backend(cfg, raw_dir, height, width, device)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    records: list[dict[str, Any]] = []
    empty_videos: list[str] = []
    t0 = time.perf_counter()
    try:
        bar = tqdm(total=len(index), desc=f"densepose ({backend.name})", unit="frame", leave=False)
        for (split, video), rows in index.groupby(["split", "video"], sort=True):
            iuvs = []
            for s in range(0, len(rows), cfg.batch_size):
                batch = rows.iloc[s : s + cfg.batch_size]
                pixels = (
                    _load_frames(frames_dir, batch)
                    if backend.needs_pixels
                    else np.zeros((len(batch), 0, 0, 3), np.uint8)
                )
                results = backend.predict(pixels, batch)
                if len(results) != len(batch):
                    raise ValueError(f"backend {backend.name} returned {len(results)} results for {len(batch)} frames")
                for r, res in zip(batch.itertuples(index=False), results, strict=True):
                    if res.iuv.shape != (height, width, 3):
                        raise ValueError(
                            f"{split}/{video} frame {r.frame}: IUV shape {res.iuv.shape} != frame {(height, width, 3)}"
                        )
                    iuvs.append(res.iuv)
                    records.append(
                        dict(
                            video=video,
                            split=split,
                            frame=int(r.frame),
                            person_found=bool(res.person_found),
                            score=float(res.score),
                            box_x0=res.box[0],
                            box_y0=res.box[1],
                            box_x1=res.box[2],
                            box_y1=res.box[3],
                        )
                    )
                bar.update(len(batch))
            if not any(rec["person_found"] for rec in records[-len(rows) :]):
                log.warning("densepose: no person found in any frame of %s/%s; its frames are flagged", split, video)
                empty_videos.append(f"{split}/{video}")
            (tmp / split).mkdir(parents=True, exist_ok=True)
            np.savez_compressed(tmp / split / f"{video}.npz", iuv=np.stack(iuvs))
        bar.close()
        table = pa.Table.from_pylist(records, schema=INDEX_SCHEMA)
        found = int(np.sum(table.column("person_found").to_numpy(zero_copy_only=False)))
        if found == 0:
            raise ValueError(
                f"densepose: no person found in any of {len(records)} frames of {index['video'].nunique()} videos "
                f"(backend {backend.name}, min_score {cfg.min_score}); check the frames and the weights"
            )
        pq.write_table(table, tmp / "index.parquet")
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - t0
    return {
        "backend": backend.name,
        "device": str(backend.device) if hasattr(backend, "device") else None,
        "videos": int(index["video"].nunique()),
        "frames": len(records),
        "frames_with_person": found,
        "frames_without_person": len(records) - found,
        "videos_without_person": empty_videos,
        "seconds": round(seconds, 3),
        "frames_per_s": round(len(records) / seconds, 2) if seconds > 0 else math.inf,
    }
