from __future__ import annotations

import pytest
import torch

from dreampose.models.guidance import BRANCHES, dual_guidance
from dreampose.models.pipeline import guidance_weights


def test_pipeline_feeds_each_branch_its_conditioning(pipe):
    """guided_prediction's three-branch call equals the eq.-4 mix of three separate UNet calls, each made with the
    conditioning its name in BRANCHES promises (uncond: zero tokens and pose; image: zero pose; full: both)."""
    g = torch.Generator().manual_seed(4)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    tokens = torch.randn(1, 6, pipe.unet.config.cross_attention_dim, generator=g)
    pose = torch.rand(2, 10, 8, 8, generator=g)
    t = torch.tensor(500)
    pipe.scheduler.set_timesteps(10)

    def unet(tok: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        x = torch.cat([pipe.scheduler.scale_model_input(latents, t), p], dim=1)
        return pipe.unet(x, t, encoder_hidden_states=tok.expand(2, -1, -1), return_dict=False)[0]

    zero_tok, zero_pose = torch.zeros_like(tokens), torch.zeros_like(pose)
    separate = {"uncond": unet(zero_tok, zero_pose), "image": unet(tokens, zero_pose), "full": unet(tokens, pose)}
    s_i, s_p = 2.5, 1.5
    expected = dual_guidance(torch.cat([separate[b] for b in BRANCHES]), s_i, s_p)
    with torch.no_grad():
        got = pipe.guided_prediction(latents, t, tokens, pose, s_i, s_p)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(separate["image"], separate["full"])  # the pose reaches the UNet
    assert not torch.allclose(separate["uncond"], separate["image"])  # and so do the image tokens


def test_hand_computation():
    # uncond = 1, image = 3, full = 7; s_I = 2, s_p = 0.5: 1 + 2 * (3 - 1) + 0.5 * (7 - 3) = 7
    batch = torch.tensor([[1.0], [3.0], [7.0]])
    assert dual_guidance(batch, 2.0, 0.5).tolist() == [[7.0]]
    # s_I = 0, s_p = 0 gives the unconditional prediction; s_I = s_p = 1 gives the fully conditioned one.
    assert dual_guidance(batch, 0.0, 0.0).tolist() == [[1.0]]
    assert dual_guidance(batch, 1.0, 1.0).tolist() == [[7.0]]


def test_chunks_per_sample():
    uncond = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    image = torch.tensor([[1.0, 1.0], [4.0, 3.0]])
    full = torch.tensor([[2.0, 5.0], [4.0, 0.0]])
    out = dual_guidance(torch.cat([uncond, image, full]), 1.5, 2.0)
    expected = uncond + 1.5 * (image - uncond) + 2.0 * (full - image)
    assert out.shape == (2, 2)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("s", [0.5, 1.0, 3.0, 7.5])
def test_reduces_to_classifier_free_guidance(s):
    g = torch.Generator().manual_seed(0)
    batch = torch.randn(6, 4, 8, 8, generator=g)
    uncond, _, full = batch.chunk(3)
    torch.testing.assert_close(dual_guidance(batch, s, s), uncond + s * (full - uncond))


def test_weights_match_eq4():
    g = torch.Generator().manual_seed(0)
    batch = torch.randn(9, 4, 3, 3, generator=g)
    w = guidance_weights(1.7, 2.3)
    assert sum(w) == pytest.approx(1.0)
    combined = sum(wi * c for wi, c in zip(w, batch.chunk(3), strict=True))
    torch.testing.assert_close(combined, dual_guidance(batch, 1.7, 2.3))


def test_rejects_batch_not_multiple_of_three():
    with pytest.raises(ValueError, match="multiple of 3"):
        dual_guidance(torch.zeros(4, 2), 1.0, 2.0)
