"""The whole pipeline as one Prefect flow: ``python -m flows.pipeline`` (what ``make demo`` runs).

One task per DVC stage in ``dvc.yaml`` order, ``foreach`` stages mapped over ``eval.subjects`` (an empty list
is filled with the protocol's subjects, ``dreampose eval-subjects --write``, before the first of them);
DVC skips every stage whose inputs did not change, so a second run does no stage work. An MLflow
parent run wraps the flow run (each stage's run is its child) and records the Prefect flow-run id.
The flow ends with one catalog item (a held-out subject's photo driven by its test poses), so the
registry holds a ``review=pending`` version to look at; it is skipped when its inputs are unchanged. It is on
where ``eval.catalog_demo`` says so (the demo: on; the paper preset: off, as it is one more subject finetune),
and ``--catalog-demo`` / ``--no-catalog-demo`` override the params file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from dreampose import tracking
from dreampose.config import PARAMS_FILE, Params, load_params
from dreampose.layout import RENDER_VIDEOS, Workspace
from dreampose.tools.eval_subjects import fill_eval_subjects
from dreampose.tools.preflight import PreflightError, require_inputs
from tasks.dvc import StageFailed, network_stage_task, stage_task

NETWORK_STAGES = frozenset({"download"})
logger = logging.getLogger("flows.pipeline")


def stage_plan(dvc_yaml: Path, subjects: list[str] | tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """``[(stage, [dvc targets])]`` in file order; a ``foreach`` stage expands to ``stage@<subject>``."""
    doc = yaml.safe_load(Path(dvc_yaml).read_text()) or {}
    plan = []
    for name, spec in (doc.get("stages") or {}).items():
        if isinstance(spec, dict) and "foreach" in spec:
            plan.append((name, [f"{name}@{s}" for s in subjects]))
        else:
            plan.append((name, [name]))
    if not plan:
        raise ValueError(f"{dvc_yaml}: no stages")
    return plan


def foreach_stages(dvc_yaml: Path) -> set[str]:
    """Names of the ``foreach`` stages (expanded from ``eval.subjects``)."""
    doc = yaml.safe_load(Path(dvc_yaml).read_text()) or {}
    return {n for n, spec in (doc.get("stages") or {}).items() if isinstance(spec, dict) and "foreach" in spec}


def demo_catalog_inputs(params: Params, root: Path) -> dict[str, str] | None:
    """The end-of-demo catalog item: the last eval subject's first frame, driven by its test poses.

    ``None`` when the workspace has no such frame (e.g. a UBC run with no eval subjects).
    """
    if not params.eval.subjects:
        return None
    subject = params.eval.subjects[-1]
    frames = sorted((Workspace(root).frames / "test" / subject).glob("*.jpg"))
    if not frames:
        return None
    return {"photo": str(frames[0]), "poses": subject, "item_id": f"demo-{subject}", "ground_truth": subject}


def catalog_demo_enabled(params: Params, flag: bool | None) -> bool:
    """The closing catalog item runs when asked for (``flag``), else when ``eval.catalog_demo`` says so."""
    return params.eval.catalog_demo if flag is None else bool(flag)


def _read_scores(root: Path) -> dict[str, Any] | None:
    path = Workspace(root).evaluation
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


# metric key -> short column label (docs/metrics.md defines ghost / missing / pattern / flicker)
SCORE_COLUMNS = {
    "l1": "l1", "ssim": "ssim", "psnr": "psnr", "color_dist": "color", "ghost_fraction": "ghost",
    "missing_fraction": "missing", "pattern_error": "pattern", "flicker": "flicker", "temporal_error": "temporal",
}  # fmt: skip


def photo_use(scores: dict[str, Any]) -> str | None:
    """Does the base model read the photo? Its L1 with the subject's own photo over its L1 with another subject's
    photo (lower: the photo matters more), and the SSIM gap between the two; None without both baselines."""
    b = scores.get("baselines") or {}
    own, swapped = b.get("base_model") or {}, b.get("image_swapped") or {}
    vals = [own.get("l1"), swapped.get("l1"), own.get("ssim"), swapped.get("ssim")]
    if not all(isinstance(v, (int, float)) for v in vals) or not vals[1]:
        return None
    return (
        f"  photo use, base model: own/swapped-photo L1 {vals[0] / vals[1]:.3f} "
        f"({vals[0]:.4f} / {vals[1]:.4f}), SSIM gap {vals[2] - vals[3]:+.4f}"
    )


def format_scores(scores: dict[str, Any] | None) -> str:
    """``metrics/evaluation.json`` as a table: one row per method (ours, then each baseline), the weight-free
    metrics as columns, then the metrics that are unavailable (named once, with the reason)."""
    if not scores or not isinstance(scores.get("ours"), dict):
        return "(no metrics/evaluation.json)"
    baselines = scores.get("baselines") or {}
    rows = {"ours": scores["ours"]}
    rows.update({f"{k} ({'upper bound' if k == 'vae_ceiling' else 'baseline'})": v for k, v in baselines.items()})
    width = max(len(k) for k in rows)
    lines = ["  " + "method".ljust(width) + "".join(c.rjust(9) for c in SCORE_COLUMNS.values())]
    unavailable: dict[str, str] = {}
    for name, m in rows.items():
        cells = []
        for c in SCORE_COLUMNS:
            v = m.get(c)
            cells.append(f"{v:9.4f}" if isinstance(v, (int, float)) else "n/a".rjust(9))
        lines.append("  " + name.ljust(width) + "".join(cells))
        for k, v in m.items():
            if isinstance(v, dict) and v.get("status") == "unavailable":
                unavailable.setdefault(k, v.get("reason", ""))
    beaten = scores.get("ours_better_than") or {}
    if beaten:
        wins = [b for b, r in beaten.items() if all(r.values())]
        lines.append(f"  ours beats on L1 and SSIM: {', '.join(wins) or 'none'}")
    gap = photo_use(scores)
    if gap:
        lines.append(gap)
    lines += [f"  {k}: unavailable ({why})" for k, why in unavailable.items()]
    return "\n".join(lines)


def summary_text(
    root: Path, params: Params, tracking_uri: str, catalog: dict[str, Any] | None, run_id: str | None = None
) -> str:
    videos = [Workspace(root).render_dir(s) / RENDER_VIDEOS[0] for s in params.eval.subjects]
    lines = ["", "Videos:"]
    lines += [f"  {v}" + ("" if v.is_file() else "  (missing)") for v in videos] or ["  (no eval subjects)"]
    lines += ["", "Scores (metrics/evaluation.json):", format_scores(_read_scores(root))]
    if catalog:
        lines += [
            "",
            f"Catalog item {catalog.get('item_id')}: {catalog.get('model_name')} version {catalog.get('version')}"
            f" (review={catalog.get('review')}){' — reused, inputs unchanged' if catalog.get('reused') else ''}",
            f"  review page: .venv/bin/dreampose review show {catalog.get('item_id')}",
            "  queue:       .venv/bin/dreampose review list",
            f"  approve:     .venv/bin/dreampose review approve {catalog.get('model_name')} {catalog.get('version')}",
        ]
    lines += ["", f"MLflow: experiment {params.tracking.experiment!r}" + (f", pipeline run {run_id}" if run_id else "")]
    lines += [f"  .venv/bin/mlflow ui --backend-store-uri {tracking_uri}  # then open http://127.0.0.1:5000"]
    return "\n".join(lines)


@flow(name="dreampose-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=1), persist_result=False)
def pipeline(
    root: str = ".", params_file: str = PARAMS_FILE, catalog_demo: bool | None = None, until: str | None = None
) -> dict[str, Any]:
    """Bring every DVC stage up to date (or those up to ``until``), then run the demo catalog item
    (``catalog_demo``: ``None`` follows ``eval.catalog_demo`` of the params file).

    Stages run one at a time: ``dvc repro`` holds a repository lock, and the demo machine has few cores.
    """
    import mlflow
    from prefect.runtime import flow_run

    root_p = Path(root).resolve()
    params = load_params(root_p / params_file)
    catalog_demo = catalog_demo_enabled(params, catalog_demo)
    # Every input the stages will read is checked before the first one runs (missing ones listed together).
    for finding in require_inputs(params, root_p):
        if finding.level == "warn":
            logger.warning("preflight: %s: %s", finding.key, finding.message)
    uri = tracking.configure(params.tracking.experiment, root_p)
    results: list[dict[str, Any]] = []
    catalog = None
    with mlflow.start_run(
        run_name="pipeline",
        tags={"dreampose.stage": "pipeline", "prefect.flow_run_id": str(flow_run.id or "")},
    ) as run:
        parent = run.info.run_id
        previous: list = []
        plan = stage_plan(root_p / "dvc.yaml", params.eval.subjects)
        if until is not None:
            names = [n for n, _ in plan]
            if until not in names:
                raise ValueError(f"--until {until!r}: no such stage in dvc.yaml (stages: {names})")
            plan = plan[: names.index(until) + 1]
            catalog_demo = False
        per_subject = foreach_stages(root_p / "dvc.yaml")
        for name, targets in plan:
            if name in per_subject:
                if not params.eval.subjects:
                    # DVC reads the list from the params file when it parses dvc.yaml, so it goes there first.
                    filled = fill_eval_subjects(root_p, params_file)
                    logger.info("eval.subjects was empty: wrote %d test videos into %s", len(filled), params_file)
                    params = load_params(root_p / params_file)
                targets = [f"{name}@{s}" for s in params.eval.subjects]
            task_fn = network_stage_task if name in NETWORK_STAGES else stage_task
            futures = task_fn.map(targets, root=str(root_p), parent_run_id=parent, wait_for=previous)
            results.extend(futures.result())
            previous = list(futures)
        ran = [r["stage"] for r in results if not r["skipped"]]
        mlflow.log_dict({"stages": results}, "stages.json")
        mlflow.log_metric("stages_run", len(ran))
    inputs = demo_catalog_inputs(params, root_p) if catalog_demo else None
    if inputs:
        from flows.catalog_item import catalog_item

        # The item opens its own MLflow run; it nests under the pipeline run through the environment.
        previous_parent = os.environ.get(tracking.PARENT_ENV)
        os.environ[tracking.PARENT_ENV] = parent
        try:
            catalog = catalog_item(**inputs, root=str(root_p), params_file=params_file, reuse=True)
        finally:
            if previous_parent is None:
                os.environ.pop(tracking.PARENT_ENV, None)
            else:
                os.environ[tracking.PARENT_ENV] = previous_parent
    return {
        "stages": results,
        "catalog": catalog,
        "tracking_uri": uri,
        "summary": summary_text(root_p, params, uri, catalog, run_id=parent),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--root", default=".", help="workspace root (default: .)")
    p.add_argument("--params", default=PARAMS_FILE, help="params file (default: params.yaml)")
    p.add_argument(
        "--catalog-demo",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="end with one catalog item (default: eval.catalog_demo of the params file; the paper preset: off)",
    )
    p.add_argument("--until", default=None, help="stop after this dvc.yaml stage (implies --no-catalog-demo)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    try:
        # the flow checks again (a deployment run starts there); here a refused run stops before Prefect starts
        require_inputs(load_params(Path(args.root) / args.params), Path(args.root).resolve())
        out = pipeline(root=args.root, params_file=args.params, catalog_demo=args.catalog_demo, until=args.until)
    except (ValueError, FileNotFoundError) as err:
        print(f"flows.pipeline: error: {err}", file=sys.stderr)
        return 2
    except (StageFailed, PreflightError) as err:
        print(f"flows.pipeline: error: {err}", file=sys.stderr)
        return 1
    print(out["summary"])  # after Prefect's log lines, as plain text
    return 0


if __name__ == "__main__":
    sys.exit(main())
