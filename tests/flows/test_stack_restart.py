"""The local stack for real, run as an operator runs it (``python -m flows.serve``, ``prefect deploy`` from
prefect.yaml, an item triggered with ``prefect deployment run``): one SIGKILL of a flow-run process is one retry;
a run the heartbeat automation marks Crashed is retried; SIGTERM to the supervisor mid-item settles the item (no
RUNNING MLflow run, no partial directory) and the next start completes it, registered exactly once; a served item
is review=pending until approved through the CLI."""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dreampose import cli, registry, tracking
from flows import batch, recovery
from flows.prefect_server import api_call
from flows.processes import descendants
from tests.flows.conftest import make_catalog_workspace, person_photo
from tests.flows.supervisor import Supervisor, alive, wait_for

MODEL = "catalog-test-model"
EXPERIMENT = "catalog-test"
POOL = "dreampose-restart-test"


def _run_dirs(ws: Path, item: str) -> list[Path]:
    d = ws / "catalog" / item
    return list(d.iterdir()) if d.is_dir() else []


def _mlflow(ws: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{ws / 'mlruns.db'}", registry_uri=f"sqlite:///{ws / 'mlruns.db'}")


def _deployment_run(sup: Supervisor, params: dict[str, str]) -> str:
    """``prefect deployment run`` as the README shows it; the flow run's id."""
    params_args = [a for k, v in params.items() for a in ("--param", f"{k}={v}")]
    out = sup.prefect("deployment", "run", "catalog-item/catalog-item", *params_args, timeout_s=300)
    found = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert found, out[-2000:]
    return found.group(1)


def _fake_zombie(api: str, dep_id: str, params: dict) -> str:
    """A flow run left Running by a process that is gone: one heartbeat, then silence."""
    r = api_call("POST", f"{api}/deployments/{dep_id}/create_flow_run", json={"parameters": params})
    r.raise_for_status()
    run_id = r.json()["id"]
    recovery.set_state(api, run_id, "RUNNING", "Running", "a process that will die")
    event = {
        "id": str(uuid.uuid4()),
        "occurred": datetime.now(UTC).isoformat(),
        "event": "prefect.flow-run.heartbeat",
        "resource": {"prefect.resource.id": f"prefect.flow-run.{run_id}"},
        "related": [],
        "payload": {},
    }
    api_call("POST", f"{api}/events", json=[event]).raise_for_status()
    return run_id


@pytest.mark.slow
@pytest.mark.timeout(1500)  # two stack starts and three items: ~3 min in a quiet `make test` here, more when loaded
def test_stack_kill_heartbeat_and_restart(tmp_path, monkeypatch):
    ws = make_catalog_workspace(tmp_path / "ws")
    items = {
        name: {"photo": person_photo(tmp_path / f"{name}.png", colour), "poses": "poses", "item_id": name}
        for name, colour in (("killed", (200, 40, 40)), ("zombie", (40, 160, 60)), ("stopped", (120, 40, 160)))
    }
    sup = Supervisor(tmp_path / "state", ws, tmp_path / "serve.log", POOL, workers=1, zombie_after_s=60)
    ids: dict[str, str] = {}
    try:
        sup.start()
        assert (tmp_path / "state" / "prefect" / "prefect.db").is_file()  # the profile's own Prefect database
        sup.deploy()
        dep_id = api_call("GET", f"{sup.api}/deployments/name/catalog-item/catalog-item").json()["id"]

        # 1. One SIGKILL of the flow-run process while it works on the item: exactly one retry.
        ids["killed"] = _deployment_run(sup, {**items["killed"], "root": str(ws)})
        wait_for(lambda: _run_dirs(ws, "killed") and sup.flow_run_pids(), 300, "the item to start")
        for pid in sup.flow_run_pids():
            os.kill(pid, signal.SIGKILL)
        # 2. Meanwhile a run whose process vanished without a report: the heartbeat automation crashes it.
        ids["zombie"] = _fake_zombie(sup.api, dep_id, {**items["zombie"], "root": str(ws)})
        final = wait_for(
            lambda: (s := batch.states(sup.api, [ids["killed"], ids["zombie"]])) and all(
                v in batch.FINAL for v in s.values()) and s,
            600, "the killed and the zombie items",
        )  # fmt: skip
        assert set(final.values()) == {"COMPLETED"}, (final, sup.log.read_text()[-3000:])
        for name in ("killed", "zombie"):
            history = recovery.state_history(sup.api, ids[name])
            retries = [s for s in history if s["name"] == "AwaitingRetry"]
            assert len(retries) == 1, (name, [(s["type"], s["name"], s["message"]) for s in history])
            assert recovery.failed_attempts(history) == 1
        zombie_crash = [s for s in recovery.state_history(sup.api, ids["zombie"]) if s["type"] == "CRASHED"]
        assert zombie_crash and "heartbeat" in zombie_crash[0]["message"]

        # 3. SIGTERM to the supervisor while an item runs: the item is settled, every process ends.
        ids["stopped"] = batch.submit([items["stopped"]], sup.api, str(ws))[0]
        wait_for(lambda: _run_dirs(ws, "stopped") and sup.flow_run_pids(), 300, "the third item to start")
        tree = [sup.proc.pid, *descendants(sup.proc.pid)]
        t0 = time.monotonic()
        sup.stop()
        stop_s = time.monotonic() - t0
        assert sup.proc.returncode == 0
        wait_for(lambda: not [p for p in tree if alive(p)], 30, "every process of the stack to end")
        runs = _mlflow(ws).search_runs([_mlflow(ws).get_experiment_by_name(EXPERIMENT).experiment_id])
        assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
        assert _run_dirs(ws, "stopped") == []  # no partial directory

        # 4. The next start retries it: registered once, nothing left behind.
        sup.start()
        final = wait_for(
            lambda: (s := batch.states(sup.api, [ids["stopped"]])) and s[ids["stopped"]] in batch.FINAL and s,
            600, "the stopped item after the restart",
        )  # fmt: skip
        assert final[ids["stopped"]] == "COMPLETED", sup.log.read_text()[-3000:]
        assert recovery.failed_attempts(recovery.state_history(sup.api, ids["stopped"])) == 0  # a stop is no failure
    finally:
        sup.stop()
    client = _mlflow(ws)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], max_results=500)
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
    for name in items:
        versions = client.search_model_versions(f"name = '{MODEL}' and tags.catalog_item = '{name}'")
        assert len(versions) == 1, (name, [v.version for v in versions])
        assert [d.name for d in _run_dirs(ws, name)] == [versions[0].run_id]

    # 5. Each served item waits for a person: approved through the CLI, it leaves the pending list.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sup.env["MLFLOW_TRACKING_URI"])  # the store the stack wrote to
    tracking.configure(EXPERIMENT, ws)
    assert sorted(v.tags["catalog_item"] for v in registry.list_pending(MODEL)) == sorted(items)
    version = registry.search_versions(MODEL, catalog_item="killed")[0].version
    assert cli.main(["--root", str(ws), "review", "approve", MODEL, version]) == 0
    assert registry.approved_version(MODEL, "killed").version == version
    assert sorted(v.tags["catalog_item"] for v in registry.list_pending(MODEL)) == ["stopped", "zombie"]
    print(f"stop took {stop_s:.1f} s")
