"""The ``densepose`` DVC stage: dvc.yaml runs ``bin/python -m dreampose.stages.densepose``, which calls ``run``.

A code dep of the ``densepose`` stage only (docs/architecture.md, "Code deps"): editing it makes only that stage
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
    """``data/densepose``: per-video uint8 IUV archives aligned with the frames, and ``index.parquet``."""
    ws = Workspace(root)
    from dreampose.cluster import connect
    from dreampose.data.densepose import run_densepose
    from dreampose.data.densepose.run import rooted_config

    cfg = rooted_config(params.densepose, root)
    rt = resolve_runtime(params.runtime)
    with tracking.stage_run(
        "densepose",
        {**params.densepose.model_dump(), "runtime": rt.describe()},
        params.tracking.experiment,
        inputs={"frames": ws.frames},
    ):
        with connect(params.cluster) as client:
            summary = run_densepose(
                cfg,
                ws.frames,
                ws.raw,
                ws.densepose,
                device=rt.device,
                client=client,
                gpus=params.cluster.gpus,
            )
        tracking.log_summary(summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``[--params FILE] [--root DIR] [-v]`` (``dreampose.entry``)."""
    from dreampose.entry import stage_main

    return stage_main("densepose", run, argv)


if __name__ == "__main__":
    sys.exit(main())
