"""A stack run as an operator runs it: ``python -m flows.serve`` in a subprocess (tests and benchmarks/soak.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from flows import REPO
from flows.prefect_server import api_url
from flows.processes import BIN, descendants


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_cli(env: dict[str, str], *args: str, timeout_s: float = 600) -> str:
    """The ``prefect`` CLI with ``env`` (a stack's client environment), from the repository root; its stdout (it
    must succeed)."""
    done = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def deploy_catalog_item(env: dict[str, str], pool: str, timeout_s: float = 600) -> None:
    """``prefect deploy`` of the catalog-item deployment from prefect.yaml into ``pool``."""
    prefect_cli(
        env, "deploy", "--prefect-file", str(REPO / "prefect.yaml"), "--name", "catalog-item", "--pool", pool,
        timeout_s=timeout_s,
    )  # fmt: skip


class Supervisor:
    """``python -m flows.serve`` in a subprocess, as ``make serve`` runs it."""

    def __init__(self, state: Path, ws: Path, log: Path, pool: str, workers: int = 1, zombie_after_s: float = 60):
        self.state, self.ws, self.log, self.pool = state, ws, log, pool
        self.workers, self.zombie_after_s = workers, zombie_after_s
        self.prefect_port, self.mlflow_port = free_port(), free_port()
        self.api = api_url("127.0.0.1", self.prefect_port)
        self.proc: subprocess.Popen | None = None
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "MLFLOW_TRACKING_URI": f"sqlite:///{ws / 'mlruns.db'}",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "OMP_NUM_THREADS": "1",
        }

    def start(self, timeout_s: float = 400) -> float:
        """Start the supervisor and wait until it serves; returns the seconds that took."""
        seen = self.log.stat().st_size if self.log.exists() else 0
        out = open(self.log, "a")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flows.serve", "--state", str(self.state), "--pool", self.pool,
             "--workers", str(self.workers), "--prefect-port", str(self.prefect_port),
             "--mlflow-port", str(self.mlflow_port), "--zombie-after", str(self.zombie_after_s)],
            cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out.close()
        t0 = time.monotonic()
        while "stops everything" not in self.log.read_text(errors="replace")[seen:]:
            assert self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
            assert time.monotonic() - t0 < timeout_s, self.log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        return time.monotonic() - t0

    def client_env(self) -> dict[str, str]:
        return {**self.env, "PREFECT_API_URL": self.api, "PREFECT_HOME": str(self.state / "prefect")}

    def worker_pids(self) -> list[int]:
        return [p for p in descendants(self.proc.pid) if b"flows.worker" in cmdline(p)]

    def flow_run_pids(self) -> list[int]:
        """Flow-run processes: what the workers started."""
        return [c for w in self.worker_pids() for c in descendants(w) if b"resource_tracker" not in cmdline(c)]

    def prefect(self, *args: str, timeout_s: float = 600) -> str:
        """The ``prefect`` CLI against this stack (``prefect_cli``)."""
        return prefect_cli(self.client_env(), *args, timeout_s=timeout_s)

    def deploy(self) -> None:
        deploy_catalog_item(self.client_env(), self.pool)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=120)


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_for(cond, timeout_s: float, what: str, poll_s: float = 0.3):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        got = cond()
        if got:
            return got
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
