import numpy as np
import pytest

from dreampose.metrics.temporal import temporal_error


def _clip(seed=0, t=6, h=8, w=6):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, size=(t, h, w, 3))


def test_truth_scores_zero_and_a_still_error_cancels():
    gt = 0.2 + 0.5 * _clip()
    assert np.all(temporal_error(gt, gt) == 0)
    offset = gt + 0.2  # the same error (a brighter picture) in every frame
    assert temporal_error(offset, gt) == pytest.approx(np.zeros(5), abs=1e-12)
    assert np.abs(offset - gt).mean() == pytest.approx(0.2)  # which per-frame L1 does see


def test_flicker_scores_worse_than_the_same_error_held_still():
    rng = np.random.default_rng(1)
    gt = np.repeat(_clip(2, t=1), 8, axis=0)  # a static scene
    noise = rng.uniform(-0.1, 0.1, size=gt.shape[1:])
    steady = np.clip(gt + noise, 0, 1)  # same error in every frame
    flicker = np.clip(gt + np.stack([noise * (1 if i % 2 else -1) for i in range(8)]), 0, 1)
    l1_steady = np.abs(steady - gt).mean()
    l1_flicker = np.abs(flicker - gt).mean()
    assert abs(l1_steady - l1_flicker) < 1e-3  # per-frame L1 cannot tell them apart
    assert temporal_error(steady, gt).mean() == pytest.approx(0.0, abs=1e-12)
    assert temporal_error(flicker, gt).mean() > 0.05


def test_frozen_video_scores_the_truths_motion_and_bad_input():
    gt = _clip(3)
    frozen = np.repeat(gt[:1], len(gt), axis=0)
    np.testing.assert_allclose(temporal_error(frozen, gt), np.abs(np.diff(gt, axis=0)).mean(axis=(1, 2, 3)))
    u8 = (gt * 255).astype(np.uint8)
    assert temporal_error(u8, u8).sum() == 0
    with pytest.raises(ValueError, match="at least 2"):
        temporal_error(gt[:1], gt[:1])
    with pytest.raises(ValueError, match="shape"):
        temporal_error(gt, gt[:-1])
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        temporal_error(gt[0], gt[0])
