import numpy as np
import pytest

from dreampose.metrics.temporal import flicker, temporal_error


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


def _walker(t=6, h=64, w=48, step=2, offset=0):
    """A textured box on a textured background moving ``step`` px right per frame (``offset`` px misplaced)."""
    rng = np.random.default_rng(7)
    bg = 0.3 + 0.1 * rng.uniform(size=(h, w, 3))
    body = 0.6 + 0.3 * rng.uniform(size=(40, 14, 3))
    frames = []
    for i in range(t):
        f = bg.copy()
        x0 = 4 + step * i + offset
        f[12:52, x0 : x0 + 14] = body
        frames.append(f)
    return np.stack(frames)


def _flicker(pred, gt):
    excess, deficit = flicker(pred, gt)
    return float((excess + deficit).mean())


def test_flicker_truth_and_still_error_score_zero_noise_scores_badly():
    gt = _walker()
    assert _flicker(gt, gt) == 0.0
    assert _flicker(gt + 0.1, gt) == pytest.approx(0.0, abs=1e-12)  # a static colour error is not flicker
    noisy = gt + np.random.default_rng(0).uniform(-0.05, 0.05, size=gt.shape)  # independent per-frame noise
    excess, deficit = flicker(noisy, gt)
    assert excess.mean() > 0.02 and excess.mean() > 5 * deficit.mean()
    frozen = np.repeat(gt[:1], len(gt), axis=0)
    excess, deficit = flicker(frozen, gt)
    assert excess.sum() == 0 and deficit.mean() == pytest.approx(np.abs(np.diff(gt, axis=0)).mean(), rel=1e-6)
    assert _flicker(frozen, gt) > _flicker(gt + 0.1, gt)


def test_a_render_that_moves_like_the_truth_a_pixel_off_beats_a_frozen_video():
    gt = _walker()
    frozen = np.repeat(gt[:1], len(gt), axis=0)
    off = _walker(offset=1)  # the same motion, the body drawn a pixel to the right
    # the defect of the signed pixel-wise comparison: the frozen video wins it
    assert temporal_error(frozen, gt).mean() < temporal_error(off, gt).mean()
    assert _flicker(off, gt) < 0.5 * _flicker(frozen, gt)
    with pytest.raises(ValueError, match="at least 2"):
        flicker(gt[:1], gt[:1])
