"""The stack's pieces without servers: secrets, the worker supervisor, the orphan watchdog."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pytest

from flows import REPO, processes, recovery
from flows.credentials import secret
from flows.mlflow_server import mlflow_jobs_enabled, mlflow_web_workers
from flows.prefect_server import automation_specs
from flows.processes import become_subreaper, descendants, reap_orphans
from flows.stack import Stack, default_state


def test_secret_from_env_file_or_generated(tmp_path):
    assert secret("PG_PASSWORD", tmp_path / "s", {"DREAMPOSE_PG_PASSWORD": "from-env"}) == "from-env"
    f = tmp_path / "pw.txt"
    f.write_text("from-file\n")
    assert secret("PG_PASSWORD", tmp_path / "s", {"DREAMPOSE_PG_PASSWORD_FILE": str(f)}) == "from-file"
    f.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        secret("PG_PASSWORD", tmp_path / "s", {"DREAMPOSE_PG_PASSWORD_FILE": str(f)})
    made = secret("PG_PASSWORD", tmp_path / "s", {})
    assert len(made) >= 24 and secret("PG_PASSWORD", tmp_path / "s", {}) == made  # generated once
    assert stat.S_IMODE((tmp_path / "s" / "pg_password").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o700


def test_supervisor_restarts_a_dead_worker_then_gives_up(tmp_path, monkeypatch):
    stack = Stack(state=tmp_path, max_restarts=2, restart_window_s=60)
    started = []

    def fake_start(name):
        proc = processes.spawn([sys.executable, "-c", "raise SystemExit(9)"], os.environ)
        proc.wait()
        stack.procs[name] = proc
        started.append(name)
        return proc

    monkeypatch.setattr(stack, "start_worker", fake_start)
    fake_start("worker-1")
    stack.procs["prefect"] = processes.spawn([sys.executable, "-c", "import time; time.sleep(30)"], os.environ)
    msgs: list[str] = []
    try:
        assert stack.supervise_once(now=0, report=msgs.append) == []
        assert stack.supervise_once(now=1, report=msgs.append) == []
        assert stack.supervise_once(now=2, report=msgs.append) == []  # third death in the window: give up
        assert started == ["worker-1"] * 3
        assert "worker-1" not in stack.procs and stack.abandoned == {"worker-1"}
        assert "serving without it" in msgs[-1] and "restarting" in msgs[0]
        stack.procs["prefect"].kill()
        stack.procs["prefect"].wait()
        assert stack.supervise_once(now=3, report=msgs.append) == ["prefect"]  # a server's death is reported
    finally:
        stack.stop(grace_s=1)


def test_flow_run_process_ends_when_its_worker_dies(tmp_path):
    # A "worker" starts a flow-run-like child running the watchdog, then dies by SIGKILL.
    child = (
        f"import signal, sys, time; sys.path.insert(0, {str(REPO)!r})\n"
        "from flows.catalog_item import end_with_parent\n"
        "def bye(*a):\n    print('terminated', flush=True); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye); end_with_parent(poll_s=0.05)\n"
        "print('ready', flush=True); time.sleep(60)\n"
    )
    log = tmp_path / "child.log"
    worker = (
        f"import subprocess, sys, os, signal, time\n"
        f"subprocess.Popen([sys.executable, '-c', {child!r}], stdout=open({str(log)!r}, 'w'))\n"
        f"t0 = time.time()\n"
        f"while 'ready' not in open({str(log)!r}).read() and time.time() - t0 < 60: time.sleep(0.05)\n"
        f"os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", worker], timeout=90)
    t0 = time.monotonic()
    while "terminated" not in log.read_text() and time.monotonic() - t0 < 20:
        time.sleep(0.1)
    assert "terminated" in log.read_text()


def test_automation_crashes_zombies_and_leaves_the_retry_to_the_supervisor():
    specs = automation_specs(zombie_after_s=90)
    assert len(specs) == 1  # no retry automation: it raced the worker's second report of the same crash
    zombie = specs[0]
    assert zombie["trigger"]["posture"] == "Proactive" and zombie["trigger"]["within"] == 90.0
    assert zombie["actions"][0]["state"] == "CRASHED"


def _state(kind: str, message: str = "", name: str | None = None) -> dict:
    return {"type": kind, "name": name or kind.title(), "message": message}


def test_failed_attempts_counts_each_crash_once_and_not_a_stop():
    run, crash, retry = _state("RUNNING"), _state("CRASHED", "exit -9"), _state("SCHEDULED", name="AwaitingRetry")
    stop = _state("CRASHED", recovery.STOP_MESSAGE)
    assert recovery.failed_attempts([_state("SCHEDULED"), _state("PENDING"), run]) == 0
    assert recovery.failed_attempts([run, crash, crash]) == 1  # runner and worker report the same exit
    assert recovery.failed_attempts([run, crash, retry, _state("PENDING"), run, crash]) == 2
    assert recovery.failed_attempts([run, crash, stop, retry, run, _state("COMPLETED")]) == 0  # a stop
    assert recovery.failed_attempts([run, stop, retry, run, crash]) == 1
    assert recovery.failed_attempts([run, _state("PENDING"), run, crash]) == 2  # a lost report still counts


def test_profiles_have_their_own_prefect_database_and_state():
    local, prod = (Stack(state=default_state(p), profile=p) for p in ("local", "prod"))
    assert local.state != prod.state and REPO / ".prefect" not in (local.state, prod.state)
    envs = [s.server_env() for s in (local, prod)]
    urls = [e["PREFECT_API_DATABASE_CONNECTION_URL"] for e in envs]
    assert urls[0] != urls[1] and all(str(s.state) in u for s, u in zip((local, prod), urls, strict=True))
    assert envs[0]["PREFECT_HOME"] != envs[1]["PREFECT_HOME"]
    # A client's PREFECT_HOME is its profile's too, whatever the caller's environment says.
    other = Stack(state=default_state("local"), extra_env={"PREFECT_HOME": "/tmp/elsewhere"})
    assert other.client_env()["PREFECT_HOME"] == str(default_state("local") / "prefect")


def test_mlflow_servers_sized_for_the_machine(monkeypatch):
    monkeypatch.delenv("DREAMPOSE_MLFLOW_WORKERS", raising=False)
    monkeypatch.delenv("DREAMPOSE_MLFLOW_JOBS", raising=False)
    assert [mlflow_web_workers(c) for c in (1, 2, 4, 8, 64)] == [1, 1, 2, 4, 4]
    assert not mlflow_jobs_enabled(2) and mlflow_jobs_enabled(16)
    monkeypatch.setenv("DREAMPOSE_MLFLOW_WORKERS", "3")
    monkeypatch.setenv("DREAMPOSE_MLFLOW_JOBS", "1")
    assert mlflow_web_workers(2) == 3 and mlflow_jobs_enabled(2)


def test_stop_reaps_orphaned_grandchildren(tmp_path):
    """A server whose children outlive it (MLflow's job runners): after a stop none is left a zombie."""
    assert become_subreaper()
    script = (
        "import subprocess, sys, time\n"
        "for _ in range(3): subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1)'])\n"
        "time.sleep(60)\n"
    )
    proc = processes.spawn([sys.executable, "-c", script], os.environ)
    time.sleep(0.5)
    grandchildren = descendants(proc.pid)
    processes.stop(proc, grace_s=2)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10 and any(os.path.exists(f"/proc/{p}") for p in grandchildren):
        reap_orphans({proc.pid})
        time.sleep(0.1)
    assert not [p for p in grandchildren if os.path.exists(f"/proc/{p}")]


def test_worker_reports_a_crash_only_for_the_attempt_it_submitted():
    crash_is_ours = recovery.crash_is_ours
    # Submitted at run_count 1: the attempt raised it to 2 when it started running.
    assert crash_is_ours(1, "RUNNING", 2)  # the runner's report did not land: the worker's does
    assert crash_is_ours(1, "PENDING", 1)  # the attempt never started
    assert not crash_is_ours(1, "CRASHED", 2)  # the runner reported this exit already
    assert not crash_is_ours(1, "SCHEDULED", 2)  # its retry is scheduled: a second report would add a retry
    assert not crash_is_ours(1, "PENDING", 2)  # the retry is being submitted
    assert not crash_is_ours(1, "RUNNING", 3)  # the retry runs: a report would release its concurrency lease
