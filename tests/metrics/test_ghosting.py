import numpy as np
import pytest

from dreampose.metrics.ghosting import estimate_background, ghosting

H, W = 64, 48


def _background() -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([0.2 + 0.3 * y / H, 0.25 + 0.2 * x / W, np.full((H, W), 0.35)], axis=-1)


def _mask(x0: int, arm: bool = False) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[10:56, x0 : x0 + 14] = True
    if arm:
        m[20:26, x0 + 14 : x0 + 26] = True
    return m


def _frame(mask: np.ndarray) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    checks = np.where(((y // 4) + (x // 4)) % 2 == 0, 0.9, 0.1)
    person = np.stack([checks * 0.3, checks * 0.4, 0.5 + 0.4 * checks], axis=-1)
    return np.where(mask[..., None], person, _background())


def _video(xs=(6, 8, 14, 18, 20)):
    masks = np.stack([_mask(x) for x in xs])
    return np.stack([_frame(m) for m in masks]), masks


def test_background_is_recovered_where_the_body_ever_leaves():
    truth, masks = _video()
    bg, known = estimate_background(truth, masks)
    assert known.sum() > 0.8 * H * W
    np.testing.assert_allclose(bg[known], _background()[known], atol=1e-12)
    assert not known[30, 20]  # covered in every frame


def test_exact_copy_scores_zero_and_an_extra_limb_is_a_ghost():
    truth, masks = _video()
    bg, known = estimate_background(truth, masks)
    gt, m = truth[2], masks[2]
    assert ghosting(gt, gt, m, bg, known) == (0.0, 0.0)
    extra_arm = _frame(_mask(14, arm=True))  # the arm the truth does not have
    ghost, missing = ghosting(extra_arm, gt, m, bg, known)
    assert ghost > 0.02 and missing == 0.0
    # uint8 frames are read the same way
    assert ghosting((extra_arm * 255).round().astype(np.uint8), gt, m, bg, known)[0] == pytest.approx(ghost, abs=0.01)


def test_a_body_in_the_wrong_place_is_ghosted_and_missing():
    truth, masks = _video()
    bg, known = estimate_background(truth, masks)
    gt, m = truth[2], masks[2]
    shifted = _frame(_mask(22))  # drawn 8 px to the right
    ghost, missing = ghosting(shifted, gt, m, bg, known)
    assert ghost > 0.05 and missing > 0.2
    near = _frame(_mask(16))  # 2 px off: less of both
    g2, m2 = ghosting(near, gt, m, bg, known)
    assert 0 < g2 < ghost and 0 <= m2 < missing
    empty = _background()  # nothing drawn: all of the visible body is missing, no ghost
    g3, m3 = ghosting(empty, gt, m, bg, known)
    assert g3 == 0.0 and m3 == pytest.approx(1.0)


def test_pixel_noise_below_the_threshold_is_not_a_ghost_and_bad_input():
    truth, masks = _video()
    bg, known = estimate_background(truth, masks)
    noisy = np.clip(truth[2] + np.random.default_rng(0).uniform(-0.05, 0.05, truth[2].shape), 0, 1)
    assert ghosting(noisy, truth[2], masks[2], bg, known) == (0.0, 0.0)
    with pytest.raises(ValueError, match="need"):
        ghosting(truth[2], truth[2][:-1], masks[2], bg, known)
    with pytest.raises(ValueError, match="must be"):
        estimate_background(truth, masks[:-1])
