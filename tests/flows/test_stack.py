"""The production profile for real: PostgreSQL + MLflow server (basic-auth) + Prefect server (auth) + two
process workers; a batch of 3 tiny catalog items (one more than the workers, so one waits for a slot) with one
worker SIGKILLed mid-item. Every item ends registered exactly once, no MLflow run stays RUNNING, no partial
catalog directory remains, and nobody gets in without the right password."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import requests

from flows import batch
from flows.credentials import SECRET_NAMES
from flows.postgres import PG_DB_USER, PG_SUPERUSER, pg_connect
from flows.stack import Stack
from tests.flows.conftest import make_catalog_workspace, person_photo
from tests.flows.supervisor import deploy_catalog_item, free_port

MODEL = "catalog-test-model"
EXPERIMENT = "catalog-test"
POOL = "dreampose-stack-test"
ITEMS = 3  # one more than the two workers: an item queues while another is retried


def _listen_addresses(port: int) -> set[str]:
    """Local addresses of sockets listening on ``port`` (from /proc/net/tcp*)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.rsplit(":", 1)
            if state == "0A" and int(p, 16) == port:  # LISTEN
                found.add(addr)
    return found


def _busy_worker(stack: Stack) -> str | None:
    """A worker that has a flow-run child process."""
    for name, proc in stack.procs.items():
        if name.startswith("worker-") and proc.poll() is None:
            with_children = [c for c in psutil.Process(proc.pid).children() if c.is_running()]
            if with_children:
                return name
    return None


def _check_security(stack: Stack, env: dict[str, str]) -> None:
    ml = stack.mlflow_uri + "/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(ml, timeout=60).status_code == 401  # no password
    assert requests.get(ml, auth=("admin", "wrong-password"), timeout=60).status_code == 401
    admin = (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
    assert requests.get(ml, auth=admin, timeout=60).status_code == 200
    flows_api = stack.api + "/flow_runs/filter"
    assert requests.post(flows_api, json={}, timeout=60).status_code == 401
    assert requests.post(flows_api, json={}, auth=("dreampose", "wrong"), timeout=60).status_code == 401
    assert requests.post(flows_api, json={}, auth=stack.prefect_auth, timeout=60).status_code == 200
    import psycopg2

    for user, pw in ((PG_SUPERUSER, "wrong"), (PG_DB_USER, "wrong"), (PG_DB_USER, "")):
        with pytest.raises(psycopg2.OperationalError, match="password"):
            pg_connect(stack.host, stack.pg_port, user, pw)
    pg_connect(stack.host, stack.pg_port, PG_DB_USER, stack.secret("PG_PASSWORD"), "mlflow").close()
    for port in (stack.prefect_port, stack.mlflow_port, stack.pg_port):
        assert _listen_addresses(port) == {"0100007F"}, port  # 127.0.0.1 only


@pytest.mark.slow
def test_prod_stack_batch_survives_a_killed_worker(tmp_path, monkeypatch):
    pytest.importorskip("psycopg2")
    t_start = time.monotonic()
    ws = make_catalog_workspace(tmp_path / "ws")
    photos = tmp_path / "photos"
    photos.mkdir()
    colours = [(30, 60, 200), (200, 40, 40), (40, 160, 60), (120, 40, 160), (200, 160, 30)]
    with (tmp_path / "items.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["photo", "poses", "item_id"])
        for i in range(ITEMS):
            w.writerow([person_photo(photos / f"p{i}.png", colours[i]), "poses", f"sku-{i}"])
    items = batch.read_batch(tmp_path / "items.csv")
    state = Path(tempfile.mkdtemp(prefix="dreampose-stack-"))  # under /tmp: reachable by the postgres user
    stack = Stack(
        state=state,
        profile="prod",
        prefect_port=free_port(),
        mlflow_port=free_port(),
        pg_port=free_port(),
        pool=POOL,
        workers=2,
        extra_env={"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_WORKER_QUERY_SECONDS": "1"},
    )
    killed = None
    restarted = []
    try:
        with stack:
            stack.start()
            env = stack.client_env()
            deploy_catalog_item(env, POOL, timeout_s=300)
            _check_security(stack, env)
            ids = batch.submit(items, stack.api, str(ws), auth=stack.prefect_auth)
            assert len(set(ids)) == ITEMS

            # Kill a worker once its flow run has started the item (a run directory exists).
            t0 = time.monotonic()
            while killed is None and time.monotonic() - t0 < 300:  # workers start flow runs slowly when loaded
                started = list((ws / "catalog").glob("*/*")) if (ws / "catalog").is_dir() else []
                busy = _busy_worker(stack) if started else None
                if busy:
                    killed = busy
                    os.kill(stack.procs[busy].pid, signal.SIGKILL)
                time.sleep(0.2)
            assert killed, "no worker ever ran an item"
            final: dict[str, str] = {}
            t0 = time.monotonic()
            while time.monotonic() - t0 < 600:  # a loaded 2-core machine needs minutes per item
                restarted += stack.supervise_once(report=lambda m: None) or []
                final = batch.states(stack.api, ids, auth=stack.prefect_auth)
                if all(final.get(i) in batch.FINAL for i in ids):
                    break
                time.sleep(1)
            logs = {p.name: p.read_text(errors="replace") for p in stack.logs.glob("*.log")}
            assert all(s == "COMPLETED" for s in final.values()), (final, {k: v[-1500:] for k, v in logs.items()})
            assert killed in stack.procs and stack.procs[killed].poll() is None  # the supervisor restarted it
            assert stack.restarts.get(killed)
            assert restarted == []  # no core service died
            runs = [requests.get(f"{stack.api}/flow_runs/{i}", auth=stack.prefect_auth, timeout=60).json() for i in ids]
            assert max(r["run_count"] for r in runs) >= 2  # the killed worker's item was retried by the stack

            # Tracking: exactly one version per item, nothing left RUNNING, secrets nowhere.
            for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                monkeypatch.setenv(k, env[k])
            from mlflow import MlflowClient

            # An earlier in-process test may have set mlflow's global URIs, which outrank the environment:
            # point them at this stack's server, and put them back after (monkeypatch undoes it).
            from mlflow.tracking import _model_registry, _tracking_service

            from dreampose import registry

            monkeypatch.setattr(_tracking_service.utils, "_tracking_uri", env["MLFLOW_TRACKING_URI"])
            monkeypatch.setattr(_model_registry.utils, "_registry_uri", env["MLFLOW_TRACKING_URI"])
            client = MlflowClient()
            exp = client.get_experiment_by_name(EXPERIMENT)
            all_runs = client.search_runs([exp.experiment_id], max_results=500)
            assert [r.info.run_id for r in all_runs if r.info.status == "RUNNING"] == []
            secret_values = [stack.secret(n) for n in SECRET_NAMES]
            for item in items:
                versions = registry.search_versions(MODEL, catalog_item=item["item_id"])
                assert len(versions) == 1, (item["item_id"], [v.version for v in versions])
                run_dirs = list((ws / "catalog" / item["item_id"]).iterdir())
                assert [d.name for d in run_dirs] == [versions[0].run_id]  # no partial or second directory
                assert (run_dirs[0] / "summary.json").is_file()
            assert sorted(p.name for p in (ws / "catalog").iterdir()) == sorted(i["item_id"] for i in items)
            for run in all_runs:
                text = repr(run.data.tags) + repr(run.data.params)
                assert not [s for s in secret_values if s in text]
    finally:
        logs_text = (
            "".join(p.read_text(errors="replace") for p in stack.logs.glob("*.log")) if stack.logs.is_dir() else ""
        )
        shutil.rmtree(state, ignore_errors=True)
    for proc in [*stack.procs.values(), *stack.dead]:
        assert proc.poll() is not None  # everything started here has ended
    assert logs_text and not [s for s in secret_values if s in logs_text]
    print(f"stack test: {time.monotonic() - t_start:.0f} s, killed {killed}")
