from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from dreampose.models.unet import expand_conv_in


def _unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
    ).eval()


def test_new_channels_zero_old_weights_and_bias_kept():
    unet = _unet()
    old_w = unet.conv_in.weight.detach().clone()
    old_b = unet.conv_in.bias.detach().clone()
    expand_conv_in(unet, 10)
    assert unet.conv_in.weight.shape == (old_w.shape[0], 14, *old_w.shape[2:])
    assert torch.equal(unet.conv_in.weight[:, :4], old_w)
    assert torch.equal(unet.conv_in.weight[:, 4:], torch.zeros_like(unet.conv_in.weight[:, 4:]))
    assert torch.equal(unet.conv_in.bias, old_b)
    assert unet.config.in_channels == 14


@torch.no_grad()
def test_any_pose_input_reproduces_the_base_unet():
    base = _unet()
    wide = expand_conv_in(_unet(), 10)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ctx = torch.randn(2, 5, 32, generator=g)
    t = torch.tensor(500)
    ref = base(x, t, encoder_hidden_states=ctx).sample
    zero_pose = wide(torch.cat([x, torch.zeros(2, 10, 8, 8)], 1), t, encoder_hidden_states=ctx).sample
    rand_pose = wide(torch.cat([x, torch.rand(2, 10, 8, 8, generator=g)], 1), t, encoder_hidden_states=ctx).sample
    torch.testing.assert_close(zero_pose, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(rand_pose, ref, rtol=0, atol=1e-6)


def test_from_pretrained_rebuilds_the_wide_conv_in(tmp_path):
    unet = expand_conv_in(_unet(), 10)
    with torch.no_grad():
        unet.conv_in.weight[:, 4:] = 0.25
    unet.save_pretrained(tmp_path)
    again = UNet2DConditionModel.from_pretrained(tmp_path)
    assert again.config.in_channels == 14
    assert torch.equal(again.conv_in.weight, unet.conv_in.weight)


def test_zero_extra_channels_is_a_no_op_and_negative_is_rejected():
    unet = _unet()
    conv = unet.conv_in
    assert expand_conv_in(unet, 0).conv_in is conv
    with pytest.raises(ValueError, match="extra_channels"):
        expand_conv_in(unet, -1)
