"""The ``frames`` DVC stage: dvc.yaml runs ``bin/python -m dreampose.stages.frames``, which calls ``run``.

A code dep of the ``frames`` stage only (docs/architecture.md, "Code deps"): editing it makes only that stage
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
    """``data/frames``: JPEG frames resized + center-cropped to H x W, and ``index.parquet``."""
    ws = Workspace(root)
    from dreampose.cluster import connect
    from dreampose.data.frames import extract_frames

    with tracking.stage_run(
        "frames", params.frames.model_dump(), params.tracking.experiment, inputs={"videos": ws.videos}
    ):
        with connect(params.cluster) as client:  # null: this process; else a Dask cluster (same bytes)
            summary = extract_frames(params.frames, ws.videos, ws.frames, client=client)
        tracking.log_summary(summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``[--params FILE] [--root DIR] [-v]`` (``dreampose.entry``)."""
    from dreampose.entry import stage_main

    return stage_main("frames", run, argv)


if __name__ == "__main__":
    sys.exit(main())
