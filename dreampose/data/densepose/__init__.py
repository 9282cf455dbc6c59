"""DensePose: pluggable backends (synthetic ground truth, TorchScript, detectron2) and pure IUV code."""

from dreampose.data.densepose.base import DensePoseBackend, FrameResult
from dreampose.data.densepose.run import make_backend, run_densepose

__all__ = ["DensePoseBackend", "FrameResult", "make_backend", "run_densepose"]
