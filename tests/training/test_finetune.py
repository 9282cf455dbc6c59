from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dreampose.config import DropoutConfig, SubjectConfig, TrainConfig
from dreampose.training.finetune import ckpt_dir_for, finetune_base, finetune_subject, subject_rows
from tests.training.tiny import H, W, tiny_pipeline

FRAMES = 6


def _workspace(root: Path) -> Path:
    """Two subjects, 6 frames each: a coloured square that moves with its IUV; pair manifests."""
    rng = np.random.default_rng(0)
    rows = []
    for s, colour in enumerate([(220, 40, 40), (40, 60, 220)]):
        vid = f"syn_{s}"
        iuv = np.zeros((FRAMES, H, W, 3), np.uint8)
        (root / "frames" / vid).mkdir(parents=True)
        for t in range(FRAMES):
            img = np.full((H, W, 3), 30, np.uint8)
            y, x = t, 2 + t
            img[y : y + 8, x : x + 6] = colour
            iuv[t, y : y + 8, x : x + 6] = (1, 128, 200)
            Image.fromarray(img).save(root / "frames" / vid / f"{t:05d}.png")
        (root / "densepose").mkdir(exist_ok=True)
        np.savez(root / "densepose" / f"{vid}.npz", iuv=iuv)
        for t in rng.permutation(FRAMES)[:4]:
            rows.append(
                {
                    "subject_id": vid,
                    "input_path": f"frames/{vid}/00000.png",
                    "target_path": f"frames/{vid}/{t:05d}.png",
                    "densepose_path": f"densepose/{vid}.npz",
                    "pose_frames": [int(min(max(t + d, 0), FRAMES - 1)) for d in range(-2, 3)],
                }
            )
    (root / "manifests").mkdir()
    pd.DataFrame(rows).to_parquet(root / "manifests" / "pairs.parquet")
    tiny_pipeline(seed=0).save_pretrained(root / "pretrained", safe_serialization=True)
    return root / "manifests" / "pairs.parquet"


@pytest.fixture
def ws(tmp_path) -> Path:
    _workspace(tmp_path)
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
    pipe = DreamPosePipeline.from_pretrained(out)
    ref = DreamPosePipeline.from_pretrained(ws / "pretrained")
    assert not torch.equal(pipe.vae.decoder.conv_out.weight, ref.vae.decoder.conv_out.weight)
    assert torch.equal(pipe.vae.encoder.conv_in.weight, ref.vae.encoder.conv_in.weight)  # encoder frozen
    assert not torch.equal(pipe.unet.conv_in.weight, ref.unet.conv_in.weight)


def test_unknown_subject_is_a_clear_error(ws):
    with pytest.raises(ValueError, match="no rows for subject 'nobody'"):
        subject_rows(ws / "manifests" / "pairs.parquet", "nobody")
    with pytest.raises(FileNotFoundError, match=r"model_index\.json"):
        finetune_base(TrainConfig(max_steps=1), ws / "missing", ws / "manifests" / "pairs.parquet", ws, ws / "o")
