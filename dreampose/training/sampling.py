"""Resumable randomness: every step's data order, noise and dropout derive from ``(seed, step, ...)``.

Nothing depends on how many steps ran before in this process, so a run resumed from a
checkpoint at step ``k`` draws exactly what an uninterrupted run draws at step ``k``.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def step_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed mixed from ``seed`` and ``keys`` (order matters) with numpy's SeedSequence."""
    if any(k < 0 for k in (seed, *keys)):
        raise ValueError(f"seed and keys must be >= 0, got {(seed, *keys)}")
    return int(np.random.SeedSequence([seed, *keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def epoch_permutation(num_items: int, epoch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step_seed(seed, 0xDA7A, epoch))
    return torch.randperm(num_items, generator=g)


def batch_indices(num_items: int, step: int, batch_size: int, seed: int) -> list[int]:
    """Dataset indices of the global batch number ``step``.

    Batches are consecutive slices of an endless stream of seeded epoch permutations, so every
    item is seen once per epoch and batch ``step`` is a pure function of its arguments.
    """
    if num_items <= 0:
        raise ValueError("cannot draw batches from an empty dataset")
    if batch_size <= 0 or step < 0:
        raise ValueError(f"batch_size must be > 0 and step >= 0, got {batch_size}, {step}")
    out: list[int] = []
    pos = step * batch_size
    perm_epoch, perm = -1, None
    for p in range(pos, pos + batch_size):
        epoch = p // num_items
        if epoch != perm_epoch:
            perm_epoch, perm = epoch, epoch_permutation(num_items, epoch, seed)
        out.append(int(perm[p % num_items]))
    return out


def shard(indices: list[int], rank: int, world_size: int) -> list[int]:
    """This process's contiguous share of a global batch (sizes differ by at most one)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    n = len(indices)
    lo, hi = rank * n // world_size, (rank + 1) * n // world_size
    return indices[lo:hi]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch global generators (used per step for code that draws from them)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
