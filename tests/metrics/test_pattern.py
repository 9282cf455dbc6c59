import numpy as np
import pytest
from scipy import ndimage

from dreampose.metrics.pattern import high_pass, pattern_error

H, W = 64, 48


def _scene(phase: int = 0, colour=(0.2, 0.3, 0.9)):
    """A checked shirt (4 px checks) on a plain background; ``phase`` shifts the checks by that many pixels."""
    y, x = np.mgrid[0:H, 0:W]
    checks = ((y // 4) + ((x + phase) // 4)) % 2
    mask = np.zeros((H, W), bool)
    mask[12:52, 10:38] = True
    c = np.array(colour)
    shirt = np.where(checks[..., None] == 1, c, 1.0 - 0.2 * c)
    img = np.where(mask[..., None], shirt, 0.4)
    return img, mask


def test_truth_is_zero_and_a_colour_offset_is_not_a_pattern_error():
    gt, m = _scene()
    assert pattern_error(gt, gt, m) == 0.0
    assert pattern_error(gt + 0.05, gt, m) == pytest.approx(0.0, abs=1e-12)


def test_blur_scores_badly_and_no_detail_scores_one():
    gt, m = _scene()
    blurred = ndimage.gaussian_filter(gt, sigma=(3, 3, 0))
    flat = np.where(m[..., None], gt[m].mean(axis=0), gt)  # the garment's average colour, no pattern
    assert pattern_error(blurred, gt, m) > 0.7
    assert pattern_error(flat, gt, m) > 0.7
    assert pattern_error(blurred, gt, m) > pattern_error(gt, gt, m)
    assert np.all(high_pass(np.full_like(gt, 0.5), 1.5) == 0)
    assert pattern_error(np.full_like(gt, 0.5), gt, m) == pytest.approx(1.0)  # no detail at all: exactly 1


def test_a_sharp_wrong_pattern_does_not_beat_the_blur():
    gt, m = _scene()
    blurred = ndimage.gaussian_filter(gt, sigma=(3, 3, 0))
    opposite = _scene(phase=4)[0]  # the checks in opposite phase: as sharp as the truth, every check wrong
    recoloured = _scene(colour=(0.9, 0.3, 0.2))[0]  # the right checks in the wrong colours
    assert pattern_error(opposite, gt, m) > 1.5
    assert pattern_error(opposite, gt, m) > pattern_error(blurred, gt, m)
    assert pattern_error(recoloured, gt, m) > pattern_error(blurred, gt, m)
    slightly_off = _scene(phase=1)[0]  # the right pattern a pixel off still carries some of the truth's detail
    assert pattern_error(slightly_off, gt, m) < pattern_error(opposite, gt, m)


def test_flat_body_is_nan_and_bad_input():
    img = np.full((H, W, 3), 0.5)
    m = np.zeros((H, W), bool)
    m[20:40, 20:30] = True
    assert np.isnan(pattern_error(img, img, m))
    with pytest.raises(ValueError, match="need"):
        pattern_error(img, img, m[:-1])
