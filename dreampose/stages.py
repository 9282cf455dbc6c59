"""The pipeline's stages by name, for the CLI (and so DVC and Prefect): each DVC stage's wrapper is its own module,
``dreampose.steps.<stage>`` (``run``), so a stage's code deps name only its own wrapper; this module is the lookup
(``stages.render`` is ``dreampose.steps.render.run``) plus the two stages DVC does not run (``inspect``,
``report``). Nothing here parses arguments, and nothing here can change a stage's outputs: it is not a DVC dep.

Paths come from ``layout.Workspace(root)``, the DVC layout of docs/architecture.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

from dreampose.config import Params
from dreampose.layout import Workspace

# The DVC stages (dvc.yaml names), each ``dreampose.steps.<name>.run``.
DVC_STAGES = (
    "download",
    "frames",
    "densepose",
    "manifest",
    "base_model",
    "finetune_base",
    "finetune_subject",
    "render",
    "score",
)


def stage_function(name: str) -> Callable[..., Any]:
    """The function running stage ``name``: ``dreampose.steps.<name>.run`` for a DVC stage, else this module's."""
    if name in DVC_STAGES:
        return import_module(f"dreampose.steps.{name}").run
    fn = globals().get(name)
    if name not in ("inspect", "report") or fn is None:
        raise KeyError(f"no stage {name!r}")
    return fn


def __getattr__(name: str) -> Any:
    if name in DVC_STAGES:
        return stage_function(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def inspect(params: Params, root: Path) -> dict[str, Any]:
    """Manifest counts and schemas, and ``data/inspect/preview.png`` (a frame with its IUV overlaid).

    Not a DVC stage: the preview lives outside the stage outputs so looking never makes them stale.
    """
    ws = Workspace(root)
    from dreampose.data.manifest import inspect_manifests

    return inspect_manifests(ws.manifests, root, ws.inspect_preview)


def report(params: Params, root: Path) -> None:
    """Print our scores beside the paper's Table 1 (published figures, UBC Fashion)."""
    ws = Workspace(root)
    from dreampose.tools.report import report as build_report

    print(build_report(ws.evaluation))


def dump_summary(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, sort_keys=True, default=str)
