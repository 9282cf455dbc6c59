import numpy as np
import pytest

from dreampose.metrics.appearance import color_distance, color_stats


def test_color_stats_only_inside_mask():
    img = np.zeros((8, 8, 3))
    img[:4] = [1.0, 0.5, 0.0]
    img[4:] = [0.2, 0.2, 0.9]  # outside the mask: must not count
    mask = np.zeros((8, 8), bool)
    mask[:4] = True
    np.testing.assert_allclose(color_stats(img, mask), [1.0, 0.5, 0.0, 0, 0, 0])


def test_color_distance_sees_colour_drift_not_background():
    rng = np.random.default_rng(0)
    gt = rng.random((16, 12, 3))
    mask = np.zeros((16, 12), bool)
    mask[4:12, 3:9] = True
    other_bg = gt.copy()
    other_bg[~mask] = 0
    assert color_distance(other_bg, gt, mask) == pytest.approx(0.0)
    drift = gt.copy()
    drift[mask] = np.clip(drift[mask] + [0.2, 0, 0], 0, 1)
    assert color_distance(drift, gt, mask) > 0.1


def test_empty_mask_is_an_error():
    with pytest.raises(ValueError, match="mask is empty"):
        color_stats(np.zeros((4, 4, 3)), np.zeros((4, 4), bool))
