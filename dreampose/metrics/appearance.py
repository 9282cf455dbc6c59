"""Weight-free appearance distance: colour statistics inside the person mask.

The mask is the ground truth's DensePose part index (I > 0). Both images are measured inside the
same mask, so a model that draws the right pose in the wrong colours (the failure the subject
finetune fixes) shows up here even when no re-identification network is available.
"""

from __future__ import annotations

import numpy as np

from dreampose.metrics.pixel import to_float01


def color_stats(image, mask: np.ndarray) -> np.ndarray:
    """``[mean_r, mean_g, mean_b, std_r, std_g, std_b]`` of the pixels where ``mask`` is true."""
    img = to_float01(image)
    m = np.asarray(mask, dtype=bool)
    if img.ndim != 3 or img.shape[-1] != 3 or m.shape != img.shape[:2]:
        raise ValueError(f"image {img.shape} and mask {m.shape} must be (H, W, 3) and (H, W)")
    if not m.any():
        raise ValueError("person mask is empty (no pixel with I > 0)")
    px = img[m]
    return np.concatenate([px.mean(axis=0), px.std(axis=0)])


def color_distance(pred, target, mask: np.ndarray) -> float:
    """Euclidean distance between the two images' colour statistics inside ``mask``."""
    return float(np.linalg.norm(color_stats(pred, mask) - color_stats(target, mask)))
