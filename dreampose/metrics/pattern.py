"""Pattern fidelity: does the render carry the ground truth's fine detail (checks, stripes, print) inside the body?

Detail is the high-pass image ``hp(x) = x - G_sigma(x)`` (each RGB channel minus its Gaussian blur), so a
colour shift or shading that varies slowly does not count (``color_dist`` measures that). Inside the
ground-truth person mask ``M`` (I > 0)::

    pattern_error = sum_M |hp(render) - hp(truth)| / sum_M |hp(truth)|

What this normalisation guarantees:

- the truth scores 0; adding a constant colour scores 0;
- a render with no detail in the body (a flat or fully blurred average, ``hp = 0``) scores exactly 1:
  the scale is "fraction of the truth's detail missed or wrong", and 1 is "none of it";
- a sharp pattern that is wrong scores *worse* than no detail whenever its detail is farther from the
  truth's than the truth's is from zero: the pattern in opposite phase (``hp = -hp(truth)``) scores 2, one
  of the same strength but unrelated to the truth about sqrt(2), and by the triangle inequality any
  pattern whose detail is more than twice as strong as the truth's scores above 1. So a sharp wrong
  pattern cannot win over a blur; only detail that matches the truth's in place and colour goes below 1.

NaN when the body holds no detail at all (a flat garment on a flat mask), since nothing can be missed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from dreampose.metrics.ghosting import scale_for
from dreampose.metrics.pixel import to_float01


def high_pass(image, sigma: float) -> np.ndarray:
    """``image - G_sigma(image)`` per channel, ``(H, W, 3)`` float (reflected at the borders)."""
    x = to_float01(image)
    return x - ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="reflect")


def pattern_error(pred, truth, mask: np.ndarray, sigma: float | None = None) -> float:
    """The render's detail error inside ``mask`` relative to the truth's detail (see the module docstring);
    ``sigma`` (pixels) sets the detail scale, default 1.5 at 64 px high frames and proportionally more above."""
    p, t = to_float01(pred), to_float01(truth)
    m = np.asarray(mask, dtype=bool)
    if p.shape != t.shape or p.ndim != 3 or p.shape[-1] != 3 or m.shape != p.shape[:2]:
        raise ValueError(f"pred {p.shape}, truth {t.shape}, mask {m.shape}: need (H, W, 3) twice and (H, W)")
    sigma = 1.5 * scale_for(p.shape[0]) if sigma is None else sigma
    hp_t = high_pass(t, sigma)[m]
    den = np.abs(hp_t).sum()
    if den <= 1e-9:
        return float("nan")
    return float(np.abs(high_pass(p, sigma)[m] - hp_t).sum() / den)
