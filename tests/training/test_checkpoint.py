from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from dreampose.training.checkpoint import (
    apply_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 5))
    return model, opt, sched


def _step(model, opt, sched):
    model(torch.randn(5, 3)).pow(2).mean().backward()
    opt.step()
    opt.zero_grad()
    sched.step()


def test_roundtrip_restores_weights_optimizer_scheduler_and_rng(tmp_path):
    model, opt, sched = _setup()
    for _ in range(3):
        _step(model, opt, sched)
    random.seed(5)
    np.random.seed(5)
    path = save_checkpoint(tmp_path, 3, {"net": model}, opt, sched, fingerprint="abc")
    assert path.name == "step_000003" and (path / "model.safetensors").is_file()
    expected_rng = (torch.rand(2), np.random.rand(), random.random())
    _step(model, opt, sched)  # continue the original
    ref = [p.detach().clone() for p in model.parameters()]

    model2, opt2, sched2 = _setup(seed=1)
    step = apply_checkpoint(load_checkpoint(path), {"net": model2}, opt2, sched2)
    assert step == 3 and sched2.last_epoch == 3
    # the generators continue where they were saved, so the next step draws the same inputs
    assert torch.equal(torch.rand(2), expected_rng[0])
    assert (np.random.rand(), random.random()) == expected_rng[1:]
    _step(model2, opt2, sched2)
    for a, b in zip(ref, model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_keeps_only_the_newest(tmp_path):
    model, opt, sched = _setup()
    for s in (1, 2, 3, 4):
        save_checkpoint(tmp_path, s, {"net": model}, opt, sched, "fp", keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path):
    model, opt, sched = _setup()
    save_checkpoint(tmp_path, 2, {"net": model}, opt, sched, "fp")
    _step(model, opt, sched)
    last = save_checkpoint(tmp_path, 4, {"net": model}, opt, sched, "fp")
    f = last / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.warns(RuntimeWarning, match="corrupt checkpoint at step 4"):
        ckpt = latest_checkpoint(tmp_path, "fp")
    assert ckpt is not None and ckpt.step == 2


def test_other_settings_are_not_resumed(tmp_path):
    model, opt, sched = _setup()
    save_checkpoint(tmp_path, 2, {"net": model}, opt, sched, "fp-a")
    with pytest.warns(RuntimeWarning, match="different settings"):
        assert latest_checkpoint(tmp_path, "fp-b") is None
    assert latest_checkpoint(tmp_path / "missing") is None


def test_missing_module_weights_is_an_error(tmp_path):
    model, opt, sched = _setup()
    path = save_checkpoint(tmp_path, 1, {"net": model}, opt, sched, "fp")
    with pytest.raises(ValueError, match="other"):
        apply_checkpoint(load_checkpoint(path), {"other": model}, opt, sched)


def test_the_loss_scaler_state_round_trips(tmp_path):
    """fp16 runs: the scale and the growth tracker (steps since the last overflow) come back exactly."""
    model, opt, sched = _setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    for i in range(4):
        loss = model(torch.randn(5, 3)).pow(2).mean() * (float("inf") if i == 1 else 1.0)
        scaler.scale(loss).backward()
        scaler.step(opt)  # skipped on the overflow, which halves the scale
        scaler.update()
        opt.zero_grad()
    state = scaler.state_dict()
    assert (state["scale"], state["_growth_tracker"]) == (2.0**9, 2)  # backed off at step 2, two good steps since
    path = save_checkpoint(tmp_path, 4, {"net": model}, opt, sched, fingerprint="f", scaler=scaler)

    fresh = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    model2, opt2, sched2 = _setup(seed=1)
    apply_checkpoint(load_checkpoint(path), {"net": model2}, opt2, sched2, scaler=fresh)
    assert fresh.state_dict() == state
    assert fresh.scale(torch.ones(())).item() == 2.0**9  # the restored scale is the one in use

    # a checkpoint written without a scaler (fp32/bf16 runs) resumes an fp16 scaler with a warning
    bare = save_checkpoint(tmp_path, 5, {"net": model}, opt, sched, fingerprint="f")
    with pytest.warns(RuntimeWarning, match="not exact"):
        apply_checkpoint(load_checkpoint(bare), {"net": model2}, opt2, sched2, scaler=torch.amp.GradScaler("cpu"))


def test_the_weight_ema_round_trips(tmp_path):
    """Runs with ``ema_decay``: the shadow weights and the EMA's step count (its warm-up) come back exactly."""
    from dreampose.training.loop import make_ema

    model, opt, sched = _setup()
    ema = make_ema(list(model.parameters()), 0.9)
    for _ in range(3):
        _step(model, opt, sched)
        ema.step(model.parameters())
    path = save_checkpoint(tmp_path, 3, {"net": model}, opt, sched, fingerprint="f", ema=ema)

    model2, opt2, sched2 = _setup(seed=1)
    fresh = make_ema(list(model2.parameters()), 0.9)
    apply_checkpoint(load_checkpoint(path), {"net": model2}, opt2, sched2, ema=fresh)
    assert fresh.optimization_step == 3
    assert all(torch.equal(a, b) for a, b in zip(ema.shadow_params, fresh.shadow_params, strict=True))
    assert not torch.equal(fresh.shadow_params[0], model2[0].weight)  # the shadow, not the weights

    bare = save_checkpoint(tmp_path, 4, {"net": model}, opt, sched, fingerprint="f")
    with pytest.raises(ValueError, match="no weight-EMA state"):
        apply_checkpoint(load_checkpoint(bare), {"net": model2}, opt2, sched2, ema=fresh)
