"""Dual classifier-free guidance (paper eq. 4), a pure function of one batched UNet output."""

from __future__ import annotations

import torch

#: Order of the three guidance branches in the batch fed to the UNet (and in ``dual_guidance``'s input).
BRANCHES = ("uncond", "image", "full")


def dual_guidance(noise_pred_batch: torch.Tensor, image_scale: float, pose_scale: float) -> torch.Tensor:
    """Combine the three branches of one UNet call into the guided prediction.

    ``noise_pred_batch`` has shape ``(3 * B, ...)``: three consecutive chunks of ``B`` samples,

    1. ``uncond`` -- no image, no pose (zero image tokens, zero pose channels): ε(z, ∅, ∅)
    2. ``image``  -- image only (zero pose channels): ε(z, c_I, ∅)
    3. ``full``   -- image and pose: ε(z, c_I, c_p)

    and the result (``(B, ...)``) is

        ε = ε(∅,∅) + s_I · (ε(c_I,∅) − ε(∅,∅)) + s_p · (ε(c_I,c_p) − ε(c_I,∅)).

    With ``s_I = s_p = s`` this is ordinary classifier-free guidance ``ε∅ + s (ε_full − ε∅)``.
    Works for any prediction type (ε or v): the combination is linear.
    """
    if noise_pred_batch.shape[0] % 3:
        raise ValueError(
            f"noise_pred_batch has batch {noise_pred_batch.shape[0]}, expected a multiple of 3 (uncond, image, full)"
        )
    uncond, image, full = noise_pred_batch.chunk(3)
    return uncond + image_scale * (image - uncond) + pose_scale * (full - image)
