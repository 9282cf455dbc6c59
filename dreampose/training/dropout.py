"""Per-sample conditioning dropout for classifier-free guidance (paper §4.3).

Each sample falls into exactly one of four categories: keep both, drop the pose only,
drop the image only, drop both (paper: 5 % / 5 % / 5 %). The official release drew one
decision per *batch*, so a whole batch lost its conditioning at once; here every sample
draws its own. The nulls are the pipeline's: zero image tokens, zero pose channels.
"""

from __future__ import annotations

import torch

from dreampose.config import DropoutConfig


def sample_dropout_masks(
    batch_size: int, cfg: DropoutConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(drop_image, drop_pose)``, two bool tensors of shape ``(batch_size,)``.

    One uniform draw per sample picks a category from the partition of [0, 1):
    ``[0, pose)`` pose only, ``[pose, pose + image)`` image only,
    ``[pose + image, pose + image + both)`` both, the rest keeps everything.
    """
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0, got {batch_size}")
    device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(batch_size, generator=generator, device=device)
    pose_only = u < cfg.pose
    image_only = (u >= cfg.pose) & (u < cfg.pose + cfg.image)
    both = (u >= cfg.pose + cfg.image) & (u < cfg.pose + cfg.image + cfg.both)
    return image_only | both, pose_only | both


def apply_dropout(
    tokens: torch.Tensor, poses: torch.Tensor, drop_image: torch.Tensor, drop_pose: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the dropped samples' image tokens ``(B, L, D)`` and pose channels ``(B, C, h, w)`` by zeros."""
    b = tokens.shape[0]
    if poses.shape[0] != b or drop_image.shape != (b,) or drop_pose.shape != (b,):
        raise ValueError(
            f"dropout shapes disagree: tokens {tuple(tokens.shape)}, poses {tuple(poses.shape)}, "
            f"drop_image {tuple(drop_image.shape)}, drop_pose {tuple(drop_pose.shape)} (expected batch {b})"
        )
    keep_image = (~drop_image).to(tokens.dtype).view(b, *([1] * (tokens.ndim - 1)))
    keep_pose = (~drop_pose).to(poses.dtype).view(b, *([1] * (poses.ndim - 1)))
    return tokens * keep_image, poses * keep_pose
