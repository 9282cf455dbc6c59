"""DensePose through detectron2 and its DensePose project (optional: neither is on PyPI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dreampose.data.densepose.base import FrameResult, check_frames, resolve_device
from dreampose.data.densepose.iuv import paste_chart, select_person

INSTALL_HINT = (
    "the detectron2 backend needs detectron2 and its DensePose project, which are not on PyPI: "
    "pip install 'git+https://github.com/facebookresearch/detectron2.git' "
    "'git+https://github.com/facebookresearch/detectron2.git#subdirectory=projects/DensePose' "
    "(see README 'DensePose backends'), or set densepose.backend to torchscript"
)


class Detectron2Backend:
    name = "detectron2"
    needs_pixels = True

    def __init__(
        self, config_file: str | Path, weights: str | Path, min_score: float = 0.5, device: str | torch.device = "auto"
    ):
        try:
            from densepose import add_densepose_config
            from detectron2.config import get_cfg
            from detectron2.engine import DefaultPredictor
        except ImportError as err:
            raise ValueError(f"{INSTALL_HINT} ({err})") from None
        for what, p in (("config", config_file), ("weights", weights)):
            if not Path(p).is_file():
                raise FileNotFoundError(f"{p}: no DensePose {what} file (densepose.detectron2_config / weights)")
        cfg = get_cfg()
        add_densepose_config(cfg)
        cfg.merge_from_file(str(config_file))
        cfg.MODEL.WEIGHTS = str(weights)
        self.device = resolve_device(device)
        cfg.MODEL.DEVICE = str(self.device)
        # Keep low-score detections: the person choice (select_person) applies min_score itself.
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
        cfg.freeze()
        self.predictor = DefaultPredictor(cfg)
        self.min_score = min_score

    @torch.no_grad()
    def predict(self, frames: np.ndarray, rows: pd.DataFrame | None = None) -> list[FrameResult]:
        frames = check_frames(frames)
        _, h, w, _ = frames.shape
        out = []
        for img in frames:
            inst = self.predictor(np.ascontiguousarray(img[..., ::-1]))["instances"]
            boxes, scores = inst.pred_boxes.tensor, inst.scores
            i = select_person(boxes, scores, self.min_score)
            if i is None or not inst.has("pred_densepose"):
                out.append(FrameResult.empty(h, w))
                continue
            dp = inst.pred_densepose
            box = tuple(float(b) for b in boxes[i].tolist())
            iuv = paste_chart(dp.coarse_segm[i], dp.fine_segm[i], dp.u[i], dp.v[i], box, h, w)
            out.append(FrameResult(iuv, bool(iuv[..., 0].any()), float(scores[i]), box))
        return out
