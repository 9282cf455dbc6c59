"""A torch Dataset over a pair manifest: input image, target image and the target's 5-frame pose window.

The optional random crop (subject finetuning) is applied with one crop box to the target image *and* its
poses (IUV resized nearest-neighbour before ``uv_to_model``), so pose and pixels stay aligned; the input
image is the conditioning photo and is left whole. Crops are a pure function of ``(seed, key, index, draw)``
where ``key`` is set by the training loop per micro-batch (:meth:`PairDataset.set_augment_key`), so a resumed
run draws exactly the crops an uninterrupted run draws. Without a key, every call draws fresh crops.

Host memory is bounded: a paper-size video's IUV (640x512, ~360 frames) is ~350 MB decoded, so keeping every
video's array (the old per-video dict) grew to ~150 GB over the UBC train split. :class:`IUVFrames` keeps whole
arrays only for small videos, in an LRU bounded by ``cache_bytes``; of a larger video only the requested frames
are inflated, through the archive's frame index (:mod:`dreampose.io`), so an item
at frame 359 costs what one at frame 0 does. Either way the frames are bit-identical to ``load_iuv(path)[frames]``.
Each DataLoader worker holds its own copy, so the bound is per worker (training feeds it through
:mod:`dreampose.training.data`, whose batches carry the augmentation keys to :meth:`PairDataset.keyed_item`).

Training items travel compact (:meth:`PairDataset.compact_item`): the pose window as its uint8 IUV and the
pixels as uint8 where no crop or colour change made them non-integer, ~7 MB instead of ~21 MB of float32 per
640x512 item through the workers' shared memory; :func:`expand_batch` turns a batch of them, on the training
device, into exactly the float batch of ``dataset[i]`` (the same 256-entry tables on every device).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from dreampose.data.densepose.iuv import pose_window, uv_to_model
from dreampose.io import IUVArchive, iuv_shape, load_iuv, read_iuv_frames

__all__ = [
    "IUVFrames", "PairDataset", "expand_batch", "iuv_shape", "load_pose_sequence", "pixels_to_model",
    "read_iuv_frames",
]  # fmt: skip

MANIFEST_COLUMNS = ("subject_id", "input_path", "target_path", "densepose_path", "pose_frames")
CACHE_BYTES = 256 << 20  # LRU of whole decoded IUV arrays, per dataset instance (so per DataLoader worker)
CACHE_ENTRY_FRACTION = 16  # a video is cached whole only if it takes at most 1/16 of the budget (16 MiB)


class IUVFrames:
    """Frames of IUV archives with bounded memory: an LRU of whole decoded arrays holding at most ``max_bytes``,
    for videos of at most ``max_bytes // CACHE_ENTRY_FRACTION``; larger videos are read window by window
    through their frame index (:class:`~dreampose.io.IUVArchive`, whose layout is kept: a few KB a video)."""

    def __init__(self, max_bytes: int = CACHE_BYTES):
        if max_bytes < 0:
            raise ValueError(f"IUV cache budget must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.max_entry_bytes = self.max_bytes // CACHE_ENTRY_FRACTION
        self._arrays: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._archives: dict[Path, IUVArchive] = {}
        self.cached_bytes = 0

    def __len__(self) -> int:
        return len(self._arrays)

    def archive(self, path: Path) -> IUVArchive:
        if path not in self._archives:
            self._archives[path] = IUVArchive.open(path)
        return self._archives[path]

    def shape(self, path: Path) -> tuple[int, ...]:
        return self.archive(path).shape

    def frames(self, path: str | Path, frames: Sequence[int]) -> np.ndarray:
        """``load_iuv(path)[frames]`` (uint8 ``(len(frames), H, W, 3)``), bit for bit."""
        path = Path(path)
        if path in self._arrays:
            self._arrays.move_to_end(path)
            arr = self._arrays[path]
            return arr[self.archive(path).check_frames(frames)]
        archive = self.archive(path)
        if int(np.prod(archive.shape)) > self.max_entry_bytes:
            return archive.read(frames)
        arr = load_iuv(path)
        archive.check_frames(frames)
        self._arrays[path] = arr
        self.cached_bytes += arr.nbytes
        while self.cached_bytes > self.max_bytes:
            _, old = self._arrays.popitem(last=False)
            self.cached_bytes -= old.nbytes
        return arr[[int(t) for t in frames]]


def read_image(path: Path, height: int, width: int) -> torch.Tensor:
    """An RGB image file -> uint8 ``(3, height, width)`` (bilinear resize, in uint8, if the size differs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image listed in the manifest does not exist")
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (width, height):
            im = im.resize((width, height), Image.BILINEAR)
        arr = np.asarray(im)
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(arr, -1, 0)))


def load_image(path: Path, height: int, width: int) -> torch.Tensor:
    """An RGB image file -> float32 ``(3, height, width)`` in [-1, 1] (bilinear resize if the size differs)."""
    return pixels_to_model(read_image(path, height, width))


def pixels_to_model(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (any shape, any device) -> float32 in [-1, 1]: ``float(x) / 127.5 - 1`` as the CPU computes
    it, through a 256-entry table (one gather; on a GPU too, where a division may round differently)."""
    if pixels.dtype != torch.uint8:
        raise ValueError(f"pixels must be uint8, got {pixels.dtype}")
    if pixels.device.type == "cpu":
        return torch.from_numpy(np.take(_pixel_table(), pixels.numpy()))
    return _pixel_gather(pixels)


def _pixel_gather(pixels: torch.Tensor) -> torch.Tensor:
    """:func:`pixels_to_model` through torch ops on ``pixels``' device (the table gathered there)."""
    table = torch.from_numpy(_pixel_table()).to(pixels.device)
    return table.index_select(0, pixels.reshape(-1).int()).view(pixels.shape)


_PIXEL_TABLE: np.ndarray | None = None


def _pixel_table() -> np.ndarray:
    global _PIXEL_TABLE
    if _PIXEL_TABLE is None:
        _PIXEL_TABLE = (torch.arange(256, dtype=torch.uint8).float() / 127.5 - 1.0).numpy().copy()
    return _PIXEL_TABLE


PIXEL_KEYS = ("input_pixels", "target_pixels")


def expand_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """A collated batch of compact items (:meth:`PairDataset.compact_item`), on any device -> the batch the float
    items (``dataset[i]``) collate to, value for value: uint8 ``*_pixels`` through :func:`pixels_to_model`, the
    uint8 IUV window ``pose_iuv`` ``(..., window, H, W, 3)`` to ``poses`` ``(..., 2 * window, H, W)`` through
    ``uv_to_model``. Other entries (and batches of float items) pass through unchanged."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key == "pose_iuv":
            out["poses"] = uv_to_model(value).flatten(-4, -3)
        elif key in PIXEL_KEYS and isinstance(value, torch.Tensor) and value.dtype == torch.uint8:
            out[key] = pixels_to_model(value)
        else:
            out[key] = value
    return out


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
    ``(2 * window, H, W)`` via ``uv_to_model``; ``subject_id``. DensePose frames come through a bounded
    :class:`IUVFrames` (``cache_bytes`` of whole small videos; large videos are read window by window).
    Training ships :meth:`compact_item` (uint8) and converts on its device with :func:`expand_batch`.
    """

    def __init__(
        self,
        manifest_path: str | Path,
        root: str | Path,
        height: int,
        width: int,
        augment: tuple[float, float] | None = None,
        seed: int = 0,
        cache_bytes: int = CACHE_BYTES,
        color_augment: float = 0.0,
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
        if not 0.0 <= color_augment <= 1.0:
            raise ValueError(f"color_augment is a probability, got {color_augment}")
        self.color_augment = float(color_augment)
        self.seed = seed
        self.iuv = IUVFrames(cache_bytes)
        self._key: int | None = None
        self._draws: dict[int, int] = {}
        self._calls = 0

    def __len__(self) -> int:
        return len(self.rows)

    def pose_frames(self, rel: str, frames: Sequence[int]) -> np.ndarray:
        """uint8 ``(len(frames), h, w, 3)`` IUV of the archive at ``root / rel``."""
        return self.iuv.frames(self.root / rel, frames)

    def set_augment_key(self, key: int) -> None:
        """Key the crops of the following draws (the loop passes one per micro-batch; resume sets it again)."""
        if key < 0:
            raise ValueError(f"augment key must be >= 0, got {key}")
        self._key = int(key)
        self._draws = {}

    def _rng(self, index: int) -> np.random.Generator:
        if self._key is None:
            # Unkeyed use (e.g. a plain DataLoader): fresh crops on every call, reproducible per instance.
            worker = info.id if (info := get_worker_info()) else 0
            self._calls += 1
            return np.random.default_rng([self.seed, index, self._calls, worker])
        # The draw count per index under the current key tells apart repeats of one item in a batch.
        draw = self._draws.get(index, 0)
        self._draws[index] = draw + 1
        return self._keyed_rng(index, self._key, draw)

    def _keyed_rng(self, index: int, key: int, draw: int) -> np.random.Generator:
        # The trailing 0 keeps the draws of runs made before DataLoader workers were used (always worker 0).
        return np.random.default_rng([self.seed, key, index, draw, 0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._item(index, lambda: self._rng(index))

    def keyed_item(self, index: int, key: int, draw: int = 0) -> dict[str, Any]:
        """Item ``index`` augmented with key ``key`` (its ``draw``-th repeat in one batch): a pure function of
        ``(seed, key, index, draw)``, whichever process draws it, so DataLoader workers and a resumed run draw
        what an uninterrupted single-process run draws. Equal to ``set_augment_key(key)`` then ``draw + 1``
        reads of ``self[index]``."""
        if key < 0 or draw < 0:
            raise ValueError(f"augment key and draw must be >= 0, got {key}, {draw}")
        return self._item(index, lambda: self._keyed_rng(index, int(key), int(draw)))

    def compact_item(self, index: int, key: int, draw: int = 0) -> dict[str, Any]:
        """:meth:`keyed_item` in its compact form, as DataLoader workers ship it (a third of the bytes at paper
        size): ``pose_iuv`` the uint8 IUV window ``(window, H, W, 3)`` instead of ``poses``; the pixels uint8
        ``(3, H, W)`` where nothing made them non-integer (no crop for the target, no colour augmentation for
        either), else float32 as in ``keyed_item``. :func:`expand_batch` of it (or of a batch of them, on the
        training device) equals ``keyed_item`` (collated) exactly."""
        if key < 0 or draw < 0:
            raise ValueError(f"augment key and draw must be >= 0, got {key}, {draw}")
        return self._item(index, lambda: self._keyed_rng(index, int(key), int(draw)), compact=True)

    def _item(self, index: int, make_rng: Callable[[], np.random.Generator], compact: bool = False) -> dict[str, Any]:
        row = self.rows.iloc[index]
        frames = [int(f) for f in row["pose_frames"]]
        pose_iuv = torch.from_numpy(self.pose_frames(row["densepose_path"], frames)).permute(0, 3, 1, 2)  # (5,3,h,w)
        if pose_iuv.shape[-2:] != (self.height, self.width):
            pose_iuv = F.interpolate(pose_iuv.float(), size=(self.height, self.width), mode="nearest").to(torch.uint8)
        target = read_image(self.root / row["target_path"], self.height, self.width)
        image = read_image(self.root / row["input_path"], self.height, self.width)
        # One dtype per key for the whole dataset (items of a batch collate together): float where any item may
        # be cropped or recoloured.
        if not compact or self.augment is not None or self.color_augment > 0:
            target = pixels_to_model(target)
        if not compact or self.color_augment > 0:
            image = pixels_to_model(image)
        rng = make_rng() if self.augment is not None or self.color_augment > 0 else None
        if self.augment is not None:
            box = crop_box(rng, self.height, self.width, self.augment)
            target = crop_resize(target, box, "bilinear")
            pose_iuv = crop_resize(pose_iuv, box, "nearest").round().to(torch.uint8)
        if self.color_augment > 0 and rng.random() < self.color_augment:
            perm, gain = color_change(rng)
            image, target = recolor(image, perm, gain), recolor(target, perm, gain)
        if self.augment is not None:
            target = target.clamp(-1, 1)  # antialiased resizing may overshoot; otherwise already in [-1, 1]
        item: dict[str, Any] = {"input_pixels": image, "target_pixels": target}
        if compact:
            item["pose_iuv"] = pose_iuv.permute(0, 2, 3, 1).contiguous()  # (5,h,w,3): as read, no copy if uncropped
        else:
            item["poses"] = uv_to_model(pose_iuv.permute(0, 2, 3, 1)).flatten(0, 1)
        item["subject_id"] = str(row["subject_id"])
        return item


def color_change(
    rng: np.random.Generator, gain_range: tuple[float, float] = (0.6, 1.4)
) -> tuple[list[int], list[float]]:
    """One random colour change: a permutation of the RGB channels and a gain per channel."""
    perm = [int(c) for c in rng.permutation(3)]
    gain = [float(g) for g in rng.uniform(*gain_range, size=3)]
    return perm, gain


def recolor(pixels: torch.Tensor, perm: Sequence[int], gain: Sequence[float]) -> torch.Tensor:
    """``(3, H, W)`` in [-1, 1] -> its channels permuted by ``perm`` and scaled by ``gain`` in [0, 1] space.

    Applied with one ``(perm, gain)`` to a pair's input photo and its target, it changes the garment's
    colours without changing which photo goes with which target: the base model cannot learn a subject's
    colours from its body shape (the synthetic subjects' proportions identify them), only from the photo.
    """
    if pixels.ndim != 3 or pixels.shape[0] != 3:
        raise ValueError(f"pixels must be (3, H, W), got {tuple(pixels.shape)}")
    unit = (pixels[list(perm)] + 1.0) / 2.0
    unit = unit * torch.tensor(gain, dtype=pixels.dtype).view(3, 1, 1)
    return unit.clamp(0.0, 1.0) * 2.0 - 1.0


def load_pose_sequence(densepose_npz: str | Path, frames: Sequence[int], window: int = 5) -> torch.Tensor:
    """The pose windows of ``frames`` from one DensePose archive -> float32 ``(N, 2 * window, H, W)``."""
    iuv = load_iuv(Path(densepose_npz))
    if len(frames) == 0:
        raise ValueError(f"{densepose_npz}: no frames requested")
    return torch.stack([pose_window(iuv, int(t), window) for t in frames])
