"""The backend protocol: a batch of frames in, one result per frame out."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from dreampose.runtime import resolve_device

__all__ = ["NO_BOX", "DensePoseBackend", "FrameResult", "check_frames", "resolve_device"]

NO_BOX = (math.nan, math.nan, math.nan, math.nan)


@dataclass(frozen=True)
class FrameResult:
    """One frame: uint8 IUV ``(H, W, 3)`` (zeros when nobody was found), the chosen detection's score and box."""

    iuv: np.ndarray
    person_found: bool
    score: float
    box: tuple[float, float, float, float]

    @classmethod
    def empty(cls, height: int, width: int) -> FrameResult:
        return cls(np.zeros((height, width, 3), np.uint8), False, 0.0, NO_BOX)


@runtime_checkable
class DensePoseBackend(Protocol):
    """``predict(frames uint8 (B, H, W, 3) RGB, rows) -> list[FrameResult]`` of length B.

    ``rows`` are the frames-index rows of the batch (``video``, ``split``, ``frame``, ``source_frame``);
    image backends ignore them, the synthetic backend reads its ground truth through them. Backends
    with ``needs_pixels = False`` receive ``frames`` of shape ``(B, 0, 0, 3)`` so JPEGs are not decoded for nothing.

    A backend may also split ``predict`` into ``infer(frames, rows) -> raw`` (the model) and
    ``results(raw) -> list[FrameResult]`` (turning its outputs into IUV); the densepose stage then runs the
    second part on another thread, so the model's thread only feeds the model.
    """

    name: str
    needs_pixels: bool

    def predict(self, frames: np.ndarray, rows: pd.DataFrame) -> list[FrameResult]: ...


def check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (B, H, W, 3), got {frames.dtype} {frames.shape}")
    return frames
