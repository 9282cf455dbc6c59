"""Temporal consistency: how far a video's frame-to-frame changes are from the ground truth's.

Per-frame L1/SSIM cannot see flicker: a video whose every frame is independently a little off scores
the same whether the errors agree from frame to frame or jump around. The paper's single-pose ablation
is exactly that case (Table 2: "similar numerical results", but "noticeable flickering").

``temporal_error`` compares the temporal differences instead of the frames::

    temporal_error = mean_t mean_pixels | (x[t+1] - x[t]) - (g[t+1] - g[t]) |

over consecutive frames ``t`` of a clip. A still error (the same wrong colour in every frame) cancels
out; a flickering one counts twice. Copying the ground truth scores 0; a frozen video scores the mean
absolute motion of the ground truth. Frames are ``(T, H, W, 3)``, uint8 or float in [0, 1].

Why a frozen video beats a moving render on ``temporal_error``: the differences are compared pixel by pixel
with their sign, so a render that moves like the truth but a pixel or two off pays twice (the truth's change
where it did not move, its own change where the truth did not), while a frozen video pays once.

``flicker`` compares the *amount* of change, with a spatial tolerance, instead::

    m_x[t] = G_sigma(mean_rgb |x[t+1] - x[t]|),   m_g[t] = G_sigma(mean_rgb |g[t+1] - g[t]|)
    flicker = mean_t mean_pixels |m_x[t] - m_g[t]|

The Gaussian ``G_sigma`` (``sigma`` pixels) spreads each change map over its neighbourhood; because the maps
are non-negative it keeps their total, so flicker (change the truth does not have) is never smoothed away,
only its position is tolerated to about ``sigma``. The score splits exactly into ``flicker_excess``
(mean of the positive part: change where the truth has none, i.e. flicker proper) and ``motion_deficit``
(the negative part: the truth's motion the render lacks). The truth scores 0, a still error (a constant
colour offset) 0, a frozen video the mean motion of the truth (all deficit), independent per-frame noise
its own change (all excess), and a render that moves like the truth but a pixel off little.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from dreampose.metrics.ghosting import scale_for
from dreampose.metrics.pixel import to_float01


def _clips(pred, target) -> tuple[np.ndarray, np.ndarray]:
    p, t = to_float01(pred), to_float01(target)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} != target shape {t.shape}")
    if p.ndim != 4 or p.shape[-1] != 3:
        raise ValueError(f"clips must be (T, H, W, 3), got {p.shape}")
    if p.shape[0] < 2:
        raise ValueError(f"a clip needs at least 2 frames for a temporal difference, got {p.shape[0]}")
    return p, t


def temporal_error(pred, target) -> np.ndarray:
    """Per-step temporal error ``(T - 1,)`` of a clip (see the module docstring)."""
    p, t = _clips(pred, target)
    return np.abs(np.diff(p, axis=0) - np.diff(t, axis=0)).mean(axis=(1, 2, 3))


def change_maps(clip: np.ndarray, sigma: float) -> np.ndarray:
    """``(T - 1, H, W)``: the mean absolute RGB change between consecutive frames, Gaussian-spread by ``sigma``."""
    d = np.abs(np.diff(clip, axis=0)).mean(axis=-1)
    return ndimage.gaussian_filter(d, sigma=(0, sigma, sigma), mode="reflect") if sigma > 0 else d


def flicker(pred, target, sigma: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-step ``(flicker_excess, motion_deficit)``, each ``(T - 1,)``; their sum is the flicker score (see
    the module docstring). ``sigma`` defaults to 2 pixels at 64 px high frames, proportionally more above."""
    p, t = _clips(pred, target)
    sigma = 2.0 * scale_for(p.shape[1]) if sigma is None else sigma
    d = change_maps(p, sigma) - change_maps(t, sigma)
    return np.clip(d, 0, None).mean(axis=(1, 2)), np.clip(-d, 0, None).mean(axis=(1, 2))
