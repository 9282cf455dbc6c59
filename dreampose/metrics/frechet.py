"""Fréchet distance between Gaussians fitted to features (FID, FVD).

d² = |mu1 - mu2|² + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^½). The trace of the matrix square root is
computed from the eigenvalues of the symmetric PSD matrix S1^½ S2 S1^½ (same spectrum as S1 S2),
which avoids the complex round-off of a general ``sqrtm``.

From features with fewer samples than dimensions (a few hundred frames against Inception's 2048
features), the same distance comes exactly from the samples: with centred, scaled features
``A = (a - mu_a) / sqrt(n_a - 1)`` (so ``S1 = AᵀA``) and likewise ``B``, the non-zero spectrum of ``S1 S2``
is that of ``(A Bᵀ)(A Bᵀ)ᵀ``, so ``Tr((S1 S2)^½)`` is the sum of the singular values of the small
``n_a × n_b`` matrix ``A Bᵀ`` — no ``D × D`` eigendecomposition.
"""

from __future__ import annotations

import numpy as np


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of ``(N, D)`` features, as pytorch-fid computes them."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N >= 2, D), got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    r1 = _psd_sqrt(s1)
    eig = np.linalg.eigvalsh(r1 @ s2 @ r1)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def _centred(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and ``(f - mean) / sqrt(N - 1)`` of ``(N, D)`` features: ``AᵀA`` is their unbiased covariance."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N >= 2, D), got {f.shape}")
    mu = f.mean(axis=0)
    return mu, (f - mu) / np.sqrt(f.shape[0] - 1)


def frechet_distance_samples(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance of :func:`frechet_distance` computed from the samples (exact; cheap when N < D)."""
    mu1, x1 = _centred(a)
    mu2, x2 = _centred(b)
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(f"mismatched feature widths: {x1.shape[1]} vs {x2.shape[1]}")
    tr_covmean = np.linalg.svd(x1 @ x2.T, compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff @ diff + (x1 * x1).sum() + (x2 * x2).sum() - 2 * tr_covmean)


def frechet_distance_features(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between the Gaussians of two ``(N, D)`` feature sets (from the samples when N < D)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 2 and b.ndim == 2 and max(a.shape[0], b.shape[0]) <= a.shape[1]:
        return frechet_distance_samples(a, b)
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
