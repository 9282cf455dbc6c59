"""The ``render`` DVC stage: dvc.yaml runs ``bin/python -m dreampose.stages.render --subject ID``, which calls ``run``.

A code dep of the ``render`` stage only (docs/architecture.md, "Code deps"): editing it makes only that stage
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


def run(params: Params, root: Path, subject: str) -> dict[str, Any]:
    """``renders/<subject>``: the subject model animated along its test pose windows."""
    ws = Workspace(root)
    from dreampose.models.subject import check_subject_frame_size
    from dreampose.render import render_subject

    check_subject_frame_size(ws.subject_model(subject), params.frames.height, params.frames.width)
    out = ws.render_dir(subject)
    rt = resolve_runtime(params.runtime)
    inputs = {"model": ws.subject_model(subject), "test_manifest": ws.test_manifest}
    run_params = {**params.render.model_dump(), "runtime": rt.describe()}
    with tracking.stage_run("render", run_params, params.tracking.experiment, inputs=inputs, tags={"subject": subject}):
        summary = render_subject(
            params.render,
            ws.subject_model(subject),
            ws.test_manifest,
            subject,
            root,
            out,
            fvd_manifest=ws.fvd_manifest,
            runtime=rt,
        )
        tracking.log_summary({k: v for k, v in summary.items() if k != "frames"}, "render/")
        tracking.log_files([out / n for n in ("video.mp4", "side_by_side.mp4", "poster.png", "render.json")], "render")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``[--params FILE] [--root DIR] --subject ID [-v]`` (``dreampose.entry``)."""
    from dreampose.entry import stage_main

    return stage_main("render", run, argv)


if __name__ == "__main__":
    sys.exit(main())
