"""A tiny evaluation workspace built in a test: ground-truth frames, IUV archives, test.parquet."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from dreampose.config import TinyModelConfig
from dreampose.data.densepose.iuv import pose_window_indices
from dreampose.data.manifest import SCHEMA

H, W = 32, 24
NUM_FRAMES = 12
SUBJECTS = ("syn_test_000", "syn_test_001")
TINY = TinyModelConfig(
    vae_channels=(8, 16, 16),
    unet_channels=(16, 32),
    cross_attention_dim=32,
    clip_hidden=32,
    clip_layers=1,
    clip_patch=8,
)


def make_iuv(t: int) -> np.ndarray:
    """A box-shaped body that walks right over the frames: parts 1 / 2 (top / bottom), U and V ramps."""
    iuv = np.zeros((H, W, 3), np.uint8)
    x0 = 3 + t % 8
    iuv[6:16, x0 : x0 + 10, 0] = 1
    iuv[16:28, x0 : x0 + 10, 0] = 2
    body = iuv[..., 0] > 0
    iuv[..., 1] = np.where(body, np.linspace(0, 255, W)[None, :].round().astype(np.uint8), 0)
    iuv[..., 2] = np.where(body, np.linspace(0, 255, H)[:, None].round().astype(np.uint8), 0)
    return iuv


def make_frame(iuv: np.ndarray, colour: Sequence[int]) -> np.ndarray:
    img = np.full((H, W, 3), 40, np.uint8)
    body = iuv[..., 0] > 0
    img[body] = colour
    img[(iuv[..., 0] == 2)] = np.array(colour) // 2  # darker lower garment
    return img


def manifest_row(subject: str, target: int) -> dict:
    """One test-manifest row of the stand-in workspace: input frame 0 of ``subject`` against ``target``."""
    return {
        "subject_id": subject,
        "video": subject,
        "split": "test",
        "input_frame": 0,
        "target_frame": target,
        "input_path": f"data/frames/test/{subject}/00000.png",
        "target_path": f"data/frames/test/{subject}/{target:05d}.png",
        "densepose_path": f"data/densepose/test/{subject}.npz",
        "pose_frames": pose_window_indices(target, NUM_FRAMES, 5),
    }


def make_workspace(root: Path, targets: Sequence[int] = (4, 6, 8, 10), subjects: Sequence[str] = SUBJECTS) -> Path:
    """Write frames + IUV for ``subjects`` and a test manifest with ``targets``; returns the manifest path."""
    rows = []
    colours = [(200, 30, 30), (30, 60, 200), (30, 180, 60)]
    for k, s in enumerate(subjects):
        iuv = np.stack([make_iuv(t) for t in range(NUM_FRAMES)])
        dp = root / "data/densepose/test" / f"{s}.npz"
        dp.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(dp, iuv=iuv)
        for t in range(NUM_FRAMES):
            p = root / "data/frames/test" / s / f"{t:05d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(make_frame(iuv[t], colours[k % 3])).save(p)
        for t in targets:
            rows.append(manifest_row(s, t))
    path = root / "data/manifests/test.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows, columns=SCHEMA.names)
    df.astype({"input_frame": "int32", "target_frame": "int32"}).to_parquet(path, index=False)
    return path


def tiny_pipeline(seed: int = 0):
    from dreampose.models.builders import build_tiny_components
    from dreampose.models.pipeline import DreamPosePipeline

    pipe = DreamPosePipeline(**build_tiny_components(TINY, H, W, seed=seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


class CountingPipeline:
    """Forwards to a real pipeline and counts the frames it was asked to render."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.frames = 0
        self.calls = 0

    def set_scheduler(self, name: str) -> None:
        self.pipe.set_scheduler(name)

    def __call__(self, image, poses, **kwargs):
        self.calls += 1
        self.frames += len(poses)
        return self.pipe(image, poses, **kwargs)


def make_fvd_manifest(root: Path, start: int = 5, length: int = 4, subjects: Sequence[str] = SUBJECTS) -> Path:
    """``fvd.parquet`` beside the test manifest: ``length`` consecutive frames from ``start`` per subject."""
    rows = [manifest_row(s, t) for s in subjects for t in range(start, start + length)]
    path = root / "data/manifests/fvd.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows, columns=SCHEMA.names)
    df.astype({"input_frame": "int32", "target_frame": "int32"}).to_parquet(path, index=False)
    return path
