"""Flow test helpers (the private PREFECT_HOME and the session's Prefect server live in tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def catalog_workspace(tmp_path_factory) -> Path:
    """One tiny catalog workspace for the session (building the base model costs seconds)."""
    return make_catalog_workspace(tmp_path_factory.mktemp("catalog") / "ws")


def make_dvc_repo(path: Path, dvc_yaml: str, params_yaml: str) -> Path:
    """A git + DVC repository holding only ``dvc.yaml`` and ``params.yaml``."""
    path.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=path, check=True, env=env)
    (path / "dvc.yaml").write_text(dvc_yaml)
    (path / "params.yaml").write_text(params_yaml)
    return path


TINY_PARAMS = """\
frames: {height: 64, width: 48}
model:
  source: tiny
  tiny: {vae_channels: [8, 16], unet_channels: [16, 32], cross_attention_dim: 16, clip_hidden: 16,
         clip_layers: 1, clip_patch: 8, vae_pretrain_steps: 0}
train_subject:
  unet: {max_steps: 2, batch_size: 1, lr: 0.001, checkpoint_every: 100, log_every: 1}
  decoder_steps: 1
  decoder_batch_size: 1
render: {scheduler: ddim, num_inference_steps: 2, frame_batch_size: 4}
tracking: {experiment: catalog-test, registered_model: catalog-test-model}
"""


def person_photo(path: Path, colour=(30, 60, 200)) -> str:
    """A 160x120 photo of a coloured figure on grey (what validation accepts as a person)."""
    import numpy as np
    from PIL import Image

    img = np.full((160, 120, 3), 200, np.uint8)
    img[20:55, 45:75] = (220, 170, 140)
    img[55:, 30:90] = colour
    Image.fromarray(img).save(path)
    return str(path)


def write_iuv_dir(path: Path, frames: int = 6, height: int = 64, width: int = 48) -> Path:
    """A pose sequence as one IUV archive: a body rectangle sliding right, U/V gradients inside it."""
    import numpy as np

    iuv = np.zeros((frames, height, width, 3), np.uint8)
    for t in range(frames):
        x0 = 10 + t * 2
        iuv[t, 12:60, x0 : x0 + 16, 0] = 2
        iuv[t, 12:60, x0 : x0 + 16, 1] = np.linspace(0, 255, 16, dtype=np.uint8)[None, :]
        iuv[t, 12:60, x0 : x0 + 16, 2] = np.linspace(0, 255, 48, dtype=np.uint8)[:, None]
    path.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path / "seq.npz", iuv=iuv)
    return path


def make_catalog_workspace(ws: Path) -> Path:
    """A workspace with params.yaml + dvc.yaml, a tiny seeded base model in models/base, poses and a photo."""
    from dreampose.config import load_params
    from dreampose.models.builders import build_tiny_components, save_pipeline_atomic
    from dreampose.models.pipeline import DreamPosePipeline

    ws.mkdir(parents=True, exist_ok=True)
    (ws / "params.yaml").write_text(TINY_PARAMS)
    (ws / "dvc.yaml").write_text("stages: {}\n")
    params = load_params(ws / "params.yaml")
    comps = build_tiny_components(params.model.tiny, params.frames.height, params.frames.width, seed=0)
    save_pipeline_atomic(DreamPosePipeline(**comps), ws / "models" / "base")
    write_iuv_dir(ws / "poses")
    person_photo(ws / "photo.png")
    write_truth_dir(ws / "truth")
    return ws


def write_truth_dir(path: Path, frames: int = 6) -> Path:
    """Ground-truth frames for ``write_iuv_dir``'s poses: the figure sliding right, one PNG per pose frame."""
    import numpy as np
    from PIL import Image

    path.mkdir(parents=True, exist_ok=True)
    for t in range(frames):
        img = np.full((64, 48, 3), 200, np.uint8)
        x0 = 10 + t * 2
        img[4:12, x0 + 4 : x0 + 12] = (220, 170, 140)
        img[12:60, x0 : x0 + 16] = (30, 60, 200)
        Image.fromarray(img).save(path / f"{t:03d}.png")
    return path
