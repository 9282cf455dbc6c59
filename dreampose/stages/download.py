"""The ``download`` DVC stage: dvc.yaml runs ``bin/python -m dreampose.stages.download``, which calls ``run``.

A code dep of the ``download`` stage only (docs/architecture.md, "Code deps"): editing it makes only that stage
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
    """``data/raw``: synthetic videos (+ ground-truth IUV) or the UBC Fashion videos."""
    ws = Workspace(root)
    out = ws.raw
    with tracking.stage_run("download", params.data.model_dump(), params.tracking.experiment):
        if params.data.source == "synthetic":
            from dreampose.data.synthetic import generate_dataset

            summary = generate_dataset(params.data.synthetic, out, seed=params.seed)
        else:
            from dreampose.data.ubc import download_ubc

            summary = download_ubc(params.data.ubc, out)
        tracking.log_summary(summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``[--params FILE] [--root DIR] [-v]`` (``dreampose.entry``)."""
    from dreampose.entry import stage_main

    return stage_main("download", run, argv)


if __name__ == "__main__":
    sys.exit(main())
