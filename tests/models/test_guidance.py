from __future__ import annotations

import pytest
import torch

from dreampose.models.guidance import BRANCHES, dual_guidance
from dreampose.models.pipeline import guidance_weights


def test_branch_order_is_documented():
    assert BRANCHES == ("uncond", "image", "full")
    doc = dual_guidance.__doc__
    assert doc.index("uncond") < doc.index("image only") < doc.index("image and pose")


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
