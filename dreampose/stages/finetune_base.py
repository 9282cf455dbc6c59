"""The ``finetune_base`` DVC stage: dvc.yaml runs ``bin/python -m dreampose.stages.finetune_base``, which calls ``run``.

A code dep of the ``finetune_base`` stage only (docs/architecture.md, "Code deps"): editing it makes only that stage
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
from dreampose.runtime import resolve_runtime


def run(params: Params, root: Path) -> dict[str, Any]:
    """``models/base``: UNet + adapter finetuned on the training pairs (held-out loss before/after)."""
    ws = Workspace(root)
    from dreampose.models.sizes import check_saved_model_frame_size
    from dreampose.training import finetune

    check_saved_model_frame_size(ws.pretrained, params.frames.height, params.frames.width)
    inputs = {"pretrained": ws.pretrained, "train_manifest": ws.train_manifest}
    cfg = params.train_base
    with tracking.stage_run("finetune_base", cfg.model_dump(), params.tracking.experiment, inputs=inputs) as r:
        summary = finetune.finetune_base(
            cfg,
            ws.pretrained,
            ws.train_manifest,
            root,
            ws.base,
            heldout_manifest=ws.test_manifest,
            size=(params.frames.height, params.frames.width),
            logger=tracking.MlflowLogger() if r is not None else None,
            device=resolve_runtime(params.runtime).device,
        )
        tracking.log_summary(summary, "train/")
        if r is not None:
            import mlflow

            mlflow.set_tag("model_dir", str(ws.base.resolve()))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``[--params FILE] [--root DIR] [-v]`` (``dreampose.entry``)."""
    from dreampose.entry import stage_main

    return stage_main("finetune_base", run, argv)


if __name__ == "__main__":
    sys.exit(main())
