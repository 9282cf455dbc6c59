"""Shared test setup: seeded, offline, MLflow pointed at a per-test sqlite store."""

from __future__ import annotations

import atexit
import gc
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Before prefect is imported anywhere: never touch the repository's .prefect/.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="dreampose-prefect-test-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
os.environ.pop("PREFECT_API_URL", None)
# `make test` runs the suite on several pytest-xdist workers (one per core): each worker, and every process a test
# starts, then computes on its share of the cores instead of every process oversubscribing all of them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
TORCH_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(TORCH_THREADS))

REPO = Path(__file__).resolve().parents[1]
# The slowest tests start first, so that the workers finish together instead of one of them starting a
# minutes-long end-to-end test last (`--dist loadfile` hands out whole files in collection order): the files below
# in this order (slowest first, as measured), then the other files holding a ``slow`` test, then the rest. (A
# 35 s file handed out last left one worker idle for 28 s at the end.)
SLOW_FIRST = (
    "tests/rehearsal/test_rehearsal.py",
    "tests/flows/test_stack_restart.py",
    "tests/flows/test_stack.py",
    "tests/training/test_loop.py",
    "tests/models/test_pipeline_conformance.py",
    "tests/flows/test_catalog_item.py",
    "tests/training/test_finetune.py",
    "tests/test_gpu_check.py",
    "tests/tools/test_remote.py",
    "tests/training/test_step_safety.py",
    "tests/flows/test_pipeline.py",
    "tests/test_dvc_workspace.py",
    "tests/training/test_data.py",
    "tests/tools/test_ablations.py",
)  # the files over ~12 s each on a quiet 2-core machine: the ones left to hand out last are short


def pytest_collection_modifyitems(items) -> None:
    """A stable sort by file rank: inside a rank, files and tests keep their collection order."""
    rank = {path: i for i, path in enumerate(SLOW_FIRST)}
    for item in items:
        if item.get_closest_marker("slow"):
            rank.setdefault(item.nodeid.split("::", 1)[0], len(SLOW_FIRST))
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(SLOW_FIRST) + 1))


# Full garbage collections scan every tracked object: with torch, diffusers, MLflow and Prefect imported that is
# ~700k objects and ~0.4 s a collection, and they added up to over a third of the training tests' time (the training
# loop ends with one). What collection imported is frozen (never scanned again), and so is what a test leaves alive
# once it reaches _REFREEZE objects (modules imported lazily, session fixtures): after a collection, so that only
# live objects are frozen.
_REFREEZE = 100_000


def pytest_collection_finish(session) -> None:
    gc.collect()
    gc.freeze()


def pytest_runtest_setup(item) -> None:
    if len(gc.get_objects(generation=2)) > _REFREEZE:
        gc.collect()
        gc.freeze()


@pytest.fixture(autouse=True)
def _seed_and_isolate(monkeypatch, tmp_path):
    """Every test: fixed seeds, and an MLflow store of its own (never the repo's mlruns.db)."""
    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
        torch.set_num_threads(TORCH_THREADS)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    _reset_mlflow_globals()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.delenv("DREAMPOSE_PARENT_RUN_ID", raising=False)
    yield
    _reset_mlflow_globals()


def _reset_mlflow_globals() -> None:
    """Forget what an in-process test told mlflow: a tracking or registry URI set with ``set_tracking_uri`` (it
    outranks the environment), the active experiment (``set_experiment`` also writes ``MLFLOW_EXPERIMENT_ID`` into
    ``os.environ``, behind monkeypatch's back) and any run left open. Each test then sees only its own store."""
    import mlflow
    from mlflow.tracking import _model_registry, _tracking_service, fluent

    while mlflow.active_run() is not None:
        mlflow.end_run()
    _tracking_service.utils._tracking_uri = None
    _model_registry.utils._registry_uri = None
    fluent._active_experiment_id = None
    fluent._last_active_run_id.set(None)
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole session (flow tests in any directory share it; under pytest-xdist
    one per worker, each on a free port with its own PREFECT_HOME)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=600):  # a hang guard: minutes on a loaded machine
        yield


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def chromium() -> str:
    """Headless Chromium for page checks, installed with apt on first use (``make test`` on a clean Debian
    machine runs as root); ``DREAMPOSE_NO_BROWSER=1`` skips the browser checks instead."""
    from tests.browser import BrowserUnavailable, ensure_chromium

    if os.environ.get("DREAMPOSE_NO_BROWSER") == "1":
        pytest.skip("DREAMPOSE_NO_BROWSER=1")
    try:
        return ensure_chromium()
    except BrowserUnavailable as err:
        pytest.fail(f"the review-page browser checks need Chromium: {err} (or set DREAMPOSE_NO_BROWSER=1)")
