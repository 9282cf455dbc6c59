"""The optimizer step's safety features: clipping, the fp16 loss scaler across a resume, the optimizer freed on
return, checkpoint timing and the TF32 decision. A small linear objective keeps each test under a second."""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.data import Dataset

from dreampose.config import TrainConfig
from dreampose.training import loop
from dreampose.training.checkpoint import list_checkpoints
from dreampose.training.loop import checkpoint_due, enable_tf32, make_accelerator, tf32_supported, train


class LinearObjective(nn.Module):
    """Regression of ``y`` from noisy ``x``; ``scale`` multiplies the loss (and so the gradients)."""

    def __init__(self, scale: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(4, 3)
        self.scale = scale

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"lin": self.lin}

    def enable_gradient_checkpointing(self) -> None:
        pass

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        x = batch["x"] + 0.1 * torch.randn(batch["x"].shape, generator=generator, device=batch["x"].device)
        return self.scale * (self.lin(x) - batch["y"]).pow(2).mean()


class Vectors(Dataset):
    def __init__(self, n: int = 16) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 4, generator=g)
        self.y = torch.randn(n, 3, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def _grad_norms() -> tuple[list[float], object]:
    """Records the global gradient norm every optimizer sees when it steps (a global pre-step hook)."""
    norms: list[float] = []

    def hook(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    return norms, register_optimizer_step_pre_hook(hook)


@pytest.mark.parametrize("max_grad_norm", [None, 0.0, 1.0])
def test_a_large_gradient_step_is_clipped_to_the_norm(max_grad_norm):
    cfg = TrainConfig(max_steps=3, batch_size=4, lr=1e-3, max_grad_norm=max_grad_norm)
    norms, handle = _grad_norms()
    try:
        train(LinearObjective(scale=1e4), Vectors(), cfg, accelerator=make_accelerator("no"))
    finally:
        handle.remove()
    assert len(norms) == 3
    if max_grad_norm:
        assert max(norms) == pytest.approx(max_grad_norm, rel=1e-4)
    else:  # null and 0 are off
        assert min(norms) > 100


def test_the_optimizer_and_gradients_are_freed_when_train_returns(monkeypatch):
    refs: list[weakref.ref] = []
    real = loop.build_optimizer

    def recording(params, cfg):
        opt = real(params, cfg)
        refs.append(weakref.ref(opt))
        return opt

    monkeypatch.setattr(loop, "build_optimizer", recording)
    accelerator = make_accelerator("no")  # kept alive, as a subject's two phases share one
    obj = LinearObjective()
    train(obj, Vectors(), TrainConfig(max_steps=2, batch_size=4), accelerator=accelerator)
    assert len(refs) == 1 and refs[0]() is None, "the optimizer (and its state) outlived the loop"
    assert all(p.grad is None for p in obj.parameters())


def _scaled_accelerator():
    """An accelerator whose loss scaler is a real ``torch.amp.GradScaler`` on the CPU: the fp16 run's scale /
    unscale / skip / grow path, runnable here (accelerate itself only scales on accelerators)."""
    acc = make_accelerator("no", cpu=True)
    acc.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=2)
    return acc


def test_an_fp16_shaped_resume_is_exact_including_the_loss_scale(tmp_path):
    cfg = TrainConfig(max_steps=7, batch_size=4, lr=1e-2, checkpoint_every=2, seed=5)

    def run(ckpt: Path, stop_after: int | None = None):
        obj, acc = LinearObjective(), _scaled_accelerator()
        res = train(obj, Vectors(), cfg, ckpt_dir=ckpt, accelerator=acc, stop_after=stop_after)
        return res, obj.lin.state_dict(), acc.scaler.state_dict()

    _, ref, ref_scaler = run(tmp_path / "a")
    assert ref_scaler["scale"] > 2.0**8  # the scale grew during the run: its state matters for the resume
    run(tmp_path / "b", stop_after=5)
    resumed, weights, scaler = run(tmp_path / "b")
    assert resumed.start_step == 4 and resumed.steps == 7
    assert scaler == ref_scaler
    for k in ref:
        assert torch.equal(ref[k], weights[k]), k


def test_checkpoint_due_by_steps_by_wall_time_or_off():
    assert [d for d in range(1, 8) if checkpoint_due(d, 8, 3, 0, 0.0)] == [3, 6]
    assert not checkpoint_due(8, 8, 4, 0, 0.0)  # never the last step: the model is saved then
    assert not checkpoint_due(3, 8, 0, 0, 1e9)  # both off
    assert checkpoint_due(3, 8, 0, 60, 61.0) and not checkpoint_due(3, 8, 0, 60, 59.0)
    assert checkpoint_due(3, 8, 100, 60, 61.0)  # whichever comes first


def test_wall_time_checkpoints_keep_only_the_newest(tmp_path):
    cfg = TrainConfig(max_steps=4, batch_size=4, checkpoint_every=0, checkpoint_every_s=1e-9)
    saved: list[int] = []
    train(LinearObjective(), Vectors(), cfg, ckpt_dir=tmp_path, accelerator=make_accelerator("no"),
          keep_checkpoints=1, on_step=lambda s, _: saved.append(len(list_checkpoints(tmp_path))))  # fmt: skip
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3] and saved == [1, 1, 1, 1]
    off = TrainConfig(max_steps=3, batch_size=4, checkpoint_every=0)
    train(LinearObjective(), Vectors(), off, ckpt_dir=tmp_path / "off", accelerator=make_accelerator("no"))
    assert list_checkpoints(tmp_path / "off") == []


def test_tf32_only_on_cuda_devices_with_tensor_cores():
    assert tf32_supported("cuda", (8, 0)) and tf32_supported("cuda", (9, 0))
    assert not tf32_supported("cuda", (7, 5))  # Turing and older: no TF32
    assert not tf32_supported("cpu", None) and not tf32_supported("cuda", None)
    before = torch.get_float32_matmul_precision()
    assert enable_tf32(torch.device("cpu")) is False
    assert torch.get_float32_matmul_precision() == before  # the CPU keeps full fp32
