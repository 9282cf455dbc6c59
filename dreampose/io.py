"""File I/O shared by the stages: images, JSON and DensePose IUV archives, each written atomically."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dreampose.fsutil import atomic_write


def png_complete(path: Path, size: tuple[int, int] | None = None) -> bool:
    """True when ``path`` decodes fully as an image (of ``size`` = (H, W), when given)."""
    try:
        with Image.open(path) as im:
            im.load()
            return size is None or (im.height, im.width) == tuple(size)
    except (OSError, ValueError, SyntaxError):
        return False


def read_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 RGB ``(H, W, 3)``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such image")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def write_png(image: np.ndarray, path: Path) -> Path:
    return atomic_write(Path(path), lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


def write_json(data: dict[str, Any], path: Path) -> Path:
    return atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str)))


def load_iuv_npz(path: Path) -> np.ndarray:
    """``iuv`` uint8 ``(T, H, W, 3)`` from an npz; a clear error for a missing, corrupt or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no IUV archive (run the download/densepose stage that writes it)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "iuv" not in z.files:
                raise ValueError(f"{path}: IUV archive has no 'iuv' array (keys: {z.files})")
            iuv = z["iuv"]
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ValueError(f"{path}: corrupt IUV archive ({err})") from None
    if iuv.dtype != np.uint8 or iuv.ndim != 4 or iuv.shape[-1] != 3:
        raise ValueError(f"{path}: 'iuv' must be uint8 (T, H, W, 3), got {iuv.dtype} {iuv.shape}")
    return iuv
