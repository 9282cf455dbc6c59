import numpy as np
import pytest
from pytorch_fid.fid_score import calculate_frechet_distance

from dreampose.metrics.frechet import (
    frechet_distance,
    frechet_distance_features,
    frechet_distance_samples,
    gaussian_stats,
)


def test_matches_pytorch_fid_on_random_features():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(64, 16))
    b = rng.normal(0.3, 1.4, size=(80, 16)) @ rng.normal(size=(16, 16)) * 0.3
    mu1, s1 = gaussian_stats(a)
    mu2, s2 = gaussian_stats(b)
    ref = calculate_frechet_distance(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)
    assert frechet_distance_features(a, b) == pytest.approx(ref, rel=1e-8)


def test_stats_match_numpy_and_identity_is_zero():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(10, 4))
    mu, s = gaussian_stats(a)
    np.testing.assert_allclose(mu, a.mean(0))
    np.testing.assert_allclose(s, np.cov(a.T))
    assert frechet_distance_features(a, a) == pytest.approx(0.0, abs=1e-9)


def test_rank_deficient_covariances_match_reference():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(4, 12)), rng.normal(1.0, 1.0, size=(4, 12))  # fewer samples than dims
    ref = calculate_frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
    assert frechet_distance_features(a, b) == pytest.approx(ref, rel=1e-4)


def test_bad_shapes():
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


@pytest.mark.parametrize("na,nb,d", [(12, 30, 64), (40, 9, 64), (80, 100, 32)])
def test_sample_form_equals_the_covariance_form(na, nb, d):
    """Fewer samples than dimensions (FID on a few hundred frames): the n×n form is the same distance."""
    rng = np.random.default_rng(na * nb + d)
    a = rng.normal(size=(na, d)) @ rng.normal(size=(d, d))
    b = rng.normal(0.3, 1.5, size=(nb, d))
    dense = frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
    ref = calculate_frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
    assert frechet_distance_samples(a, b) == pytest.approx(dense, rel=1e-8)
    assert frechet_distance_samples(a, b) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance_features(a, b) == pytest.approx(dense, rel=1e-8)
    with pytest.raises(ValueError, match="feature widths"):
        frechet_distance_samples(a, b[:, :-1])
