"""What a method is scored against: each evaluation subject's test targets (ground truth, person masks, input photo,
pose windows, FVD clip), its rendered frames, and the same at a smaller size (Table 1, the eye metrics)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dreampose.data.dataset import load_pose_sequence
from dreampose.io import load_iuv, read_rgb
from dreampose.metrics.ghosting import estimate_background
from dreampose.render import FRAME_NAME, fvd_rows, subject_rows

# The eye metrics are measured on frames at most this long (the paper's Table-1 size); their blur radii grow with the
# frame size, so at 640 px their cost would grow with its cube (docs/metrics.md).
EYE_LONG_SIDE = 256


@dataclass
class SubjectData:
    """One subject's test targets: ground truth, person masks, input photo and pose windows."""

    subject: str
    frames: list[int]
    truth: np.ndarray  # uint8 (N, H, W, 3)
    masks: np.ndarray  # bool (N, H, W)
    image: np.ndarray  # uint8 (H, W, 3)
    poses: torch.Tensor | None = None  # (N, 10, H, W), loaded when a baseline needs it
    fvd_frames: list[int] = field(default_factory=list)  # consecutive frames of the FVD clip, if any
    fvd_truth: np.ndarray | None = None  # uint8 (L, H, W, 3)
    fvd_poses: torch.Tensor | None = None  # (L, 10, H, W), loaded when a baseline needs it
    background: tuple[np.ndarray, np.ndarray] | None = None  # (colour, known) estimated from truth and masks
    eye: SubjectData | None = None  # this subject at EYE_LONG_SIDE, for the eye metrics of frames larger than that

    def background_estimate(self) -> tuple[np.ndarray, np.ndarray]:
        """The video's background and where it is known (see ``dreampose.metrics.ghosting``), computed once."""
        if self.background is None:
            self.background = estimate_background(self.truth, self.masks)
        return self.background


def to_batch(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0


def table1_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """``(h, w)`` with the longer side ``long_side`` and the aspect kept (640 x 512 at 256 -> 256 x 205)."""
    if long_side > max(height, width):
        raise ValueError(
            f"score.table1_size {long_side} is larger than the {height}x{width} frames; the Table-1 numbers "
            "are a downsampled copy (set it to null for frames this small)"
        )
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``(N, H, W, 3)`` -> uint8 ``(N, h, w, 3)``, antialiased bilinear (what an image library's resize does)."""
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames
    x = torch.nn.functional.interpolate(to_batch(np.array(frames)), size=size, mode="bilinear", antialias=True)
    return (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def resize_subject(s: SubjectData, size: tuple[int, int]) -> SubjectData:
    """The subject's ground truth, masks, photo and FVD clip at ``size`` (masks by nearest neighbour)."""
    m = torch.from_numpy(s.masks[:, None].astype(np.float32))
    masks = torch.nn.functional.interpolate(m, size=size, mode="nearest")[:, 0].numpy() > 0.5
    fvd_truth = resize_frames(s.fvd_truth, size) if s.fvd_truth is not None else None
    return SubjectData(
        s.subject, s.frames, resize_frames(s.truth, size), masks, resize_frames(s.image[None], size)[0],
        fvd_frames=s.fvd_frames, fvd_truth=fvd_truth,
    )  # fmt: skip


def load_renders(render_dir: Path, frames: Sequence[int], truth: np.ndarray) -> np.ndarray:
    """A subject's rendered frames, checked complete and the same size as the ground truth."""
    frames_dir = Path(render_dir) / "frames"
    paths = [frames_dir / FRAME_NAME.format(f) for f in frames]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
        raise ValueError(f"{frames_dir}: {len(missing)} of {len(paths)} rendered frames missing ({shown})")
    out = []
    for p, gt in zip(paths, truth, strict=True):
        img = read_rgb(p)
        if img.shape != gt.shape:
            raise ValueError(f"{p}: rendered frame is {img.shape[:2]} but the ground truth is {gt.shape[:2]} (H, W)")
        out.append(img)
    return np.stack(out)


def load_subject(df: pd.DataFrame, subject: str, test_manifest: Path, root: Path) -> SubjectData:
    rows = subject_rows(df, subject, test_manifest)
    frames = [int(f) for f in rows["target_frame"]]
    truth = np.stack([read_rgb(root / p) for p in rows["target_path"]])
    iuv = load_iuv(root / rows["densepose_path"].iloc[0])
    masks = iuv[frames][..., 0] > 0
    image = read_rgb(root / rows["input_path"].iloc[0])
    return SubjectData(subject, frames, truth, masks, image)


def subject_poses(
    df: pd.DataFrame, s: SubjectData, test_manifest: Path, root: Path, clip: bool = False
) -> torch.Tensor:
    """The pose windows of the subject's test frames, or with ``clip`` of its FVD clip's frames, read once from its
    DensePose archive and kept on ``s``."""
    if (s.fvd_poses if clip else s.poses) is None:
        rows = subject_rows(df, s.subject, test_manifest)
        window = len(rows["pose_frames"].iloc[0])
        poses = load_pose_sequence(root / rows["densepose_path"].iloc[0], s.fvd_frames if clip else s.frames, window)
        if clip:
            s.fvd_poses = poses
        else:
            s.poses = poses
    return s.fvd_poses if clip else s.poses


def attach_fvd_clips(data: list[SubjectData], fvd_manifest: Path, root: Path) -> str | None:
    """Load each subject's FVD clip ground truth from ``fvd_manifest``; returns why FVD cannot run, or None."""
    fvd_manifest = Path(fvd_manifest)
    if not fvd_manifest.is_file():
        return f"no FVD clip manifest at {fvd_manifest} (re-run `dreampose manifest`)"
    for s in data:
        rows = fvd_rows(fvd_manifest, s.subject)
        s.fvd_frames = [int(f) for f in rows["target_frame"]]
        s.fvd_truth = np.stack([read_rgb(root / p) for p in rows["target_path"]]) if len(rows) else None
    return None


def eye_view(
    s: SubjectData, generated: np.ndarray, clip: np.ndarray | None
) -> tuple[SubjectData, np.ndarray, np.ndarray | None]:
    """The subject, its generated frames and clip at most ``EYE_LONG_SIDE`` pixels long (the eye metrics' size);
    unchanged when already that small. The resized subject is kept on ``s``, so its background is estimated once."""
    h, w = s.truth.shape[1:3]
    if max(h, w) <= EYE_LONG_SIDE:
        return s, generated, clip
    size = table1_shape(h, w, EYE_LONG_SIDE)
    if s.eye is None:
        s.eye = resize_subject(s, size)
    return s.eye, resize_frames(generated, size), (resize_frames(clip, size) if clip is not None else None)
