"""Tiny seeded components for the training tests: a real DreamPosePipeline with 16x16 frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from dreampose.config import TinyModelConfig

H, W = 16, 16
POSE_CHANNELS = 10
TINY = TinyModelConfig(
    vae_channels=(8, 16), unet_channels=(16, 32), cross_attention_dim=16, clip_hidden=16, clip_layers=1, clip_patch=8
)


def tiny_pipeline(seed: int = 0, prediction_type: str = "v_prediction", pose_channels: int = POSE_CHANNELS):
    from dreampose.models.builders import build_tiny_components
    from dreampose.models.pipeline import DreamPosePipeline

    return DreamPosePipeline(**build_tiny_components(TINY, H, W, prediction_type, seed, pose_channels))


class TinyPairs(Dataset):
    """Pairs whose target colour is the input's colour and whose pose marks a square: learnable fast."""

    def __init__(self, n: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.colors = torch.rand(n, 3, 1, 1, generator=g) * 2 - 1
        self.offsets = torch.randint(0, H // 2, (n, 2), generator=g)

    def __len__(self) -> int:
        return len(self.colors)

    def __getitem__(self, i: int) -> dict:
        y, x = self.offsets[i].tolist()
        mask = torch.zeros(1, H, W)
        mask[:, y : y + H // 2, x : x + W // 2] = 1
        target = torch.where(mask.bool(), self.colors[i].expand(3, H, W), torch.full((3, H, W), -1.0))
        return {
            "input_pixels": self.colors[i].expand(3, H, W).clone(),
            "target_pixels": target,
            "poses": mask.expand(POSE_CHANNELS, H, W).clone(),
            "subject_id": f"s{i % 2}",
        }


FRAMES = 6


def write_workspace(root: Path, window: int = 5) -> Path:
    """Two subjects, 6 frames each: a coloured square that moves with its IUV; pair manifests with ``window``
    pose frames per pair, and a base model in ``pretrained/`` with ``2 * window`` pose channels."""
    from dreampose.data.densepose.iuv import pose_window_indices

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
                    "pose_frames": pose_window_indices(int(t), FRAMES, window),
                }
            )
    (root / "manifests").mkdir()
    pd.DataFrame(rows).to_parquet(root / "manifests" / "pairs.parquet")
    tiny_pipeline(seed=0, pose_channels=2 * window).save_pretrained(root / "pretrained", safe_serialization=True)
    return root / "manifests" / "pairs.parquet"
