"""A torch Dataset over a pair manifest: input image, target image and the target's 5-frame pose window.

The optional random crop (subject finetuning) is applied with one crop box to the target image *and* its
poses (IUV resized nearest-neighbour before ``uv_to_model``), so pose and pixels stay aligned; the input
image is the conditioning photo and is left whole. Crops are a pure function of ``(seed, key, index, draw)``
where ``key`` is set by the training loop per micro-batch (:meth:`PairDataset.set_augment_key`), so a resumed
run draws exactly the crops an uninterrupted run draws. Without a key, every call draws fresh crops.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from dreampose.data.densepose.iuv import pose_window, uv_to_model
from dreampose.data.densepose.synthetic import load_iuv_npz

MANIFEST_COLUMNS = ("subject_id", "input_path", "target_path", "densepose_path", "pose_frames")


def load_image(path: Path, height: int, width: int) -> torch.Tensor:
    """An RGB image file -> float32 ``(3, height, width)`` in [-1, 1] (bilinear resize if the size differs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image listed in the manifest does not exist")
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (width, height):
            im = im.resize((width, height), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0


def crop_box(
    rng: np.random.Generator, height: int, width: int, scale: tuple[float, float]
) -> tuple[int, int, int, int]:
    """A random ``(top, left, h, w)`` crop covering ``s`` of each side, ``s ~ U(scale)``, aspect kept."""
    lo, hi = scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"crop scale range must satisfy 0 < lo <= hi <= 1, got {scale}")
    s = rng.uniform(lo, hi)
    h, w = max(round(height * s), 1), max(round(width * s), 1)
    top = int(rng.integers(0, height - h + 1))
    left = int(rng.integers(0, width - w + 1))
    return top, left, h, w


def crop_resize(x: torch.Tensor, box: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    """Crop ``(..., C, H, W)`` to ``box`` and resize back to ``(H, W)``; ``mode`` 'bilinear' or 'nearest'."""
    top, left, h, w = box
    size = x.shape[-2:]
    lead = x.shape[:-3]
    patch = x[..., top : top + h, left : left + w].reshape(-1, *x.shape[-3:-2], h, w)
    kw = {"align_corners": False, "antialias": True} if mode == "bilinear" else {}
    out = F.interpolate(patch.float(), size=tuple(size), mode=mode, **kw)
    return out.reshape(*lead, *out.shape[-3:])


class PairDataset(Dataset):
    """Items: ``input_pixels``, ``target_pixels`` float32 ``(3, H, W)`` in [-1, 1]; ``poses`` float32
    ``(2 * window, H, W)`` via ``uv_to_model``; ``subject_id``. DensePose archives are cached per video.
    """

    def __init__(
        self,
        manifest_path: str | Path,
        root: str | Path,
        height: int,
        width: int,
        augment: tuple[float, float] | None = None,
        seed: int = 0,
    ):
        path = Path(manifest_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no manifest (run `dreampose manifest` first)")
        self.rows = pd.read_parquet(path)
        missing = [c for c in MANIFEST_COLUMNS if c not in self.rows.columns]
        if missing:
            raise ValueError(f"{path}: manifest lacks columns {missing}")
        if self.rows.empty:
            raise ValueError(f"{path}: manifest has no rows")
        self.root = Path(root)
        self.height, self.width = height, width
        self.augment = augment
        self.seed = seed
        self._cache: dict[str, np.ndarray] = {}
        self._key: int | None = None
        self._draws: dict[int, int] = {}
        self._calls = 0

    def __len__(self) -> int:
        return len(self.rows)

    def _iuv(self, rel: str) -> np.ndarray:
        if rel not in self._cache:
            self._cache[rel] = load_iuv_npz(self.root / rel)
        return self._cache[rel]

    def set_augment_key(self, key: int) -> None:
        """Key the crops of the following draws (the loop passes one per micro-batch; resume sets it again)."""
        if key < 0:
            raise ValueError(f"augment key must be >= 0, got {key}")
        self._key = int(key)
        self._draws = {}

    def _rng(self, index: int) -> np.random.Generator:
        worker = info.id if (info := get_worker_info()) else 0
        if self._key is None:
            # Unkeyed use (e.g. a plain DataLoader): fresh crops on every call, reproducible per instance.
            self._calls += 1
            return np.random.default_rng([self.seed, index, self._calls, worker])
        # The draw count per index under the current key tells apart repeats of one item in a batch.
        draw = self._draws.get(index, 0)
        self._draws[index] = draw + 1
        return np.random.default_rng([self.seed, self._key, index, draw, worker])

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows.iloc[index]
        iuv = self._iuv(row["densepose_path"])
        frames = [int(f) for f in row["pose_frames"]]
        if max(frames) >= len(iuv):
            raise ValueError(f"{row['densepose_path']}: pose frame {max(frames)} beyond its {len(iuv)} frames")
        pose_iuv = torch.from_numpy(iuv[frames]).permute(0, 3, 1, 2)  # (5, 3, h, w) uint8
        if pose_iuv.shape[-2:] != (self.height, self.width):
            pose_iuv = F.interpolate(pose_iuv.float(), size=(self.height, self.width), mode="nearest").to(torch.uint8)
        target = load_image(self.root / row["target_path"], self.height, self.width)
        if self.augment is not None:
            box = crop_box(self._rng(index), self.height, self.width, self.augment)
            target = crop_resize(target, box, "bilinear")
            pose_iuv = crop_resize(pose_iuv, box, "nearest").round().to(torch.uint8)
        poses = uv_to_model(pose_iuv.permute(0, 2, 3, 1)).flatten(0, 1)
        return {
            "input_pixels": load_image(self.root / row["input_path"], self.height, self.width),
            "target_pixels": target.clamp(-1, 1),
            "poses": poses,
            "subject_id": str(row["subject_id"]),
        }


def load_pose_sequence(densepose_npz: str | Path, frames: Sequence[int], window: int = 5) -> torch.Tensor:
    """The pose windows of ``frames`` from one DensePose archive -> float32 ``(N, 2 * window, H, W)``."""
    iuv = load_iuv_npz(Path(densepose_npz))
    if len(frames) == 0:
        raise ValueError(f"{densepose_npz}: no frames requested")
    return torch.stack([pose_window(iuv, int(t), window) for t in frames])
