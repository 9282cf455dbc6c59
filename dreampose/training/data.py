"""The training data feed: a torch ``DataLoader`` whose batch order and augmentation keys are a pure function of
``(seed, step)``, so a run resumed at step ``k`` gets exactly the batches an uninterrupted run gets there, with
any number of workers.

:class:`StepBatchSampler` yields, for every micro-batch of optimizer steps ``[start, end)`` (stream step
``s = step * grad_accum + micro``), this process's shard of ``batch_indices(n, s, global_batch, seed)``, each index
paired with the micro-batch's augmentation key ``step_seed(seed, s, rank, 3)`` and its draw number (repeats of
one index in a batch draw different crops). :class:`KeyedItems` turns such a triple into
``dataset.keyed_item(index, key, draw)`` (datasets without augmentation are indexed plainly), so the crop of an
item does not depend on which worker made it. ``num_workers`` worker processes (``train_*.num_workers``) load
items ahead of the loop, each with its own bounded IUV cache; one iterator spans the run (the workers live as
long as it), batches are pinned for an asynchronous copy when training on CUDA.

Items travel compact where the dataset offers it (``compact_item``: uint8 pose IUV and pixels, a third of the
float32 bytes through the workers' shared memory and the host-to-device copy); :func:`to_device` moves a batch
to the training device and there expands it (``dreampose.data.dataset.expand_batch``) into exactly the float
batch the in-process items give.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, default_collate

from dreampose.data.dataset import expand_batch
from dreampose.training.sampling import batch_indices, shard, step_seed

Keyed = tuple[int, int, int]  # (dataset index, augmentation key, draw)


class StepBatchSampler(Sampler[list[Keyed]]):
    """The keyed micro-batches of optimizer steps ``[start, end)`` for process ``rank`` of ``world``."""

    def __init__(
        self, num_items: int, start: int, end: int, grad_accum: int, global_batch: int, seed: int,
        rank: int = 0, world: int = 1,
    ) -> None:  # fmt: skip
        if num_items <= 0:
            raise ValueError("the training dataset is empty")
        if not 0 <= start <= end or grad_accum < 1 or global_batch < 1:
            raise ValueError(f"bad step range or batch: start={start} end={end} grad_accum={grad_accum} "
                             f"global_batch={global_batch}")  # fmt: skip
        self.num_items, self.start, self.end = num_items, start, end
        self.grad_accum, self.global_batch, self.seed = grad_accum, global_batch, seed
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return (self.end - self.start) * self.grad_accum

    def micro_batch(self, stream_step: int) -> list[Keyed]:
        indices = shard(batch_indices(self.num_items, stream_step, self.global_batch, self.seed), self.rank, self.world)
        key = step_seed(self.seed, stream_step, self.rank, 3)
        draws: dict[int, int] = {}
        out = []
        for i in indices:
            draws[i] = draws.get(i, -1) + 1
            out.append((i, key, draws[i]))
        return out

    def __iter__(self) -> Iterator[list[Keyed]]:
        for step in range(self.start, self.end):
            for micro in range(self.grad_accum):
                yield self.micro_batch(step * self.grad_accum + micro)


class KeyedItems(Dataset):
    """``dataset`` indexed by ``(index, key, draw)``: ``compact_item`` (with ``compact``) or ``keyed_item`` of the
    dataset under any ``Subset``, or its plain item for a dataset that does not augment."""

    def __init__(self, dataset: Dataset, compact: bool = True) -> None:
        self.dataset = dataset
        self.compact = compact

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: Keyed) -> Any:
        index, key, draw = item
        ds = self.dataset
        while isinstance(ds, Subset):
            index, ds = int(ds.indices[index]), ds.dataset
        keyed = (getattr(ds, "compact_item", None) if self.compact else None) or getattr(ds, "keyed_item", None)
        return keyed(index, key, draw) if keyed is not None else ds[index]


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # each worker is one core's worth of decoding; the trainer keeps the rest


def make_loader(
    dataset: Dataset,
    sampler: StepBatchSampler,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
    compact: bool = True,
) -> DataLoader:
    """A ``DataLoader`` over ``sampler``'s keyed micro-batches: ``num_workers`` persistent workers (0 = load in
    this process), each keeping ``prefetch_factor`` batches in flight, ``pin_memory`` for CUDA; ``compact``
    items where the dataset has them (:func:`to_device` expands their batches)."""
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    workers = num_workers > 0
    return DataLoader(
        KeyedItems(dataset, compact),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=default_collate,
        pin_memory=pin_memory,
        persistent_workers=workers,
        prefetch_factor=prefetch_factor if workers else None,
        worker_init_fn=_worker_init if workers else None,
    )


def train_batches(
    dataset: Dataset, cfg: Any, start: int, end: int, rank: int, world: int, device: torch.device
) -> Iterator[dict[str, Any]]:
    """The collated micro-batches of a training run's steps ``[start, end)`` on process ``rank``, in the order
    the loop consumes them (``cfg`` a ``TrainConfig``: ``batch_size``, ``grad_accum``, ``seed``, ``num_workers``),
    on the host and compact: :func:`to_device` makes each the training batch."""
    if start >= end:
        return iter(())
    sampler = StepBatchSampler(len(dataset), start, end, cfg.grad_accum, cfg.batch_size * world, cfg.seed, rank, world)  # type: ignore[arg-type]
    loader = make_loader(dataset, sampler, cfg.num_workers, pin_memory=device.type == "cuda")
    return iter(loader)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A host batch of :func:`train_batches` -> the training batch on ``device``: its tensors copied there
    (asynchronously from pinned memory), then compact entries expanded there to float32 (``expand_batch``:
    the same values, bit for bit, as the in-process float items)."""
    moved = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return expand_batch(moved)
