from __future__ import annotations

import pytest
import torch

from dreampose.config import DropoutConfig
from dreampose.training.loop import load_batch
from dreampose.training.objectives import DecoderObjective, DiffusionObjective, sample_timesteps
from dreampose.training.sampling import batch_indices
from tests.training.tiny import TinyPairs, tiny_pipeline


def _batch(n: int = 4):
    ds = TinyPairs(8)
    return load_batch(ds, batch_indices(len(ds), 0, n, 0))


def _loss_and_grads(checkpointing: bool):
    obj = DiffusionObjective(tiny_pipeline(seed=0), DropoutConfig(), train_image_encoder=True)
    if checkpointing:
        obj.enable_gradient_checkpointing()
        assert obj.unet.is_gradient_checkpointing
    obj.train()
    loss = obj(_batch(), torch.Generator().manual_seed(1))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in obj.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def test_gradient_checkpointing_gives_the_same_loss_and_grads(monkeypatch):
    calls = []
    real = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    loss_a, grads_a = _loss_and_grads(False)
    assert not calls
    loss_b, grads_b = _loss_and_grads(True)
    assert calls, "gradient checkpointing was enabled but never ran"
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and any(k.startswith("unet.") for k in grads_a)
    for k in grads_a:
        assert torch.allclose(grads_a[k], grads_b[k], atol=1e-5, rtol=1e-4), k


def test_v_prediction_target_and_epsilon_target_differ():
    batch = _batch()
    losses = []
    for pred in ("v_prediction", "epsilon"):
        obj = DiffusionObjective(tiny_pipeline(seed=0, prediction_type=pred), DropoutConfig())
        losses.append(obj(batch, torch.Generator().manual_seed(1)).item())
    assert losses[0] != pytest.approx(losses[1])


def test_only_unet_adapter_and_optionally_image_encoder_train():
    obj = DiffusionObjective(tiny_pipeline(), DropoutConfig(), train_image_encoder=False)
    assert set(obj.trainable_modules()) == {"unet", "adapter"}
    assert not any(p.requires_grad for p in obj.vae.parameters())
    assert not any(p.requires_grad for p in obj.image_encoder.parameters())
    obj.train()
    obj(_batch(), torch.Generator().manual_seed(0)).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in obj.adapter.parameters())


def test_dropped_image_means_zero_tokens():
    obj = DiffusionObjective(tiny_pipeline(), DropoutConfig())
    batch = _batch(2)
    noise = torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 50])
    keep = torch.zeros(2, dtype=torch.bool)
    drop = torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        dropped = obj.loss_terms(batch, noise, t, drop, keep)
        # other input image, image dropped: same loss, since the tokens are zeros either way
        batch2 = dict(batch, input_pixels=-batch["input_pixels"])
        dropped2 = obj.loss_terms(batch2, noise, t, drop, keep)
        kept2 = obj.loss_terms(batch2, noise, t, keep, keep)
        kept = obj.loss_terms(batch, noise, t, keep, keep)
    assert torch.equal(dropped, dropped2)
    assert not torch.allclose(kept, kept2)


def test_decoder_objective_trains_only_the_decoder():
    pipe = tiny_pipeline()
    obj = DecoderObjective(pipe.vae)
    loss = obj({"pixels": _batch()["target_pixels"]}, torch.Generator())
    loss.backward()
    assert pipe.vae.decoder.conv_out.weight.grad is not None
    assert all(p.grad is None for p in pipe.vae.encoder.parameters())


def test_cubic_timesteps_favour_the_noisy_half():
    g = torch.Generator().manual_seed(0)
    uniform = sample_timesteps(20000, 1000, "uniform", g, torch.device("cpu"))
    cubic = sample_timesteps(20000, 1000, "cubic", g, torch.device("cpu"))
    for t in (uniform, cubic):
        assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) <= 999
    assert (uniform >= 500).float().mean() == pytest.approx(0.5, abs=0.02)
    assert (cubic >= 500).float().mean() == pytest.approx(0.5 ** (1 / 3), abs=0.02)  # P(u^3 <= 1/2)
    assert (cubic < 100).float().mean() == pytest.approx(1 - 0.9 ** (1 / 3), abs=0.01)
    with pytest.raises(ValueError, match="unknown timestep sampling"):
        sample_timesteps(2, 1000, "logit", g, torch.device("cpu"))


def test_the_objective_draws_its_timesteps_as_configured(monkeypatch):
    """``timestep_sampling`` reaches the draw the training loss uses."""
    import dreampose.training.objectives as objectives

    seen: list[str] = []
    real = objectives.sample_timesteps
    monkeypatch.setattr(
        objectives, "sample_timesteps", lambda b, n, mode, g, d: seen.append(mode) or real(b, n, mode, g, d)
    )
    obj = DiffusionObjective(tiny_pipeline(seed=0), DropoutConfig(), timestep_sampling="cubic")
    loss = obj(load_batch(TinyPairs(4), [0, 1, 2, 3]), torch.Generator().manual_seed(0))
    assert seen == ["cubic"] and torch.isfinite(loss)
