"""Temporal consistency: how far a video's frame-to-frame changes are from the ground truth's.

Per-frame L1/SSIM cannot see flicker: a video whose every frame is independently a little off scores
the same whether the errors agree from frame to frame or jump around. The paper's single-pose ablation
is exactly that case (Table 2: "similar numerical results", but "noticeable flickering").

``temporal_error`` compares the temporal differences instead of the frames::

    temporal_error = mean_t mean_pixels | (x[t+1] - x[t]) - (g[t+1] - g[t]) |

over consecutive frames ``t`` of a clip. A still error (the same wrong colour in every frame) cancels
out; a flickering one counts twice. Copying the ground truth scores 0; a frozen video scores the mean
absolute motion of the ground truth. Frames are ``(T, H, W, 3)``, uint8 or float in [0, 1].
"""

from __future__ import annotations

import numpy as np

from dreampose.metrics.pixel import to_float01


def temporal_error(pred, target) -> np.ndarray:
    """Per-step temporal error ``(T - 1,)`` of a clip (see the module docstring)."""
    p, t = to_float01(pred), to_float01(target)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} != target shape {t.shape}")
    if p.ndim != 4 or p.shape[-1] != 3:
        raise ValueError(f"clips must be (T, H, W, 3), got {p.shape}")
    if p.shape[0] < 2:
        raise ValueError(f"a clip needs at least 2 frames for a temporal difference, got {p.shape[0]}")
    return np.abs(np.diff(p, axis=0) - np.diff(t, axis=0)).mean(axis=(1, 2, 3))
