"""The ``base_model`` DVC stage: dvc.yaml runs ``bin/python -m dreampose.stages.base_model``, which calls ``run``.

A code dep of the ``base_model`` stage only (docs/architecture.md, "Code deps"): editing it makes only that stage
stale (downstream stages re-run only if its outputs change). ``main``'s argument parsing is
``dreampose.entry``'s, an observer, not a dep.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
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


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``[--params FILE] [--root DIR] [-v]`` (``dreampose.entry``)."""
    from dreampose.entry import stage_main

    return stage_main("base_model", run, argv)


if __name__ == "__main__":
    sys.exit(main())
