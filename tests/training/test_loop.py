from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dreampose.config import DropoutConfig, TrainConfig
from dreampose.training.loop import constant_with_warmup, lr_multiplier, make_accelerator, run_fingerprint, train
from dreampose.training.objectives import DiffusionObjective, heldout_loss
from tests.training.tiny import TinyPairs, tiny_pipeline

REPO = Path(__file__).resolve().parents[2]


class ListLogger:
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, metrics))


def test_constant_with_warmup():
    assert [constant_with_warmup(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert constant_with_warmup(0, 0) == 1.0


def test_lr_multiplier_cosine_decays_to_zero_after_warmup():
    assert [lr_multiplier(s, 2, 10) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]  # constant: the warm-up ramp only
    cos = [lr_multiplier(s, 2, 10, "cosine") for s in range(11)]
    assert cos[0] == 0.5 and cos[2] == 1.0  # the ramp, then the top of the half cosine
    assert cos[6] == pytest.approx(0.5)  # half way through the 8 decay steps
    assert cos[10] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in itertools.pairwise(cos[2:]))  # never rises after warm-up
    assert lr_multiplier(50, 0, 10, "cosine") == pytest.approx(0.0, abs=1e-12)  # past max_steps (stop_after)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_multiplier(0, 0, 10, "linear")


def test_fingerprint_changes_with_settings():
    a = TrainConfig(max_steps=10)
    assert run_fingerprint(a, 5) == run_fingerprint(TrainConfig(max_steps=10), 5)
    assert run_fingerprint(a, 5) != run_fingerprint(TrainConfig(max_steps=11), 5)
    assert run_fingerprint(a, 5) != run_fingerprint(a, 6)


def test_loss_falls_and_metrics_are_logged():
    cfg = TrainConfig(max_steps=30, batch_size=8, lr=3e-3, log_every=10, dropout=DropoutConfig(pose=0, image=0, both=0))
    obj = DiffusionObjective(tiny_pipeline(seed=0), cfg.dropout, train_image_encoder=True)
    logger = ListLogger()
    before = heldout_loss(obj, TinyPairs(8, seed=9))
    res = train(obj, TinyPairs(16), cfg, accelerator=make_accelerator("no"), logger=logger)
    after = heldout_loss(obj, TinyPairs(8, seed=9))
    assert res.steps == 30 and len(res.losses) == 30 and not res.resumed
    assert after < 0.8 * before, (before, after)
    assert [s for s, _ in logger.rows] == [10, 20, 30]
    assert set(logger.rows[0][1]) == {"train/loss", "train/lr", "train/samples_per_s", "train/peak_memory_mb"}
    assert res.samples_per_s > 0 and res.peak_memory_mb > 0


def test_gradient_accumulation_updates_once_per_step():
    """Two micro-batches per optimizer step: the LR scheduler (one tick per step) counts optimizer steps."""
    cfg = TrainConfig(max_steps=2, batch_size=4, grad_accum=2, lr=1e-3)
    obj = DiffusionObjective(tiny_pipeline(seed=0), cfg.dropout)
    before = obj.unet.conv_in.weight.detach().clone()
    logger = ListLogger()
    res = train(obj, TinyPairs(8), TrainConfig(**{**cfg.model_dump(), "lr_warmup_steps": 4, "log_every": 1}),
                accelerator=make_accelerator("no"), logger=logger)  # fmt: skip
    assert res.steps == 2 and not torch.equal(before, obj.unet.conv_in.weight)
    assert [m["train/lr"] for _, m in logger.rows] == pytest.approx([5e-4, 7.5e-4])


def test_cosine_schedule_reaches_zero_at_max_steps():
    cfg = TrainConfig(max_steps=4, batch_size=4, lr=1e-3, lr_schedule="cosine", log_every=1)
    logger = ListLogger()
    train(DiffusionObjective(tiny_pipeline(seed=0), cfg.dropout), TinyPairs(8), cfg,
          accelerator=make_accelerator("no"), logger=logger)  # fmt: skip
    # logged after each step: the rate the next step will use
    assert [m["train/lr"] for _, m in logger.rows] == pytest.approx([8.536e-4, 5e-4, 1.464e-4, 0.0], abs=1e-7)


def test_ema_saves_the_moving_average_of_the_weights():
    """With ``ema_decay`` the trained module ends holding the EMA of the per-step weights (diffusers' warm-up:
    the first update copies, then decay min(d, n / (9 + n)) at update n), not the last step's weights."""
    cfg = TrainConfig(max_steps=5, batch_size=4, lr=1e-2, ema_decay=0.5)
    obj = DiffusionObjective(tiny_pipeline(seed=0), cfg.dropout)
    seen: list[torch.Tensor] = []
    train(obj, TinyPairs(8), cfg, accelerator=make_accelerator("no"),
          on_step=lambda s, loss: seen.append(obj.unet.conv_in.weight.detach().clone()))  # fmt: skip
    shadow = seen[0]
    for n, w in enumerate(seen[1:], start=2):
        d = min(0.5, n / (9 + n))
        shadow = d * shadow + (1 - d) * w
    assert torch.allclose(obj.unet.conv_in.weight, shadow, atol=1e-6)
    assert not torch.allclose(obj.unet.conv_in.weight, seen[-1], atol=1e-4)


@pytest.mark.parametrize("extra", [{}, {"ema_decay": 0.9, "lr_schedule": "cosine"}], ids=["plain", "ema_cosine"])
def test_stop_after_then_resume_equals_one_run(tmp_path, extra):
    cfg = TrainConfig(max_steps=6, batch_size=4, lr=1e-3, checkpoint_every=2, seed=1, **extra)

    def run(ckpt: Path, stop_after: int | None = None):
        obj = DiffusionObjective(tiny_pipeline(seed=0), cfg.dropout)
        res = train(obj, TinyPairs(12), cfg, ckpt_dir=ckpt, accelerator=make_accelerator("no"), stop_after=stop_after)
        return res, obj.unet.state_dict()

    _, ref = run(tmp_path / "a")
    first, _ = run(tmp_path / "b", stop_after=3)
    assert first.steps == 3
    resumed, weights = run(tmp_path / "b")
    assert resumed.start_step == 2 and resumed.steps == 6  # the last checkpoint before the stop
    for k in ref:
        assert torch.equal(ref[k], weights[k]), k


def _spawn(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.training.run_tiny", str(out), "--steps", "8", "--every", "2", *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


# Hang guards, not speed checks: a run takes seconds alone but several times that beside other CPU-heavy work.
HANG_S = 600


def _wait(proc: subprocess.Popen, timeout: float = HANG_S) -> None:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out.decode()[-3000:]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path):
    ref = _spawn(tmp_path / "ref")
    killed = _spawn(tmp_path / "run", "--sleep", "0.5")
    ckpt4 = tmp_path / "run" / "ckpt" / "step_000004"
    deadline = time.monotonic() + HANG_S
    while not ckpt4.exists():
        assert killed.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "run" / "final.safetensors").exists()
    _wait(ref)
    resumed = _spawn(tmp_path / "run")
    _wait(resumed)
    a = load_file(tmp_path / "ref" / "final.safetensors")
    b = load_file(tmp_path / "run" / "final.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_two_processes_end_with_identical_weights(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "tests.training.run_tiny", str(tmp_path), "--steps", "3", "--every", "100", "--cpu",
    ]  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    h0 = (tmp_path / "rank0.sha256").read_text()
    h1 = (tmp_path / "rank1.sha256").read_text()
    assert h0 == h1
    # and training moved the weights: compare with the untrained model
    from tests.training.run_tiny import weights_digest

    untrained = DiffusionObjective(tiny_pipeline(seed=0), DropoutConfig(), train_image_encoder=True)
    state = {f"{n}.{k}": v for n, m in untrained.trainable_modules().items() for k, v in m.state_dict().items()}
    assert weights_digest(state) != h0


def test_resume_with_crop_augmentation_equals_one_run(tmp_path):
    """Fresh dataset and model objects after the stop, as in a new process: crops must not depend on history."""
    from torch.utils.data import Subset

    from dreampose.data.dataset import PairDataset
    from tests.training.tiny import H, W, write_workspace

    manifest = write_workspace(tmp_path)
    cfg = TrainConfig(max_steps=4, batch_size=6, lr=1e-3, checkpoint_every=2, seed=2)

    def run(ckpt: Path, stop_after: int | None = None):
        data = Subset(PairDataset(manifest, tmp_path, H, W, augment=(0.5, 0.9), seed=2), [0, 1, 2, 3])
        obj = DiffusionObjective(tiny_pipeline(seed=0), cfg.dropout)
        res = train(obj, data, cfg, ckpt_dir=ckpt, accelerator=make_accelerator("no"), stop_after=stop_after)
        return res, obj.unet.state_dict()

    _, ref = run(tmp_path / "a")
    run(tmp_path / "b", stop_after=3)
    resumed, weights = run(tmp_path / "b")
    assert resumed.start_step == 2 and resumed.steps == 4
    for k in ref:
        assert torch.equal(ref[k], weights[k]), k
