from __future__ import annotations

import numpy as np
import pytest
import torch

from dreampose.config import SubjectConfig, TrainConfig
from dreampose.training.finetune import finetune_subject
from dreampose.training.preview import sample_grid, tile, to_uint8
from tests.training.tiny import H, TinyPairs, W, tiny_pipeline, write_workspace


def test_to_uint8_and_tile():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 4).expand(3, 1, 4)
    assert to_uint8(x)[0, :, 0].tolist() == [0, 128, 255, 255]
    a, b = np.zeros((2, 3, 3), np.uint8), np.full((2, 3, 3), 9, np.uint8)
    grid = tile([[a, b], [b, a]])
    assert grid.shape == (4, 6, 3) and grid[0, 3, 0] == 9 and grid[2, 0, 0] == 9 and grid[3, 5, 0] == 0
    with pytest.raises(ValueError, match="empty"):
        tile([])


def test_sample_grid_is_reproducible_and_leaves_the_pipeline_as_it_was():
    pipe = tiny_pipeline(seed=0)
    scheduler = type(pipe.scheduler)
    pipe.unet.train()
    a = np.asarray(sample_grid(pipe, TinyPairs(4), [0, 1], num_inference_steps=2, seed=5))
    b = np.asarray(sample_grid(pipe, TinyPairs(4), [0, 1], num_inference_steps=2, seed=5))
    assert a.shape == (2 * H, 3 * W, 3) and np.array_equal(a, b)
    assert type(pipe.scheduler) is scheduler and pipe.unet.training


def test_subject_finetune_logs_sample_grids_to_mlflow(tmp_path):
    import mlflow

    write_workspace(tmp_path)
    cfg = SubjectConfig(
        unet=TrainConfig(max_steps=4, batch_size=2, lr=1e-3, checkpoint_every=10, sample_every=2), decoder_steps=0
    )
    with mlflow.start_run() as run:
        finetune_subject(
            cfg, tmp_path / "pretrained", tmp_path / "manifests/pairs.parquet", "syn_1", tmp_path,
            tmp_path / "out", size=(H, W),
        )  # fmt: skip
    paths = sorted(f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "samples"))
    assert paths == ["samples/subject_unet_step_000002.png", "samples/subject_unet_step_000004.png"]
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=paths[-1], dst_path=tmp_path)
    from PIL import Image

    with Image.open(local) as im:
        assert im.size == (3 * W, 2 * H)
