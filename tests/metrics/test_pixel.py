import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dreampose.metrics.pixel import gaussian_kernel1d, l1, psnr, reconstruction_scores, ssim


def _pair(shape=(40, 32, 3), seed=0):
    rng = np.random.default_rng(seed)
    a = rng.random(shape)
    b = np.clip(a + rng.normal(0, 0.1, shape), 0, 1)
    return a, b


def test_ssim_matches_skimage_gaussian_convention():
    a, b = _pair()
    ref = structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1
    )
    assert ssim(a, b) == pytest.approx(ref, abs=1e-10)


def test_ssim_batch_and_torch_inputs_match_single():
    a, b = _pair((3, 24, 20, 3), seed=1)
    batch = ssim(torch.from_numpy(a).float(), torch.from_numpy(b).float())
    singles = [ssim(a[i].astype(np.float32), b[i].astype(np.float32)) for i in range(3)]
    assert batch.shape == (3,)
    np.testing.assert_allclose(batch, singles, atol=1e-6)
    assert ssim(a[0], a[0]) == pytest.approx(1.0)


def test_ssim_rejects_tiny_images():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))


def test_kernel_is_scipy_gaussian():
    from scipy.ndimage import gaussian_filter1d

    impulse = np.zeros(21)
    impulse[10] = 1
    np.testing.assert_allclose(gaussian_kernel1d(), gaussian_filter1d(impulse, 1.5, truncate=3.5)[5:16])


def test_psnr_matches_skimage_and_l1_is_mean_abs():
    a, b = _pair()
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0))
    assert l1(a, b) == pytest.approx(np.abs(a - b).mean())
    assert np.isinf(psnr(a, a))


def test_uint8_inputs_do_not_wrap():
    a = np.full((16, 16, 3), 10, np.uint8)
    b = np.full((16, 16, 3), 20, np.uint8)
    wrapped = (a - b).astype(np.float64)  # what naive uint8 arithmetic gives: 246, not -10
    assert wrapped.max() == 246
    assert l1(a, b) == pytest.approx(10 / 255)
    assert psnr(a, b) == pytest.approx(10 * np.log10(1 / (10 / 255) ** 2))
    assert psnr(a, b) == pytest.approx(psnr(b, a))


def test_shape_mismatch_named():
    with pytest.raises(ValueError, match=r"prediction shape \(8, 8, 3\) != target shape \(8, 9, 3\)"):
        l1(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))


def test_reconstruction_scores_are_mean_l1_and_ssim_where_the_window_fits():
    a, b = _pair((3, 16, 12, 3))
    scores = reconstruction_scores(b, a)
    assert scores == {"recon_l1": float(l1(b, a).mean()), "recon_ssim": float(ssim(b, a).mean())}
    assert reconstruction_scores(a, a) == {"recon_l1": 0.0, "recon_ssim": pytest.approx(1.0)}
    small_a, small_b = _pair((2, 10, 16, 3))  # 10 px high: no 11x11 SSIM window fits
    assert set(reconstruction_scores(small_b, small_a)) == {"recon_l1"}
