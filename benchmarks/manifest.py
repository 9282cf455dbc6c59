"""Manifest build time: ``build_manifests`` (merged indexes, vectorized per video) vs a naive per-row baseline
that looks every frame's DensePose row up with a boolean mask and appends pairs one at a time."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import emit, timed
from dreampose.config import ManifestConfig
from dreampose.data.densepose.iuv import pose_window_indices
from dreampose.data.manifest import build_manifests

VIDEOS, FRAMES = 200, 48


def _indexes(root: Path) -> None:
    (root / "data/frames").mkdir(parents=True)
    (root / "data/densepose").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = [
        dict(
            video=f"v{v:04d}", split="train" if v % 10 else "test", frame=f, path=f"data/frames/x/v{v:04d}/{f:05d}.jpg"
        )
        for v in range(VIDEOS)
        for f in range(FRAMES)
    ]
    frames = pd.DataFrame(rows)
    frames.to_parquet(root / "data/frames/index.parquet")
    dp = frames[["video", "split", "frame"]].assign(person_found=rng.random(len(frames)) > 0.02)
    dp.loc[dp.frame == 0, "person_found"] = True
    dp.to_parquet(root / "data/densepose/index.parquet")


def naive(cfg: ManifestConfig, root: Path) -> int:
    frames = pd.read_parquet(root / "data/frames/index.parquet")
    dp = pd.read_parquet(root / "data/densepose/index.parquet")
    rng = np.random.default_rng(cfg.seed)
    out = []
    for video in frames.video.unique():
        rows = frames[frames.video == video]
        ok = []
        for _, r in rows.iterrows():
            hit = dp[(dp.video == r.video) & (dp.frame == r.frame)]
            if bool(hit.person_found.iloc[0]):
                ok.append(int(r.frame))
        if rows.split.iloc[0] != "train":
            continue
        for _ in range(cfg.pairs_per_video):
            i, t = int(rng.choice(ok)), int(rng.choice(ok))
            out.append(dict(video=video, input_frame=i, target_frame=t, pose_frames=pose_window_indices(t, len(rows))))
    pd.DataFrame(out).to_parquet(root / "naive.parquet")
    return len(out)


def main() -> None:
    logging.disable(logging.INFO)
    cfg = ManifestConfig(pairs_per_video=64, test_num_targets=8, test_min_gap=8)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        _indexes(root)
        t_naive = timed(lambda: naive(cfg, root), repeat=1)
        t_ours = timed(
            lambda: build_manifests(cfg, root / "data/frames", root / "data/densepose", root / "data/manifests"),
            repeat=3,
        )
    emit(
        "manifest_build_seconds",
        {"videos": VIDEOS, "frames_per_video": FRAMES, "pairs_per_video": cfg.pairs_per_video},
        {"what": "per-row pandas lookups, train pairs only", "seconds": round(t_naive, 3)},
        {"what": "build_manifests (train + subject + test)", "seconds": round(t_ours, 3)},
        t_naive / t_ours,
    )


if __name__ == "__main__":
    main()
