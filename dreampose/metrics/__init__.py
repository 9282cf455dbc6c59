"""The paper's Table-1 metrics: pure functions on arrays (``pixel``, ``frechet``, ``appearance``),
feature networks loaded from local files (``features``) and the score stage (``score``)."""

from dreampose.metrics.frechet import frechet_distance, gaussian_stats
from dreampose.metrics.pixel import l1, psnr, ssim
from dreampose.metrics.result import MetricResult

__all__ = ["MetricResult", "frechet_distance", "gaussian_stats", "l1", "psnr", "ssim"]
