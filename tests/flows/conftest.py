"""Prefect test setup: a private PREFECT_HOME and one temporary Prefect server for the session."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Before prefect is imported anywhere: never touch the repository's .prefect/.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="dreampose-prefect-test-")
os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def make_dvc_repo(path: Path, dvc_yaml: str, params_yaml: str) -> Path:
    """A git + DVC repository holding only ``dvc.yaml`` and ``params.yaml``."""
    path.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=path, check=True, env=env)
    (path / "dvc.yaml").write_text(dvc_yaml)
    (path / "params.yaml").write_text(params_yaml)
    return path
