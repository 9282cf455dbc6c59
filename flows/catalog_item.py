"""One new catalog item as a Prefect flow (deployment ``catalog-item/catalog-item``).

photo + poses → validate → subject finetune from ``models/base`` → render → score → MLflow run →
registered model version tagged ``catalog_item=<id>``, ``review=pending``, with a review page. The work is
``dreampose.catalog.run_catalog_item``; this flow only adds Prefect's logging and run identity.

    python -m flows.catalog_item --photo shirt.jpg --poses syn_test_000

Under a worker, the flow run's id is the item's attempt key (a retry cleans up after a killed attempt and
never registers twice), and a watchdog ends the run as Crashed when its worker dies (an orphan would otherwise
go on for minutes). The stack's supervisor retries a crashed run once per crash and fails it after
``flows.stack.MAX_ATTEMPTS`` failed attempts (``flows.recovery``); ``MAX_RUNS`` is only a backstop here, since
runs ended by a stack stop are retried without counting as failed attempts.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dreampose.config import PARAMS_FILE, load_params

MAX_RUNS = 10  # runs of one catalog-item flow run, stops included (the supervisor counts failed attempts)


def end_with_parent(parent: int | None = None, poll_s: float = 0.5) -> threading.Thread:
    """SIGTERM this process when its parent (the worker) dies: the flow engine then ends the run as Crashed
    after the item's own clean-up (MLflow run FAILED, no ``catalog/`` directory), instead of an orphan
    running on unseen."""
    parent = os.getppid() if parent is None else parent

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="end-with-worker", daemon=True)
    thread.start()
    return thread


#: What an item's run imports (torch, diffusers, transformers, MLflow: ~700k Python objects).
ITEM_MODULES = (
    "dreampose.catalog.item",
    "dreampose.catalog.register",
    "dreampose.models.pipeline",
    "dreampose.training.finetune",
    "dreampose.render",
    "dreampose.metrics.item",
)


def import_item_modules() -> None:
    """Import ``ITEM_MODULES`` with the cyclic garbage collector paused, then freeze every object alive (they live
    as long as this one-item process): the collector's full passes during the imports and the training loop's
    ``gc.collect()`` would otherwise scan them all again, each pass ~0.4 s on a 2-core machine."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        for name in ITEM_MODULES:
            importlib.import_module(name)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


@task(name="catalog-item-run", cache_policy=NO_CACHE, persist_result=False)
def run_item_task(
    root: str,
    params_file: str,
    photo: str | list[str],
    poses: str,
    item_id: str | None,
    ground_truth: str | None,
    reuse: bool,
    allow_private_urls: bool = False,
    attempt_key: str | None = None,
    finetune: bool = True,
) -> dict[str, Any]:
    """Validate, finetune, render, score, log and register (side effects only: never cached)."""
    from prefect.runtime import flow_run

    from dreampose.catalog import run_catalog_item

    params = load_params(Path(root) / params_file)
    return run_catalog_item(
        params,
        Path(root),
        photo,
        poses,
        item_id=item_id,
        ground_truth=ground_truth,
        reuse=reuse,
        allow_private_urls=allow_private_urls,
        flow_run_id=str(flow_run.id) if flow_run.id else None,
        attempt_key=attempt_key,
        finetune=finetune,
    )


@flow(name="catalog-item", persist_result=False, log_prints=True)
def catalog_item(
    photo: str | list[str],
    poses: str,
    item_id: str | None = None,
    ground_truth: str | None = None,
    root: str = ".",
    params_file: str = PARAMS_FILE,
    reuse: bool = False,
    allow_private_urls: bool = False,
    finetune: bool = True,
) -> dict[str, Any]:
    """One catalog item: ``photo`` (path or http(s) URL, or a list of photos of the same garment: the first conditions
    the render, all are subject-finetune targets), ``poses`` (a test video id, a directory of IUV ``.npz``/``.png``
    files, or a video for DensePose), optional ``ground_truth`` for full metrics. ``finetune=False`` renders with
    the base model, without the subject finetune (tagged ``catalog.subject_finetune=false``).

    ``reuse=True`` returns the version already registered for identical inputs instead of retraining.
    A photo URL may not reach internal addresses unless ``allow_private_urls`` (or ``photo_url`` in params).
    """
    from prefect.runtime import deployment, flow_run

    log = get_run_logger()
    root_p = str(Path(root).resolve())
    attempt_key = None
    if deployment.id:  # run by a worker: a retry must not register the item twice
        attempt_key = str(flow_run.id)
        end_with_parent()
        import_item_modules()  # this process runs this one item
        if flow_run.run_count > MAX_RUNS:
            raise RuntimeError(f"catalog item {item_id or photo}: giving up after {MAX_RUNS} runs")
    result = run_item_task(
        root_p, params_file, photo, poses, item_id, ground_truth, reuse, allow_private_urls, attempt_key, finetune
    )
    if result.get("reused"):
        log.info("inputs unchanged: reusing %s version %s", result["model_name"], result["version"])
    else:
        log.info("registered %s version %s (review=%s)", result["model_name"], result["version"], result["review"])
        log.info("review page: %s  (dreampose review show %s)", result.get("review_page"), result["item_id"])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.catalog_item", description="Run one catalog item.")
    p.add_argument("--photo", required=True, action="append", help="repeat for several photos of the garment")
    p.add_argument("--poses", required=True)
    p.add_argument("--item-id", default=None)
    p.add_argument("--ground-truth", default=None)
    p.add_argument("--root", default=".")
    p.add_argument("--params", default=PARAMS_FILE)
    p.add_argument("--reuse", action="store_true", help="return the existing version for identical inputs")
    p.add_argument("--allow-private-urls", action="store_true", help="let a photo URL reach internal hosts")
    p.add_argument("--no-finetune", action="store_true", help="render with the base model (no subject finetune)")
    a = p.parse_args(argv)
    photo = a.photo[0] if len(a.photo) == 1 else a.photo
    try:
        catalog_item(
            photo, a.poses, a.item_id, a.ground_truth, a.root, a.params, a.reuse, a.allow_private_urls,
            finetune=not a.no_finetune,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as err:
        print(f"catalog-item: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
