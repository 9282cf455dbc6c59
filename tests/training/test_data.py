"""The training data feed: DataLoader workers are used, and batches (order and crops) do not depend on the
number of workers or on where a run resumed."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from dreampose.config import TrainConfig
from dreampose.data.dataset import PairDataset
from dreampose.training.data import StepBatchSampler, make_loader, train_batches
from dreampose.training.loop import load_batch, make_accelerator, train
from dreampose.training.objectives import DiffusionObjective
from dreampose.training.sampling import batch_indices, step_seed
from tests.training.tiny import H, W, tiny_pipeline, write_workspace

CPU = torch.device("cpu")


class WhoLoads(Dataset):
    """Items that say which process made them."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        return {"x": torch.full((2,), float(i)), "pid": torch.tensor(os.getpid())}


class RecordingObjective(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.pids: list[int] = []

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"lin": self.lin}

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        self.pids += batch["pid"].tolist()
        return self.lin(batch["x"]).pow(2).mean()


def test_train_loads_its_batches_in_num_workers_worker_processes():
    obj = RecordingObjective()
    cfg = TrainConfig(max_steps=6, batch_size=2, num_workers=2, checkpoint_every=100)
    train(obj, WhoLoads(), cfg, accelerator=make_accelerator("no", cpu=True))
    assert len(obj.pids) == 12
    assert os.getpid() not in obj.pids and len(set(obj.pids)) == 2  # both workers, never the trainer
    obj = RecordingObjective()
    train(obj, WhoLoads(), cfg.model_copy(update={"num_workers": 0}), accelerator=make_accelerator("no", cpu=True))
    assert set(obj.pids) == {os.getpid()}
    loader = make_loader(WhoLoads(), StepBatchSampler(8, 0, 2, 1, 2, 0), num_workers=2)
    assert loader.num_workers == 2 and loader.persistent_workers


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny workspace (8 pairs over 2 subjects) shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("pairs")
    return root, write_workspace(root)


def _pairs(root, manifest) -> PairDataset:
    return PairDataset(manifest, root, H, W, augment=(0.5, 0.9), seed=1, color_augment=0.5)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


def test_batches_equal_the_in_process_feed_with_workers_and_after_resume(workspace):
    root, manifest = workspace
    ds = _pairs(root, manifest)
    cfg = TrainConfig(batch_size=6, grad_accum=2, seed=4, num_workers=0)
    # The feed before DataLoaders: set the micro-batch's key on the dataset, then read its items in order.
    old = []
    for s in range(12):
        ds.set_augment_key(step_seed(cfg.seed, s, 0, 3))
        old.append(load_batch(ds, batch_indices(len(ds), s, 6, cfg.seed)))
    assert any(len(set(batch_indices(len(ds), s, 6, cfg.seed))) < 6 for s in range(12))  # repeats are covered
    fresh = _pairs(root, manifest)
    full = list(train_batches(fresh, cfg, 0, 6, 0, 1, CPU))
    resumed = list(train_batches(fresh, cfg.model_copy(update={"num_workers": 2}), 3, 6, 0, 1, CPU))
    assert len(full) == 12 and len(resumed) == 6
    assert all(_equal(a, b) for a, b in zip(old, full, strict=True))
    assert all(_equal(a, b) for a, b in zip(full[6:], resumed, strict=True))
    assert not torch.equal(full[0]["target_pixels"][0], full[1]["target_pixels"][0])


def test_a_run_resumed_with_workers_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, workspace):
    cfg = TrainConfig(max_steps=4, batch_size=4, lr=1e-3, checkpoint_every=2, seed=2, num_workers=2)

    root, manifest = workspace

    def run(ckpt, workers: int, stop_after: int | None = None):
        obj = DiffusionObjective(tiny_pipeline(seed=0), cfg.dropout)
        res = train(obj, _pairs(root, manifest),
                    cfg.model_copy(update={"num_workers": workers}), ckpt_dir=ckpt,
                    accelerator=make_accelerator("no", cpu=True), stop_after=stop_after, fingerprint="t")  # fmt: skip
        return res, obj.unet.state_dict()

    _, ref = run(tmp_path / "a", workers=0)
    first, _ = run(tmp_path / "b", workers=1, stop_after=3)
    resumed, weights = run(tmp_path / "b", workers=2)  # a resume may use another worker count
    assert first.steps == 3 and resumed.start_step == 2 and resumed.steps == 4
    assert all(torch.equal(ref[k], weights[k]) for k in ref)
