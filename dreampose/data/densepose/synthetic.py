"""Ground-truth IUV from the synthetic generator, brought to the frames' geometry.

The generator writes ``data/raw/iuv/<split>/<video>.npz`` (key ``iuv``, one entry per *source* frame at
the synthetic size). The frames stage picks ``source_frame``s and resizes + center-crops them; this backend
applies the same selection and the same geometry (nearest-neighbour, so part indices stay integers)
so the IUV aligns pixel-exactly with the JPEG frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dreampose.data.densepose.base import FrameResult
from dreampose.data.densepose.iuv import iuv_bbox
from dreampose.io import load_iuv


class SyntheticBackend:
    """Reads the generator's IUV; ``score`` is 1 where the body is visible, the box is its tight bounds."""

    name = "synthetic"
    needs_pixels = False

    def __init__(self, raw_dir: Path, height: int, width: int):
        self.iuv_dir = Path(raw_dir) / "iuv"
        self.height, self.width = height, width
        self._cache: tuple[str, np.ndarray] | None = None  # one video at a time: the stage goes video by video

    def _video(self, split: str, video: str) -> np.ndarray:
        key = f"{split}/{video}"
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, load_iuv(self.iuv_dir / split / f"{video}.npz"))
        return self._cache[1]

    def _fit(self, iuv: np.ndarray) -> np.ndarray:
        if iuv.shape[:2] == (self.height, self.width):
            return iuv
        from dreampose.data.frames import resize_center_crop

        return np.asarray(resize_center_crop(iuv, self.height, self.width, nearest=True), dtype=np.uint8)

    def predict(self, frames: np.ndarray, rows: pd.DataFrame) -> list[FrameResult]:
        out = []
        for row in rows.itertuples(index=False):
            seq = self._video(row.split, row.video)
            src = int(row.source_frame)
            if not 0 <= src < len(seq):
                raise ValueError(
                    f"{self.iuv_dir / row.split / row.video}.npz: source frame {src} out of range "
                    f"(archive holds {len(seq)} frames)"
                )
            iuv = self._fit(seq[src])
            box = iuv_bbox(iuv)
            out.append(FrameResult.empty(self.height, self.width) if box is None else FrameResult(iuv, True, 1.0, box))
        return out
