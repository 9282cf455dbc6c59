"""The ``finetune_subject`` DVC stage: dvc.yaml runs ``bin/python -m dreampose.stages.finetune_subject --subject
ID``, which calls ``run``.

A code dep of the ``finetune_subject`` stage only (docs/architecture.md, "Code deps"): editing it makes only that
stage stale (downstream stages re-run only if its outputs change). ``main``'s argument parsing is
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


def run(params: Params, root: Path, subject: str) -> dict[str, Any]:
    """``models/subjects/<id>``: phase 1 UNet + adapter (aligned crops), phase 2 VAE decoder, on one subject."""
    ws = Workspace(root)
    from dreampose.models.sizes import check_saved_model_frame_size
    from dreampose.training import finetune

    check_saved_model_frame_size(ws.base, params.frames.height, params.frames.width)
    out = ws.subject_model(subject)
    inputs = {"base": ws.base, "subject_manifest": ws.subject_manifest}
    cfg = params.train_subject
    with tracking.stage_run(
        "finetune_subject", cfg.model_dump(), params.tracking.experiment, inputs=inputs, tags={"subject": subject}
    ) as r:
        summary = finetune.finetune_subject(
            cfg,
            ws.base,
            ws.subject_manifest,
            subject,
            root,
            out,
            size=(params.frames.height, params.frames.width),
            logger=tracking.MlflowLogger() if r is not None else None,
            device=resolve_runtime(params.runtime).device,
        )
        tracking.log_summary(summary, "train/")
        if r is not None:
            import mlflow

            mlflow.log_artifacts(str(out), artifact_path="model")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``[--params FILE] [--root DIR] --subject ID [-v]`` (``dreampose.entry``)."""
    from dreampose.entry import stage_main

    return stage_main("finetune_subject", run, argv)


if __name__ == "__main__":
    sys.exit(main())
