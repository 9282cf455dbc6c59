"""Pose input for the UNet: widen ``conv_in`` from the latent channels to latent + pose channels.

The new input channels start at zero (old weights and bias kept), so the expanded UNet computes
exactly what the base UNet computed, whatever the pose input, until training moves them
(the InstructPix2Pix recipe, paper §4.3). ``in_channels`` is recorded in the config so
``from_pretrained`` rebuilds the wider layer.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from torch import nn


def expand_conv_in(unet: UNet2DConditionModel, extra_channels: int = 10) -> UNet2DConditionModel:
    """Add ``extra_channels`` zero-initialised input channels to ``unet.conv_in`` (in place; returns ``unet``)."""
    if extra_channels < 0:
        raise ValueError(f"extra_channels must be >= 0, got {extra_channels}")
    if extra_channels == 0:
        return unet
    old = unet.conv_in
    new = nn.Conv2d(
        old.in_channels + extra_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        bias=old.bias is not None,
    ).to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=new.in_channels)
    return unet
