from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dreampose.config import DropoutConfig, SubjectConfig, TrainConfig
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
