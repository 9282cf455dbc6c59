"""The ``base_model`` DVC stage: ``bin/dreampose base-model`` runs ``run``.

A code dep of the ``base_model`` stage only (docs/architecture.md, "Code deps"): editing it makes only that stage
stale (downstream stages re-run only if its outputs change).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dreampose import tracking
from dreampose.config import Params
from dreampose.layout import Workspace


def run(params: Params, root: Path) -> dict[str, Any]:
    """``models/pretrained``: the base DreamPosePipeline (tiny, VAE pre-trained on the frames; or SD v1.x)."""
    ws = Workspace(root)
    from dreampose.metrics.pixel import reconstruction_scores
    from dreampose.models.builders import build_base_model

    model_params = {**params.model.model_dump(), "seed": params.seed, "height": params.frames.height}
    model_params["width"] = params.frames.width
    inputs = {"frames": ws.frames} if params.model.source == "tiny" else {}
    with tracking.stage_run("base_model", model_params, params.tracking.experiment, inputs=inputs):
        summary = build_base_model(
            params.model,
            ws.frames,
            ws.pretrained,
            seed=params.seed,
            height=params.frames.height,
            width=params.frames.width,
            root=root,
            score=reconstruction_scores,
        )
        tracking.log_summary(summary)
    return summary
