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
from dreampose.training.data import StepBatchSampler, make_loader, to_device, train_batches
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
    full = [to_device(b, CPU) for b in train_batches(fresh, cfg, 0, 6, 0, 1, CPU)]
    resumed = [
        to_device(b, CPU) for b in train_batches(fresh, cfg.model_copy(update={"num_workers": 2}), 3, 6, 0, 1, CPU)
    ]
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


# Every way a PairDataset can make its items: plain; pixels and IUV resized to another size; target and poses
# cropped; photo and target recoloured; both.
KINDS = {
    "plain": {},
    "resized": {"height": 2 * H + 4, "width": W + 6},
    "crop": {"augment": (0.5, 0.9)},
    "colour": {"color_augment": 0.7},
    "crop_colour": {"augment": (0.5, 0.9), "color_augment": 0.7},
}


def _dataset(root, manifest, kind: str) -> PairDataset:
    kw = dict(KINDS[kind])
    return PairDataset(manifest, root, kw.pop("height", H), kw.pop("width", W), seed=5, **kw)


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_expanded_compact_batch_equals_the_float_batch_exactly(workspace, kind):
    """What the workers ship (uint8 where it can), expanded on the device, is the float batch the items gave
    before, value for value, with 0 and 2 workers: the training result does not move."""
    root, manifest = workspace
    cfg = TrainConfig(batch_size=5, seed=3, num_workers=0)
    ds = _dataset(root, manifest, kind)
    floats = []
    for s in range(4):  # the float feed: the micro-batch's key on the dataset, its items read in order
        ds.set_augment_key(step_seed(cfg.seed, s, 0, 3))
        floats.append(load_batch(ds, batch_indices(len(ds), s, 5, cfg.seed)))
    for workers in (0, 2):
        got = train_batches(_dataset(root, manifest, kind), cfg.model_copy(update={"num_workers": workers}),
                            0, 4, 0, 1, CPU)  # fmt: skip
        for a, b in zip(floats, [to_device(x, CPU) for x in got], strict=True):
            assert _equal(a, b), (kind, workers)
            assert all(b[k].dtype == torch.float32 for k in ("input_pixels", "target_pixels", "poses"))


def test_workers_ship_uint8_pose_windows_and_integer_pixels(workspace):
    """A worker's batch carries the IUV window as uint8 (a third of the float32 poses' bytes) and the pixels as
    uint8 wherever no crop or colour change made them non-integer; the float conversion is the device's."""
    root, manifest = workspace
    cfg = TrainConfig(batch_size=4, seed=0, num_workers=2)
    both = {"input_pixels", "target_pixels"}
    for kind, uint8_keys in (("plain", both), ("resized", both), ("crop", {"input_pixels"}), ("colour", set()),
                             ("crop_colour", set())):  # fmt: skip
        ds = _dataset(root, manifest, kind)
        batch = next(train_batches(ds, cfg, 0, 1, 0, 1, CPU))
        item = ds.keyed_item(0, 1)
        assert "poses" not in batch and batch["pose_iuv"].dtype == torch.uint8, kind
        assert batch["pose_iuv"].shape == (4, 5, *item["poses"].shape[-2:], 3)
        for k in ("input_pixels", "target_pixels"):
            assert batch[k].dtype == (torch.uint8 if k in uint8_keys else torch.float32), (kind, k)
        shipped = sum(v.nbytes for v in batch.values() if isinstance(v, torch.Tensor))
        floats = 4 * sum(v.nbytes for v in item.values() if isinstance(v, torch.Tensor))
        assert shipped <= floats / (3 if kind in ("plain", "resized") else 1.5), kind


def test_the_device_gathers_give_the_cpu_tables_values():
    """On a GPU the tables are gathered with torch ops (a GPU division may round otherwise); that path, run here,
    gives every pixel and every (I, U, V) the CPU's values."""
    from dreampose.data import dataset as D
    from dreampose.data.densepose import iuv as I

    pixels = torch.arange(256, dtype=torch.uint8).view(4, 8, 8)
    assert torch.equal(D._pixel_gather(pixels), D.pixels_to_model(pixels))
    assert torch.equal(D.pixels_to_model(pixels), pixels.float() / 127.5 - 1.0)
    parts = torch.tensor([0, 1, 24, 255], dtype=torch.uint8)
    grid = torch.meshgrid(
        parts, torch.arange(256, dtype=torch.uint8), torch.arange(256, dtype=torch.uint8), indexing="ij"
    )
    iuv = torch.stack(grid, -1)[None].expand(2, -1, -1, -1, -1)  # (2, 4, 256, 256, 3), a batch of windows
    assert torch.equal(I._uv_gather(iuv), I.uv_to_model(iuv)) and I._uv_gather(iuv).shape == (2, 4, 2, 256, 256)


class SeesBatches(nn.Module):
    """Records the batches the loop hands to the model."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1)
        self.batches: list[dict] = []

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"lin": self.lin}

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        self.batches.append(batch)
        return self.lin(batch["poses"].mean().view(1, 1)).pow(2).mean()


def test_the_loop_hands_the_model_the_float_batches(workspace):
    root, manifest = workspace
    cfg = TrainConfig(max_steps=3, batch_size=4, seed=6, num_workers=2, checkpoint_every=100)
    obj = SeesBatches()
    train(obj, _dataset(root, manifest, "crop"), cfg, accelerator=make_accelerator("no", cpu=True))
    ds = _dataset(root, manifest, "crop")
    for s, got in enumerate(obj.batches):
        ds.set_augment_key(step_seed(cfg.seed, s, 0, 3))
        assert _equal(load_batch(ds, batch_indices(len(ds), s, 4, cfg.seed)), got)
