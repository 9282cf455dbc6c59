"""The ``score`` DVC stage: dvc.yaml runs ``bin/python -m dreampose.stages.score``, which calls ``run``.

A code dep of the ``score`` stage only (docs/architecture.md, "Code deps"): editing it makes only that stage
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
    """``metrics/evaluation.json``, its numbers ``metrics/scores.json`` (DVC metrics), ``metrics/per_video.parquet``,
    ``plots/per_frame.csv``."""
    ws = Workspace(root)
    from dreampose.evaluate import is_finite, score_renders

    if not params.eval.subjects:
        from dreampose.config import ConfigError

        raise ConfigError(
            "eval.subjects is empty, so no subject was finetuned or rendered: run `dreampose eval-subjects --write` "
            "after the manifest stage (the pipeline flow does this itself), or list test video ids in params.yaml"
        )
    dataset = "synthetic demo" if params.data.source == "synthetic" else "UBC Fashion test"
    rt = resolve_runtime(params.runtime)
    run_params = {"score": params.score.model_dump(), "render": params.render.model_dump(), "runtime": rt.describe()}
    inputs = {"renders": ws.renders, "test_manifest": ws.test_manifest}
    with tracking.stage_run("score", run_params, params.tracking.experiment, inputs=inputs):
        result = score_renders(
            params.score,
            params.render,
            ws.test_manifest,
            ws.renders,
            root,
            list(params.eval.subjects),
            ws.metrics,
            ws.plots,
            subjects_model_dir=ws.subjects,
            base_model_dir=ws.base,
            dataset=dataset,
            runtime=rt,
        )
        table = result.pop("table")
        print(table)
        if tracking.tracking_enabled():
            import mlflow

            flat = tracking.flatten({"ours": result["ours"], "baselines": result["baselines"]})
            # MLflow names only (quality/ours.l1 ...); metrics/scores.json keeps the record's own keys for DVC.
            mlflow.log_metrics({f"quality/{k}": float(v) for k, v in flat.items() if is_finite(v)})
            mlflow.log_text(table, "scores_table.txt")
        files = [ws.evaluation, ws.scores, ws.per_video, ws.per_frame_plot]
        tracking.log_files(files, "scores")
        for subject in params.eval.subjects:
            tracking.log_files(ws.render_videos(subject), f"videos/{subject}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``[--params FILE] [--root DIR] [-v]`` (``dreampose.entry``)."""
    from dreampose.entry import stage_main

    return stage_main("score", run, argv)


if __name__ == "__main__":
    sys.exit(main())
