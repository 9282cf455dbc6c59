"""Pixel metrics on images in [0, 1]: L1, SSIM, PSNR.

Inputs are ``(H, W, 3)`` or batches ``(N, H, W, 3)`` (numpy or torch); uint8 images are
converted to float in [0, 1] first, so differences never wrap around.

SSIM follows ``skimage.metrics.structural_similarity`` with ``gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1, channel_axis=-1`` (the convention of Wang et al. 2004):
an 11x11 Gaussian window (truncate 3.5), K1 = 0.01, K2 = 0.03, the SSIM map averaged over the
pixels whose window lies fully inside the image, then over channels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def to_float01(img: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 -> float64 / 255; float stays as is (expected in [0, 1]). Channels last."""
    arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"images must be uint8 or float in [0, 1], got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    p, t = to_float01(pred), to_float01(target)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} != target shape {t.shape}")
    if p.ndim not in (3, 4) or p.shape[-1] != 3:
        raise ValueError(f"images must be (H, W, 3) or (N, H, W, 3), got {p.shape}")
    return p, t


def l1(pred, target) -> np.ndarray:
    """Mean absolute error per image (scalar array for one image, ``(N,)`` for a batch)."""
    p, t = _pair(pred, target)
    return np.abs(p - t).mean(axis=(-3, -2, -1))


def psnr(pred, target, data_range: float = 1.0) -> np.ndarray:
    """Peak signal-to-noise ratio in dB on float images; ``inf`` for identical images."""
    p, t = _pair(pred, target)
    mse = ((p - t) ** 2).mean(axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / mse)


def gaussian_kernel1d(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
    """The normalized 1-D kernel of ``scipy.ndimage.gaussian_filter`` (radius ``int(truncate*sigma+0.5)``)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def ssim(pred, target, data_range: float = 1.0) -> np.ndarray:
    """Mean SSIM per image (see module docstring for the exact convention)."""
    p, t = _pair(pred, target)
    single = p.ndim == 3
    if single:
        p, t = p[None], t[None]
    k = gaussian_kernel1d()
    win = k.size
    if p.shape[1] < win or p.shape[2] < win:
        raise ValueError(f"SSIM needs images of at least {win}x{win} pixels, got {p.shape[1]}x{p.shape[2]}")
    # Only pixels whose whole window is inside the image count (skimage crops (win-1)/2 at each
    # border), so a 'valid' convolution gives the same numbers without any padding convention.
    x = torch.from_numpy(p).permute(0, 3, 1, 2).reshape(-1, 1, p.shape[1], p.shape[2])
    y = torch.from_numpy(t).permute(0, 3, 1, 2).reshape(-1, 1, p.shape[1], p.shape[2])
    kt = torch.from_numpy(k)
    kh, kw = kt.view(1, 1, -1, 1), kt.view(1, 1, 1, -1)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(z, kh), kw)

    ux, uy = blur(x), blur(y)
    vx = blur(x * x) - ux * ux
    vy = blur(y * y) - uy * uy
    vxy = blur(x * y) - ux * uy
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    per_channel = s.mean(dim=(1, 2, 3)).view(p.shape[0], 3)
    out = per_channel.mean(dim=1).numpy()
    return out[0] if single else out


def reconstruction_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """How well ``pred`` reconstructs ``target`` (``(N, H, W, 3)``): mean ``recon_l1``, and mean ``recon_ssim`` when
    the frames are at least 11 pixels a side (SSIM's window); what ``models/pretrained/build.json`` records of the
    tiny VAE."""
    out = {"recon_l1": float(l1(pred, target).mean())}
    if min(np.shape(target)[1:3]) >= 11:
        out["recon_ssim"] = float(ssim(pred, target).mean())
    return out
