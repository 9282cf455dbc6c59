"""The suite's per-test MLflow isolation (tests/conftest.py): what one in-process test tells mlflow does not reach
the next. The two tests run in file order; the second fails if the first's URI, experiment or open run leaks."""

from __future__ import annotations

import os

import mlflow


def test_a_test_that_sets_global_mlflow_state(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    mlflow.set_experiment("leaky")
    mlflow.start_run()  # left open on purpose
    assert "elsewhere.db" in mlflow.get_tracking_uri()


def test_the_next_test_sees_only_its_own_store(tmp_path):
    assert mlflow.active_run() is None
    assert mlflow.get_tracking_uri() == os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'mlruns.db'}"
    with mlflow.start_run() as run:
        pass
    assert mlflow.get_experiment(run.info.experiment_id).name == "Default"
