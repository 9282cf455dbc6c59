from __future__ import annotations

import pytest
import torch

from dreampose.config import DropoutConfig
from dreampose.training.dropout import apply_dropout, sample_dropout_masks


def test_proportions_on_a_large_batch():
    cfg = DropoutConfig(pose=0.05, image=0.07, both=0.11)
    n = 200_000
    drop_image, drop_pose = sample_dropout_masks(n, cfg, torch.Generator().manual_seed(0))
    pose_only = (drop_pose & ~drop_image).float().mean().item()
    image_only = (drop_image & ~drop_pose).float().mean().item()
    both = (drop_image & drop_pose).float().mean().item()
    # binomial std at p=0.1, n=2e5 is ~0.00067; 0.003 is > 4 sigma
    assert pose_only == pytest.approx(0.05, abs=0.003)
    assert image_only == pytest.approx(0.07, abs=0.003)
    assert both == pytest.approx(0.11, abs=0.003)


def test_per_sample_not_per_batch():
    drop_image, drop_pose = sample_dropout_masks(64, DropoutConfig(pose=0.3, image=0.3, both=0.3), torch.Generator())
    # a per-batch draw would make all 64 entries equal
    assert 0 < drop_image.sum() < 64 and 0 < drop_pose.sum() < 64


def test_zero_rates_drop_nothing_and_full_rate_drops_everything():
    none = sample_dropout_masks(1000, DropoutConfig(pose=0, image=0, both=0), torch.Generator())
    assert not none[0].any() and not none[1].any()
    allb = sample_dropout_masks(1000, DropoutConfig(pose=0, image=0, both=1), torch.Generator())
    assert allb[0].all() and allb[1].all()


def test_seeded():
    a = sample_dropout_masks(100, DropoutConfig(), torch.Generator().manual_seed(3))
    b = sample_dropout_masks(100, DropoutConfig(), torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_apply_dropout_zeroes_only_the_chosen_samples():
    tokens = torch.randn(3, 4, 5)
    poses = torch.randn(3, 10, 2, 2)
    drop_image = torch.tensor([True, False, False])
    drop_pose = torch.tensor([False, True, False])
    t, p = apply_dropout(tokens, poses, drop_image, drop_pose)
    assert torch.equal(t[0], torch.zeros(4, 5)) and torch.equal(t[1:], tokens[1:])
    assert torch.equal(p[1], torch.zeros(10, 2, 2)) and torch.equal(p[0], poses[0]) and torch.equal(p[2], poses[2])


def test_apply_dropout_rejects_mismatched_batch():
    with pytest.raises(ValueError, match="poses"):
        apply_dropout(
            torch.zeros(2, 1, 1), torch.zeros(3, 1, 1, 1), torch.zeros(2, dtype=bool), torch.zeros(2, dtype=bool)
        )
