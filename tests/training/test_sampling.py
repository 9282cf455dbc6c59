from __future__ import annotations

import pytest

from dreampose.training.sampling import batch_indices, shard, step_seed


def test_step_seed_is_deterministic_and_order_sensitive():
    assert step_seed(0, 1, 2) == step_seed(0, 1, 2)
    assert step_seed(0, 1, 2) != step_seed(0, 2, 1)
    assert 0 <= step_seed(5, 7) < 2**63


def test_each_item_once_per_epoch():
    n, b = 10, 4
    stream = [i for s in range(5) for i in batch_indices(n, s, b, seed=1)]  # 20 items = 2 epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert stream[:10] != stream[10:]  # a new permutation per epoch


def test_batch_is_a_pure_function_of_step():
    assert batch_indices(7, 3, 5, seed=2) == batch_indices(7, 3, 5, seed=2)
    assert batch_indices(7, 3, 5, seed=2) != batch_indices(7, 3, 5, seed=3)


def test_shard_splits_the_global_batch():
    idx = list(range(7))
    parts = [shard(idx, r, 3) for r in range(3)]
    assert [i for p in parts for i in p] == idx and [len(p) for p in parts] == [2, 2, 3]
    with pytest.raises(ValueError, match="rank"):
        shard(idx, 3, 3)


def test_empty_dataset_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        batch_indices(0, 0, 1, 0)
