"""One pose frame instead of five (``manifest.pose_window: 1``, the paper's "Ours_1-pose" ablation), end to end on
a tiny model: config -> UNet pose channels -> dataset windows -> subject finetune -> render."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dreampose.config import ConfigError, RenderConfig, SubjectConfig, TrainConfig, parse_params
from dreampose.data.dataset import PairDataset
from dreampose.models.subject import load_subject_pipeline as load_pipeline
from dreampose.render import render_sequence
from dreampose.training.finetune import finetune_subject
from tests.training.tiny import H, W, write_workspace


def test_pose_window_sets_the_pose_channels_and_a_mismatch_is_an_error():
    assert parse_params({}).model.pose_channels == 10
    assert parse_params({"manifest": {"pose_window": 1}}).model.pose_channels == 2
    assert parse_params({"manifest": {"pose_window": 3}, "model": {"pose_channels": 6}}).model.pose_channels == 6
    with pytest.raises(ConfigError, match=r"model\.pose_channels is 10 but manifest\.pose_window 1 gives 2"):
        parse_params({"manifest": {"pose_window": 1}, "model": {"pose_channels": 10}})


def test_a_one_pose_model_finetunes_and_renders(tmp_path):
    manifest = write_workspace(tmp_path, window=1)
    item = PairDataset(manifest, tmp_path, H, W)[0]
    assert item["poses"].shape == (2, H, W)  # u, v of the target frame only

    cfg = SubjectConfig(unet=TrainConfig(max_steps=1, batch_size=2, checkpoint_every=1), decoder_steps=0)
    out = tmp_path / "models" / "subjects" / "syn_0"
    summary = finetune_subject(cfg, tmp_path / "pretrained", manifest, "syn_0", tmp_path, out, size=(H, W))
    assert summary["unet_steps"] == 1 and np.isfinite(summary["unet_loss_after"])

    pipe = load_pipeline(out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.pose_channels == 2 and pipe.unet.config.in_channels == 4 + 2
    iuv = np.load(tmp_path / "densepose" / "syn_0.npz")["iuv"]
    photo = np.asarray(Image.open(tmp_path / "frames/syn_0/00000.png").convert("RGB"))
    render = RenderConfig(num_inference_steps=2, frame_batch_size=4)
    meta = render_sequence(pipe, photo, iuv, render, tmp_path / "render", window=1, frame_ids=[1, 2, 3])
    assert meta["rendered"] == 3 and sorted(p.name for p in (tmp_path / "render/frames").glob("*.png")) == [
        "00001.png",
        "00002.png",
        "00003.png",
    ]
    # A five-frame pose stack on the one-pose model is refused by name, not by a conv shape error.
    with pytest.raises(ValueError, match=r"expected \(N, 2, 16, 16\)"):
        render_sequence(pipe, photo, iuv, render, tmp_path / "render5", window=5, frame_ids=[1])
