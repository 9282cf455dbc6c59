"""Catalog pose sequences: an IUV directory, an ``.npz``, a video (through the configured DensePose backend) or a
test video id of the workspace, fitted to the model's frame size; and the optional ground truth."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from dreampose.catalog.photo import resize_center_crop
from dreampose.config import DensePoseConfig, FramesConfig
from dreampose.io import read_rgb
from dreampose.layout import Workspace
from dreampose.video import VIDEO_SUFFIXES

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
    from dreampose.io import load_iuv

    npz = sorted(path.glob("*.npz"))
    pngs = sorted(path.glob("*.png"))
    if npz:
        arrays = [load_iuv(p) for p in npz]
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


def densepose_backend(cfg: DensePoseConfig, root: Path, height: int, width: int):
    """The configured DensePose backend, its weight/config paths taken relative to the workspace ``root``
    (the densepose stage's own ``rooted_config``), so the item works from any working directory."""
    from dreampose.data.densepose.run import make_backend, rooted_config

    return make_backend(rooted_config(cfg, root), Workspace(root).raw, height, width)


def _video_iuv(path: Path, cfg: DensePoseConfig, height: int, width: int, root: Path = Path(".")) -> np.ndarray:
    """Run the configured DensePose backend over a driving video's frames."""
    if cfg.backend == "synthetic":
        raise ValueError(
            f"poses video {path}: DensePose on a video needs densepose.backend torchscript or detectron2 "
            "(the synthetic backend only knows the generated videos); pass a test video id or an IUV directory"
        )
    import pandas as pd

    from dreampose.video import read_video

    frames, _fps = read_video(path)
    frames = np.stack([np.asarray(resize_center_crop(Image.fromarray(f), height, width)) for f in frames])
    backend = densepose_backend(cfg, root, height, width)
    rows = pd.DataFrame({"video": path.stem, "split": "catalog", "frame": range(len(frames))})
    results = []
    for start in range(0, len(frames), cfg.batch_size):
        batch = frames[start : start + cfg.batch_size]
        results.extend(backend.predict(batch, rows.iloc[start : start + len(batch)]))
    if not any(r.person_found for r in results):
        raise ValueError(f"poses video {path}: DensePose found no person in any frame")
    return np.stack([r.iuv for r in results])


def _test_video(video: str, root: Path) -> PoseSequence:
    """A test video of the workspace: the test manifest's target frames, their ground truth and input pose."""
    import pandas as pd

    from dreampose.io import load_iuv

    manifest = Workspace(root).test_manifest
    if not manifest.is_file():
        raise ValueError(f"poses {video!r}: not a path, and there is no {manifest} to look it up as a test video id")
    df = pd.read_parquet(manifest)
    rows = df[df["video"] == video].sort_values("target_frame")
    if rows.empty:
        known = sorted(df["video"].unique())[:10]
        raise ValueError(f"poses {video!r}: not a path and not a test video id in {manifest} (e.g. {known})")
    iuv = load_iuv(root / rows["densepose_path"].iloc[0])
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
        from dreampose.io import load_iuv

        iuv = fit_iuv(load_iuv(path), height, width)
        return PoseSequence(iuv=iuv, frame_ids=list(range(len(iuv))), source=str(path))
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        iuv = _video_iuv(path, params.densepose, height, width, root)
        return PoseSequence(iuv=iuv, frame_ids=list(range(len(iuv))), source=str(path))
    if path.exists():
        raise ValueError(f"poses {poses}: expected a directory of IUV files, an .npz or a video ({VIDEO_SUFFIXES})")
    seq = _test_video(poses, root)
    if seq.iuv.shape[1:3] != (height, width):
        raise ValueError(f"test video {poses}: IUV is {seq.iuv.shape[1:3]}, params frames are {(height, width)}")
    return seq


def load_ground_truth(ground_truth: str, seq: PoseSequence, root: Path, frames: FramesConfig) -> np.ndarray:
    """Ground-truth frames aligned with ``seq.frame_ids``: the test video's own, or a directory of images."""
    path = Path(ground_truth) if Path(ground_truth).is_absolute() else root / ground_truth
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if len(files) != len(seq.iuv):
            raise ValueError(f"ground truth {path}: {len(files)} images for a {len(seq.iuv)}-frame pose sequence")
        h, w = frames.height, frames.width
        imgs = [np.asarray(resize_center_crop(Image.fromarray(read_rgb(files[i])), h, w)) for i in seq.frame_ids]
        return np.stack(imgs)
    if seq.truth is not None and seq.source == f"test video {ground_truth}":
        return seq.truth
    raise ValueError(f"ground truth {ground_truth!r}: expected a frames directory or the test video id given as poses")
