"""DensePose R-50-FPN as a TorchScript export (torch + torchvision only, no detectron2).

The public export (github.com/dajes/DensePose-TorchScript) scripts detectron2's ``DefaultPredictor``:
``module(image, bgr=True)`` takes one ``(H, W, 3)`` (or ``(3, H, W)``) **BGR** image with pixel values in
0..255, resizes it with bilinear ``F.interpolate`` *on the device and in the dtype the image comes in*,
then moves the resized image to the model's device and subtracts the model's pixel mean. It returns a dict
with ``pred_boxes`` ``(N, 4)`` xyxy in input pixels, ``scores`` ``(N,)``, and per box
``pred_densepose_coarse_segm`` ``(N, 2, S, S)``, ``pred_densepose_fine_segm`` / ``pred_densepose_u`` /
``pred_densepose_v`` ``(N, 25, S, S)``, all on the model's device in the model's dtype.

So what the image may be depends on where the model runs: CPU bilinear interpolation takes uint8, CUDA's
takes floating point only (uint8 raises ``"upsample_bilinear2d_out_frame" not implemented for 'Byte'``), and
an fp16 export's convolutions refuse a float32 image. The export's own runner keeps a uint8 image on the
CPU (the resize then runs on the CPU, per frame). This backend's contract instead, the same on every device:

- each image is a ``(H, W, 3)`` BGR tensor of 0..255 values **on the model's device, in the model's floating
  dtype** (float32, or float16 for an fp16 export on CUDA; an fp16 export on the CPU is cast to float32, as
  the export's runner does), so the resize runs on the device and nothing is resized on the host;
- a batch of frames goes to the device in one copy (pinned host memory on CUDA), and is converted to BGR and
  to the model's dtype there.

An export that also has a ``forward_batch(List[Tensor]) -> List[Dict]`` method is called once per batch,
with the same images. The export needs ``import torchvision`` first (its NMS/RoIAlign ops are registered by
torchvision). The rehearsal's stand-in (``tests/rehearsal/world.py``) refuses any other input, as CUDA would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dreampose.data.densepose.base import FrameResult, check_frames, resolve_device
from dreampose.data.densepose.iuv import paste_chart, select_person

HOW_TO_GET = (
    "export DensePose R-50-FPN with https://github.com/dajes/DensePose-TorchScript (export.py) "
    "and set densepose.weights in params.yaml; see README 'DensePose backends'"
)
KEYS = (
    "pred_boxes",
    "scores",
    "pred_densepose_coarse_segm",
    "pred_densepose_fine_segm",
    "pred_densepose_u",
    "pred_densepose_v",
)


def results_from_outputs(out: dict, height: int, width: int, min_score: float) -> FrameResult:
    """One image's detector outputs -> the chosen person's full-frame IUV (or an empty result)."""
    missing = [k for k in KEYS if k not in out]
    if missing:
        raise ValueError(f"DensePose outputs lack {missing} (got {sorted(out)})")
    i = select_person(out["pred_boxes"], out["scores"], min_score)
    if i is None:
        return FrameResult.empty(height, width)
    box = tuple(float(b) for b in out["pred_boxes"][i].tolist())
    iuv = paste_chart(
        out["pred_densepose_coarse_segm"][i],
        out["pred_densepose_fine_segm"][i],
        out["pred_densepose_u"][i],
        out["pred_densepose_v"][i],
        box,
        height,
        width,
    )
    return FrameResult(iuv, bool(iuv[..., 0].any()), float(out["scores"][i]), box)


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    """The floating dtype of a module's first floating parameter or buffer (float32 if it has none)."""
    for t in (*module.parameters(), *module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def input_dtype(model: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype images go in as: the model's own, except float32 for a reduced-precision export on the CPU
    (CPU half convolutions are missing or slow; the export's runner casts the model to float32 there)."""
    if not model.is_floating_point:
        raise ValueError(f"DensePose export has {model} weights; expected a floating dtype")
    return torch.float32 if device.type == "cpu" else model


class TorchScriptBackend:
    name = "torchscript"
    needs_pixels = True

    def __init__(self, weights: str | Path, min_score: float = 0.5, device: str | torch.device = "auto"):
        import torchvision  # noqa: F401  (registers torchvision::nms / roi_align used by the export)

        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no DensePose TorchScript file; {HOW_TO_GET}")
        self.device = resolve_device(device)
        try:
            self.module = torch.jit.load(str(path), map_location=self.device).eval()
        except RuntimeError as err:
            raise ValueError(f"{path}: not a loadable TorchScript module ({str(err).splitlines()[0]})") from None
        self.dtype = input_dtype(module_dtype(self.module), self.device)
        if module_dtype(self.module) != self.dtype:
            self.module = self.module.to(self.dtype)  # an fp16 export on the CPU runs in fp32 (the export's runner)
        self.min_score = min_score
        self.batched = hasattr(self.module, "forward_batch")

    def to_model_input(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 RGB ``(B, H, W, 3)`` -> BGR ``(B, H, W, 3)`` on the model's device in its dtype (the contract
        above): one host-to-device copy (from pinned memory on CUDA), channel flip and cast on the device."""
        x = torch.from_numpy(np.require(check_frames(frames), requirements=["C", "W"]))  # a copy only if read-only
        if self.device.type == "cuda":
            x = x.pin_memory()
        x = x.to(self.device, non_blocking=True)
        return x.flip(-1).to(self.dtype)

    @torch.no_grad()
    def infer(self, frames: np.ndarray, rows: pd.DataFrame | None = None) -> tuple[list[dict], int, int]:
        """The model's part of ``predict``: the export's raw outputs (on its device) and the frame size."""
        frames = check_frames(frames)
        _, h, w, _ = frames.shape
        bgr = self.to_model_input(frames)
        # One call per batch when the export offers it; the public export takes one image per call.
        outs = self.module.forward_batch(list(bgr.unbind(0))) if self.batched else [self.module(img) for img in bgr]
        return outs, h, w

    @torch.no_grad()
    def results(self, raw: tuple[list[dict], int, int]) -> list[FrameResult]:
        """The rest of ``predict``: each frame's chosen person pasted into a full-frame IUV."""
        outs, h, w = raw
        return [results_from_outputs(o, h, w, self.min_score) for o in outs]

    def predict(self, frames: np.ndarray, rows: pd.DataFrame | None = None) -> list[FrameResult]:
        return self.results(self.infer(frames, rows))
