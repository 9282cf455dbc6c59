"""The ``manifest`` DVC stage: dvc.yaml runs ``bin/python -m dreampose.stages.manifest``, which calls ``run``.

A code dep of the ``manifest`` stage only (docs/architecture.md, "Code deps"): editing it makes only that stage
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
    """``data/manifests``: train / subject / test pair manifests (Parquet)."""
    ws = Workspace(root)
    from dreampose.data.manifest import build_manifests

    inputs = {"frames_index": ws.frames / "index.parquet", "densepose_index": ws.densepose / "index.parquet"}
    run_params = {**params.manifest.model_dump(), "fvd_clip_len": params.score.fvd_clip_len}
    with tracking.stage_run("manifest", run_params, params.tracking.experiment, inputs=inputs):
        summary = build_manifests(
            params.manifest, ws.frames, ws.densepose, ws.manifests, fvd_clip_len=params.score.fvd_clip_len
        )
        tracking.log_summary(summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``[--params FILE] [--root DIR] [-v]`` (``dreampose.entry``)."""
    from dreampose.entry import stage_main

    return stage_main("manifest", run, argv)


if __name__ == "__main__":
    sys.exit(main())
