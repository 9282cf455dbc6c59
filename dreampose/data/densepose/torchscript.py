"""DensePose R-50-FPN as a TorchScript export (torch + torchvision only, no detectron2).

Contract of the public export (github.com/dajes/DensePose-TorchScript, ``export.py``): ``module(image)``
takes one uint8 ``(H, W, 3)`` **BGR** tensor and returns a dict with ``pred_boxes`` ``(N, 4)`` xyxy in
input pixels, ``scores`` ``(N,)``, and per box ``pred_densepose_coarse_segm`` ``(N, 2, S, S)``,
``pred_densepose_fine_segm`` / ``pred_densepose_u`` / ``pred_densepose_v`` ``(N, 25, S, S)``.
An export that also has a ``forward_batch(List[Tensor]) -> List[Dict]`` method is called once per batch.
The export needs ``import torchvision`` first (its NMS/RoIAlign ops are registered by torchvision).
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
        self.min_score = min_score
        self.batched = hasattr(self.module, "forward_batch")

    @torch.no_grad()
    def predict(self, frames: np.ndarray, rows: pd.DataFrame | None = None) -> list[FrameResult]:
        frames = check_frames(frames)
        _, h, w, _ = frames.shape
        bgr = torch.from_numpy(np.ascontiguousarray(frames[..., ::-1])).to(self.device)
        # One call per batch when the export offers it; the public export takes one image per call.
        outs = self.module.forward_batch(list(bgr.unbind(0))) if self.batched else [self.module(img) for img in bgr]
        return [results_from_outputs(o, h, w, self.min_score) for o in outs]
