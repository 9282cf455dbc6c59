from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dreampose.config import DropoutConfig, SubjectConfig, TrainConfig
from dreampose.fsutil import RUN_TO_RUN_KEYS
from dreampose.models.subject import DECODER_FILE, load_subject_pipeline
from dreampose.training.finetune import ckpt_dir_for, finetune_base, finetune_subject, subject_rows
from tests.training.tiny import H, W, write_workspace


@pytest.fixture
def ws(tmp_path) -> Path:
    write_workspace(tmp_path)
    return tmp_path


def test_finetune_base_writes_a_loadable_pipeline_and_lowers_heldout_loss(ws):
    from dreampose.models.pipeline import DreamPosePipeline

    cfg = TrainConfig(max_steps=25, batch_size=8, lr=2e-3, checkpoint_every=10, dropout=DropoutConfig())
    out = ws / "models" / "base"
    summary = finetune_base(cfg, ws / "pretrained", ws / "manifests" / "pairs.parquet", ws, out, size=(H, W))
    assert summary["steps"] == 25
    assert summary["heldout_loss_after"] < 0.9 * summary["heldout_loss_before"], summary
    assert (out / "model_index.json").is_file() and (out / "train.json").is_file()
    assert summary["seconds"] > 0 and not RUN_TO_RUN_KEYS & set(json.loads((out / "train.json").read_text()))
    assert not ckpt_dir_for(out).exists()  # crash-recovery checkpoints are gone after success
    pipe = DreamPosePipeline.from_pretrained(out)
    ref = DreamPosePipeline.from_pretrained(ws / "pretrained")
    assert not torch.equal(pipe.unet.conv_in.weight, ref.unet.conv_in.weight)
    assert torch.equal(pipe.vae.decoder.conv_out.weight, ref.vae.decoder.conv_out.weight)  # VAE frozen


def test_finetune_subject_trains_unet_then_decoder(ws):
    from dreampose.models.pipeline import DreamPosePipeline

    cfg = SubjectConfig(
        unet=TrainConfig(max_steps=4, batch_size=2, lr=3e-4, checkpoint_every=2),
        decoder_steps=6,
        decoder_lr=5e-4,
        decoder_batch_size=2,
    )
    out = ws / "models" / "subjects" / "syn_1"
    summary = finetune_subject(
        cfg, ws / "pretrained", ws / "manifests" / "pairs.parquet", "syn_1", ws, out, size=(H, W)
    )
    assert summary["pairs"] == 4 and summary["unet_steps"] == 4 and summary["decoder_steps"] == 6
    assert summary["decoder_l1_last"] < summary["decoder_l1_first"]
    pipe = load_subject_pipeline(out)
    ref = DreamPosePipeline.from_pretrained(ws / "pretrained")
    assert not torch.equal(pipe.vae.decoder.conv_out.weight, ref.vae.decoder.conv_out.weight)
    assert torch.equal(pipe.vae.encoder.conv_in.weight, ref.vae.encoder.conv_in.weight)  # encoder frozen
    assert not torch.equal(pipe.unet.conv_in.weight, ref.unet.conv_in.weight)


def test_decoder_steps_0_finetunes_the_unet_only_and_keeps_the_base_vae(ws):
    from dreampose.models.pipeline import DreamPosePipeline

    cfg = SubjectConfig(unet=TrainConfig(max_steps=2, batch_size=2, lr=3e-4, checkpoint_every=2), decoder_steps=0)
    out = ws / "models" / "subjects" / "syn_0"
    summary = finetune_subject(
        cfg, ws / "pretrained", ws / "manifests" / "pairs.parquet", "syn_0", ws, out, size=(H, W)
    )
    assert summary["unet_steps"] == 2 and summary["decoder_steps"] == 0 and "decoder_l1_last" not in summary
    assert not (out / DECODER_FILE).exists()  # nothing of the VAE stored: the base's is used as it is
    pipe = load_subject_pipeline(out)
    ref = DreamPosePipeline.from_pretrained(ws / "pretrained")
    got, want = pipe.vae.state_dict(), ref.vae.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert not torch.equal(pipe.unet.conv_in.weight, ref.unet.conv_in.weight)


def test_unknown_subject_is_a_clear_error(ws):
    with pytest.raises(ValueError, match="no rows for subject 'nobody'"):
        subject_rows(ws / "manifests" / "pairs.parquet", "nobody")
    with pytest.raises(FileNotFoundError, match=r"model_index\.json"):
        finetune_base(TrainConfig(max_steps=1), ws / "missing", ws / "manifests" / "pairs.parquet", ws, ws / "o")


def _failing_after_first(real, error: BaseException):
    """``heldout_loss`` that measures before training and fails after it (e.g. out of memory on a full GPU)."""
    calls = []

    def heldout(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise error
        return real(*args, **kwargs)

    return heldout


@pytest.mark.parametrize("error", [MemoryError("simulated"), RuntimeError("simulated")])
def test_the_model_is_saved_before_the_post_training_evaluation(ws, monkeypatch, error):
    import json

    from dreampose.models.pipeline import DreamPosePipeline
    from dreampose.training import finetune

    monkeypatch.setattr(finetune, "heldout_loss", _failing_after_first(finetune.heldout_loss, error))
    cfg = TrainConfig(max_steps=2, batch_size=4, lr=2e-3, checkpoint_every=1)
    out = ws / "models" / "base"
    args = (cfg, ws / "pretrained", ws / "manifests" / "pairs.parquet", ws, out)
    if isinstance(error, MemoryError):  # out of memory: recorded, the stage completes
        summary = finetune_base(*args, size=(H, W))
        assert summary["heldout_loss_after"] is None and "simulated" in summary["heldout_loss_after_error"]
        assert json.loads((out / "train.json").read_text())["heldout_loss_after_error"].endswith("simulated")
    else:  # anything else fails the stage, with the trained model already saved
        with pytest.raises(RuntimeError, match="simulated"):
            finetune_base(*args, size=(H, W))
    ref = DreamPosePipeline.from_pretrained(ws / "pretrained")
    pipe = DreamPosePipeline.from_pretrained(out)
    assert not torch.equal(pipe.unet.conv_in.weight, ref.unet.conv_in.weight)  # the trained weights
    assert not ckpt_dir_for(out).exists()


def test_heldout_loss_is_written_once_the_model_is_saved(ws):
    cfg = SubjectConfig(unet=TrainConfig(max_steps=1, batch_size=2, checkpoint_every=1), decoder_steps=1)
    out = ws / "models" / "subjects" / "syn_0"
    summary = finetune_subject(cfg, ws / "pretrained", ws / "manifests" / "pairs.parquet", "syn_0", ws, out,
                               size=(H, W))  # fmt: skip
    written = json.loads((out / "train.json").read_text())
    assert written["unet_loss_after"] == summary["unet_loss_after"] and summary["unet_loss_after"] > 0
    # Timings vary run to run: returned (for MLflow), never in the hashed train.json.
    assert summary["seconds"] > 0
    assert not RUN_TO_RUN_KEYS & set(written), sorted(RUN_TO_RUN_KEYS & set(written))


def test_a_subject_keeps_one_checkpoint_frees_phase_1_and_checkpoints_phase_2(ws, monkeypatch):
    """At most one checkpoint on disk at any save, none after success; phase 1's optimizer is gone when phase 2
    builds its own; phase 2 runs with the configured gradient checkpointing."""
    import weakref

    from dreampose.training import finetune, loop
    from dreampose.training.checkpoint import list_checkpoints
    from dreampose.training.objectives import DecoderObjective

    out = ws / "models" / "subjects" / "syn_1"
    root = ckpt_dir_for(out)
    on_disk: list[int] = []
    real_save, real_build, real_train = loop.save_checkpoint, loop.build_optimizer, finetune.train

    def save(*args, **kwargs):
        on_disk.append(len(list_checkpoints(root / "unet")) + len(list_checkpoints(root / "decoder")))
        return real_save(*args, **kwargs)

    optimizers: list[weakref.ref] = []
    alive_at_phase_2: list[bool] = []

    def build(params, cfg):
        if optimizers:
            alive_at_phase_2.append(optimizers[0]() is not None)
        opt = real_build(params, cfg)
        optimizers.append(weakref.ref(opt))
        return opt

    objectives: list[torch.nn.Module] = []

    def train(objective, *args, **kwargs):
        objectives.append(objective)
        return real_train(objective, *args, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", save)
    monkeypatch.setattr(loop, "build_optimizer", build)
    monkeypatch.setattr(finetune, "train", train)
    cfg = SubjectConfig(
        unet=TrainConfig(max_steps=4, batch_size=2, lr=3e-4, checkpoint_every=1, gradient_checkpointing=True),
        decoder_steps=4,
        decoder_checkpoint_every=1,
        decoder_batch_size=2,
    )
    summary = finetune_subject(cfg, ws / "pretrained", ws / "manifests" / "pairs.parquet", "syn_1", ws, out,
                               size=(H, W))  # fmt: skip
    assert summary["unet_steps"] == 4 and summary["decoder_steps"] == 4
    assert len(on_disk) == 6 and max(on_disk) == 1, on_disk  # 3 saves per phase (none at the last step)
    assert not root.exists()
    assert alive_at_phase_2 == [False], "phase 1's optimizer state was still referenced in phase 2"
    (dec,) = [o for o in objectives if isinstance(o, DecoderObjective)]
    assert dec.vae.decoder.gradient_checkpointing is True


def test_the_decoder_phase_has_its_own_checkpoint_interval(ws, monkeypatch):
    from dreampose.training import loop

    steps: list[tuple[str, int]] = []
    real_save = loop.save_checkpoint

    def save(ckpt_dir, step, *args, **kwargs):
        steps.append((ckpt_dir.name, step))
        return real_save(ckpt_dir, step, *args, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", save)
    cfg = SubjectConfig(unet=TrainConfig(max_steps=3, batch_size=2, checkpoint_every=1), decoder_steps=3)
    finetune_subject(cfg, ws / "pretrained", ws / "manifests" / "pairs.parquet", "syn_0", ws,
                     ws / "models" / "subjects" / "syn_0", size=(H, W))  # fmt: skip
    assert steps == [("unet", 1), ("unet", 2)]  # decoder_checkpoint_every 0: none in phase 2


def test_the_unet_phase_schedule_and_ema_stay_out_of_the_decoder_phase(ws, monkeypatch):
    from dreampose.training import finetune as ft

    seen: list[TrainConfig] = []
    real_train = ft.train
    monkeypatch.setattr(ft, "train", lambda obj, data, cfg, **kw: seen.append(cfg) or real_train(obj, data, cfg, **kw))
    unet = TrainConfig(max_steps=2, batch_size=2, checkpoint_every=0, lr_schedule="cosine", ema_decay=0.9)
    finetune_subject(SubjectConfig(unet=unet, decoder_steps=2), ws / "pretrained", ws / "manifests" / "pairs.parquet",
                     "syn_0", ws, ws / "models" / "subjects" / "syn_0", size=(H, W))  # fmt: skip
    assert [(c.lr_schedule, c.ema_decay) for c in seen] == [("cosine", 0.9), ("constant", 0.0)]
