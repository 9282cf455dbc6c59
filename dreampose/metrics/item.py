"""Catalog-item metrics that need no ground truth: temporal smoothness and colour drift from the input photo."""

from __future__ import annotations

import numpy as np

from dreampose.metrics.appearance import color_stats


def temporal_l1(frames: np.ndarray) -> float:
    """Mean absolute change between consecutive frames, in [0, 1] units (0 for a single frame)."""
    f = np.asarray(frames, dtype=np.float64) / 255.0
    if len(f) < 2:
        return 0.0
    return float(np.abs(np.diff(f, axis=0)).mean())


def appearance_drift(frames: np.ndarray, iuv: np.ndarray, photo: np.ndarray, photo_iuv: np.ndarray) -> float:
    """Mean distance between each frame's colour statistics inside its pose mask and the photo's inside its own:
    how far the rendered garment's colours drift from the input photo (no ground truth needed)."""
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
