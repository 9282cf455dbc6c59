"""The local stack for real, run as an operator runs it (``python -m flows.serve``): one SIGKILL of a flow-run
process is one retry; a run the heartbeat automation marks Crashed is retried; SIGTERM to the supervisor
mid-item settles the item (no RUNNING MLflow run, no partial directory) and the next start completes it,
registered exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from flows import REPO, batch, recovery, serve
from flows.stack import descendants
from tests.flows.conftest import make_catalog_workspace, person_photo
from tests.flows.test_stack import _free_port

MODEL = "catalog-test-model"
EXPERIMENT = "catalog-test"
POOL = "dreampose-restart-test"


class Supervisor:
    """``python -m flows.serve`` in a subprocess, as ``make serve`` runs it."""

    def __init__(self, state: Path, ws: Path, log: Path):
        self.state, self.ws, self.log = state, ws, log
        self.prefect_port, self.mlflow_port = _free_port(), _free_port()
        self.api = serve.api_url("127.0.0.1", self.prefect_port)
        self.proc: subprocess.Popen | None = None
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "MLFLOW_TRACKING_URI": f"sqlite:///{ws / 'mlruns.db'}",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "OMP_NUM_THREADS": "1",
        }

    def start(self, timeout_s: float = 300) -> None:
        out = open(self.log, "a")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flows.serve", "--state", str(self.state), "--pool", POOL, "--workers", "1",
             "--prefect-port", str(self.prefect_port), "--mlflow-port", str(self.mlflow_port),
             "--zombie-after", "60"],
            cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out.close()
        t0 = time.monotonic()
        while "stops everything" not in self.log.read_text(errors="replace"):
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() - t0 < timeout_s, self.log.read_text()[-3000:]
            time.sleep(0.5)

    def client_env(self) -> dict[str, str]:
        return {**self.env, "PREFECT_API_URL": self.api, "PREFECT_HOME": str(self.state / "prefect")}

    def flow_run_pids(self) -> list[int]:
        """Flow-run processes: what the worker started."""
        workers = [p for p in descendants(self.proc.pid) if b"worker\x00start" in _cmdline(p)]
        return [c for w in workers for c in descendants(w) if b"resource_tracker" not in _cmdline(c)]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=120)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _wait(cond, timeout_s: float, what: str, poll_s: float = 0.3):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        got = cond()
        if got:
            return got
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _run_dirs(ws: Path, item: str) -> list[Path]:
    d = ws / "catalog" / item
    return list(d.iterdir()) if d.is_dir() else []


def _mlflow(ws: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{ws / 'mlruns.db'}", registry_uri=f"sqlite:///{ws / 'mlruns.db'}")


def _fake_zombie(api: str, dep_id: str, params: dict) -> str:
    """A flow run left Running by a process that is gone: one heartbeat, then silence."""
    r = requests.post(f"{api}/deployments/{dep_id}/create_flow_run", json={"parameters": params}, timeout=60)
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
    requests.post(f"{api}/events", json=[event], timeout=60).raise_for_status()
    return run_id


@pytest.mark.slow
def test_stack_kill_heartbeat_and_restart(tmp_path):
    ws = make_catalog_workspace(tmp_path / "ws")
    items = {
        name: {"photo": person_photo(tmp_path / f"{name}.png", colour), "poses": "poses", "item_id": name}
        for name, colour in (("killed", (200, 40, 40)), ("zombie", (40, 160, 60)), ("stopped", (120, 40, 160)))
    }
    sup = Supervisor(tmp_path / "state", ws, tmp_path / "serve.log")
    ids: dict[str, str] = {}
    try:
        sup.start()
        deployed = subprocess.run(
            [str(serve.BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file", str(REPO / "prefect.yaml"),
             "--name", "catalog-item", "--pool", POOL],
            cwd=REPO, env=sup.client_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
        dep_id = requests.get(f"{sup.api}/deployments/name/catalog-item/catalog-item", timeout=60).json()["id"]

        # 1. One SIGKILL of the flow-run process while it works on the item: exactly one retry.
        ids["killed"] = batch.submit([items["killed"]], sup.api, str(ws))[0]
        _wait(lambda: _run_dirs(ws, "killed") and sup.flow_run_pids(), 300, "the item to start")
        for pid in sup.flow_run_pids():
            os.kill(pid, signal.SIGKILL)
        # 2. Meanwhile a run whose process vanished without a report: the heartbeat automation crashes it.
        ids["zombie"] = _fake_zombie(sup.api, dep_id, {**items["zombie"], "root": str(ws)})
        final = _wait(
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
        _wait(lambda: _run_dirs(ws, "stopped") and sup.flow_run_pids(), 300, "the third item to start")
        tree = [sup.proc.pid, *descendants(sup.proc.pid)]
        t0 = time.monotonic()
        sup.stop()
        stop_s = time.monotonic() - t0
        assert sup.proc.returncode == 0
        _wait(lambda: not [p for p in tree if _alive(p)], 30, "every process of the stack to end")
        runs = _mlflow(ws).search_runs([_mlflow(ws).get_experiment_by_name(EXPERIMENT).experiment_id])
        assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
        assert _run_dirs(ws, "stopped") == []  # no partial directory

        # 4. The next start retries it: registered once, nothing left behind.
        sup.start()
        final = _wait(
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
    print(f"stop took {stop_s:.1f} s")
