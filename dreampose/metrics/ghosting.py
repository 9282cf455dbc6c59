"""Ghosting: person paint where the ground truth shows background, and background where it shows the person.

The ground truth's DensePose mask (part index I > 0) says where the body is; the ground-truth frame
itself says what the background looks like outside it. Per frame, with ``d(a, b)`` the per-pixel
colour difference (mean absolute difference over RGB in [0, 1], smoothed by a Gaussian of
``sigma`` pixels so isolated noise pixels do not count, while a limb-sized blob does)::

    outside = pixels farther than ``margin`` from the mask
    ghost_fraction   = |{p in outside : d(render, truth)[p] > tau}| / |outside|
    inside  = mask pixels farther than ``margin`` from its edge, where the background is known and
              the truth differs from it (d(truth, background) > tau: a body pixel that looks like
              the background cannot go missing)
    missing_fraction = |{p in inside : d(render, background)[p] <= tau}| / |inside|

``background`` is estimated per video from its ground-truth frames: the per-pixel median of the frames
in which that pixel lies outside the (dilated) mask; a pixel the body covers in every frame is unknown
and left out of ``inside``. The ``margin`` band along the mask's edge is left out of both counts, since
a DensePose mask and an antialiased edge disagree by a pixel or so.

Why against the truth outside the mask rather than against the estimated background: outside the mask the
truth *is* the background of that very frame, with no estimate involved. A wrong background colour
therefore counts as ghosting too (paint where nothing should change); read ``missing_fraction`` and the
pixel metrics beside it. Both fractions are 0 for an exact copy; an extra limb raises ``ghost_fraction``,
a body drawn in the wrong place raises both.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from dreampose.metrics.pixel import to_float01

GHOST_TAU = 0.1  # colour difference in [0, 1] units (about 25 of 255) above which a pixel is "painted"


def scale_for(height: int) -> float:
    """Pixel scale of the defaults: 1 at 64 px high frames, growing with the frame height."""
    return max(1.0, height / 64.0)


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    return ndimage.binary_dilation(mask, iterations=pixels) if pixels > 0 else mask


def _shrink(mask: np.ndarray, pixels: int) -> np.ndarray:
    return ndimage.binary_erosion(mask, iterations=pixels, border_value=1) if pixels > 0 else mask


def colour_difference(a: np.ndarray, b: np.ndarray, sigma: float, valid: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel mean absolute RGB difference ``(H, W)``, Gaussian-smoothed by ``sigma`` pixels over the
    ``valid`` pixels only (normalised convolution), so pixels without a value do not leak into their neighbours."""
    d = np.abs(to_float01(a) - to_float01(b)).mean(axis=-1)
    if sigma <= 0:
        return d
    if valid is None:
        return ndimage.gaussian_filter(d, sigma, mode="nearest")
    w = np.asarray(valid, dtype=np.float64)
    num = ndimage.gaussian_filter(d * w, sigma, mode="nearest")
    den = ndimage.gaussian_filter(w, sigma, mode="nearest")
    return np.where(den > 1e-6, num / np.maximum(den, 1e-6), 0.0)


def _defaults(height: int, margin: int | None, sigma: float | None) -> tuple[int, float]:
    s = scale_for(height)
    return (round(s) if margin is None else margin), (s if sigma is None else sigma)


def estimate_background(truth, masks: np.ndarray, margin: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-video background ``(H, W, 3)`` in [0, 1] and where it is known ``(H, W)`` from ground-truth frames
    ``(N, H, W, 3)`` and their person masks ``(N, H, W)``: the per-pixel median over the frames in which the
    pixel is farther than ``margin`` from the person."""
    t = to_float01(truth)
    m = np.asarray(masks, dtype=bool)
    if t.ndim != 4 or t.shape[-1] != 3 or m.shape != t.shape[:3]:
        raise ValueError(f"truth {t.shape} and masks {m.shape} must be (N, H, W, 3) and (N, H, W)")
    margin, _ = _defaults(t.shape[1], margin, None)
    free = np.stack([~_grow(f, margin) for f in m])
    known = free.any(axis=0)
    stack = np.where(free[..., None], t, np.nan)
    bg = np.zeros(t.shape[1:])
    if known.any():
        bg[known] = np.nanmedian(stack[:, known], axis=0)
    return bg, known


def ghosting(
    pred,
    truth,
    mask: np.ndarray,
    background: np.ndarray,
    known: np.ndarray,
    tau: float = GHOST_TAU,
    margin: int | None = None,
    sigma: float | None = None,
) -> tuple[float, float]:
    """``(ghost_fraction, missing_fraction)`` of one rendered frame (see the module docstring); NaN where a
    fraction has no pixels to count (no background outside the body, or no visible body)."""
    p, t = to_float01(pred), to_float01(truth)
    m = np.asarray(mask, dtype=bool)
    if p.shape != t.shape or p.ndim != 3 or p.shape[-1] != 3 or m.shape != p.shape[:2]:
        raise ValueError(f"pred {p.shape}, truth {t.shape}, mask {m.shape}: need (H, W, 3) twice and (H, W)")
    if np.shape(background) != p.shape or np.shape(known) != m.shape:
        raise ValueError(f"background {np.shape(background)} / known {np.shape(known)} do not match {p.shape}")
    margin, sigma = _defaults(p.shape[0], margin, sigma)
    outside = ~_grow(m, margin)
    painted = colour_difference(p, t, sigma) > tau
    known = np.asarray(known, dtype=bool)
    inside = _shrink(m, margin) & known & (colour_difference(t, background, sigma, known) > tau)
    looks_empty = colour_difference(p, background, sigma, known) <= tau
    ghost = float((painted & outside).sum() / outside.sum()) if outside.any() else float("nan")
    missing = float((looks_empty & inside).sum() / inside.sum()) if inside.any() else float("nan")
    return ghost, missing
