"""Catalog attempts: the MLflow tags that tie a run to its flow run and attempt, and the clean-up of a failed or
superseded attempt's run directory."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from dreampose.catalog.spec import ItemSpec
from dreampose.layout import Workspace

ATTEMPT_TAG = "catalog.attempt_key"


def subject_tags(item: ItemSpec) -> dict[str, str]:
    """How the item's model was made: with or without the subject finetune, and from how many photos."""
    return {
        "catalog.subject_finetune": str(item.finetune).lower(),
        "catalog.num_photos": str(1 + len(item.more_photos)),
    }


def run_tags(item: ItemSpec, flow_run_id: str | None, attempt_key: str | None = None) -> dict[str, str]:
    """What leads a version back to exactly what made it (the git commit is added by ``stage_run``)."""
    tags = {"catalog_item": item.item_id, "catalog.input_key": item.key, "base_model.sha256": item.base_digest}
    tags.update(subject_tags(item))
    if flow_run_id:
        tags["prefect.flow_run_id"] = str(flow_run_id)
    if attempt_key:
        tags[ATTEMPT_TAG] = attempt_key
    return tags


def remove_run_dir(root: Path, item_id: str, run_id: str) -> None:
    """Remove ``catalog/<item>/<run_id>/`` and the item directory when that leaves it empty."""
    item_dir = Workspace(root).catalog_item(item_id)
    shutil.rmtree(item_dir / run_id, ignore_errors=True)
    with contextlib.suppress(OSError):  # not empty: another run of the item keeps it
        item_dir.rmdir()


def settle_attempts(root: Path, item_id: str, attempt_key: str, experiment: str, model_name: str):
    """Earlier attempts of ``attempt_key``: the registered version of a finished one (or ``None``); unfinished
    ones are marked KILLED, their versions deleted and their directories removed."""
    import mlflow
    from mlflow import MlflowClient

    from dreampose import registry

    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    client = MlflowClient()
    runs = client.search_runs([exp.experiment_id], f"tags.`{ATTEMPT_TAG}` = '{registry._quote(attempt_key)}'")
    for run in runs:
        versions = registry.versions_of_run(model_name, run.info.run_id)
        if run.info.status == "FINISHED" and versions:
            return versions[0]
    for run in runs:
        registry.delete_versions_of_run(model_name, run.info.run_id)
        if run.info.status in ("RUNNING", "SCHEDULED"):
            client.set_terminated(run.info.run_id, "KILLED")
        remove_run_dir(root, item_id, run.info.run_id)
    return None
