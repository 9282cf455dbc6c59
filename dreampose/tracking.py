"""MLflow conventions: default URI, run naming, parent/child runs, data hashes.

With no ``MLFLOW_TRACKING_URI`` the store is ``sqlite:///<repo>/mlruns.db`` with artifacts under
``<repo>/mlartifacts``; a server URI works unchanged. A pipeline run is a parent run whose id
reaches each stage (a separate process under DVC) through ``DREAMPOSE_PARENT_RUN_ID``.

An observer (docs/architecture.md, "Code deps"): it records runs and never changes what a stage writes, so it
is no DVC dep; library code does not import it (tests/test_dvc_deps.py checks both).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dreampose.fsutil import tree_digest

PARENT_ENV = "DREAMPOSE_PARENT_RUN_ID"
DISABLE_ENV = "DREAMPOSE_NO_MLFLOW"


def repo_root(start: Path | None = None) -> Path:
    """The directory holding ``params.yaml`` (walking up from ``start``), else ``start``."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "params.yaml").is_file() and (d / "dvc.yaml").is_file():
            return d
    return here


def default_tracking_uri(root: Path | None = None) -> str:
    return f"sqlite:///{repo_root(root) / 'mlruns.db'}"


def configure(experiment: str, root: Path | None = None) -> str:
    """Point MLflow at the configured store and experiment; returns the tracking URI."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        artifacts = None
        if uri.startswith("sqlite:"):
            artifacts = (repo_root(root) / "mlartifacts").as_uri()
        with contextlib.suppress(Exception):  # a concurrent process may create it first
            mlflow.create_experiment(experiment, artifact_location=artifacts)
    mlflow.set_experiment(experiment)
    return uri


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> ``{"a.b.c": value}`` for ``mlflow.log_params``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def git_commit(root: Path | None = None) -> str | None:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo_root(root), capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def path_digest(path: Path) -> str | None:
    """A content hash of a file or directory tree (md5 of sorted relative paths and bytes; ``fsutil.tree_digest``).

    Used to record which data a run consumed; cheap enough for the demo's data sizes.
    """
    return tree_digest(path, "md5")


def stage_run_name(stage: str, tags: Mapping[str, str] | None = None) -> str:
    """``render@<subject>`` for a per-subject stage, else the stage name."""
    subject = (tags or {}).get("subject")
    return f"{stage}@{subject}" if subject else stage


def tracking_enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "") not in ("1", "true", "yes")


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Mapping[str, Any],
    experiment: str = "dreampose",
    inputs: Mapping[str, Path] | None = None,
    tags: Mapping[str, str] | None = None,
    run_name: str | None = None,
) -> Iterator[Any]:
    """Open an MLflow run for one stage: a child of the pipeline run when one is active.

    The run is named ``run_name``, else ``<stage>@<subject>`` for a per-subject stage (``subject`` tag),
    else ``<stage>``, so the pipeline tree says what ran and on which subject.

    Logs the stage's params (flattened), the git commit and content hashes of ``inputs``.
    Yields the active ``mlflow.ActiveRun`` (or ``None`` when tracking is disabled).
    """
    if not tracking_enabled():
        yield None
        return
    import mlflow

    configure(experiment)
    parent = os.environ.get(PARENT_ENV)
    all_tags = {"dreampose.stage": stage, **(tags or {})}
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    commit = git_commit()
    if commit:
        all_tags["mlflow.source.git.commit"] = commit
    with mlflow.start_run(run_name=run_name or stage_run_name(stage, tags), tags=all_tags) as run:
        flat = flatten(params)
        # MLflow caps param values at 6000 chars; tuples/lists become JSON.
        mlflow.log_params({k: json.dumps(v) if isinstance(v, (list, tuple)) else v for k, v in flat.items()})
        for name, p in (inputs or {}).items():
            digest = path_digest(Path(p))
            if digest:
                mlflow.set_tag(f"input.{name}.md5", digest)
        yield run


def log_summary(summary: dict[str, Any], group: str = "") -> None:
    """Numbers go to MLflow metrics (named ``<group><key>``), the whole summary to a JSON artifact."""
    if not tracking_enabled():
        return
    import mlflow

    nums = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if nums:
        mlflow.log_metrics({f"{group}{k}": v for k, v in nums.items()})
    mlflow.log_dict(summary, "summary.json")


def log_files(paths: list[Path], artifact_dir: str) -> None:
    """Each existing file of ``paths`` as an MLflow artifact under ``artifact_dir``."""
    if not tracking_enabled():
        return
    import mlflow

    for p in paths:
        if p.is_file():
            mlflow.log_artifact(str(p), artifact_dir)


class MlflowLogger:
    """Sends the loop's metrics to the active MLflow run, named ``<prefix><name>`` (default ``train/loss`` ...),
    so training internals group apart from quality metrics in the MLflow UI."""

    def __init__(self, prefix: str = "train/") -> None:
        self.prefix = prefix

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import mlflow

        mlflow.log_metrics({f"{self.prefix}{k}": v for k, v in metrics.items()}, step=step)
