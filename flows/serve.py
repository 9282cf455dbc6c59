"""A local deployment stack on 127.0.0.1: Prefect server, a ``process`` work pool + worker, MLflow UI.

    python -m flows.serve            # what `make serve` runs; Ctrl-C stops all three

Each child runs in its own process group and is stopped by group: SIGTERM, then SIGKILL after a
grace period (a worker whose server has gone away can ignore SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import requests

from flows import REPO

WORK_POOL = "dreampose-local"
BIN = Path(sys.executable).parent


def api_url(host: str, port: int) -> str:
    return f"http://{host}:{port}/api"


def spawn(cmd: list[str], env: Mapping[str, str], log_path: Path | None = None, cwd: Path = REPO) -> subprocess.Popen:
    """Start ``cmd`` in a new process group (so it can be stopped with everything it started)."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            cmd, cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        if log_path:
            out.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a reused id owned by someone else
        return False
    return True


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> int | None:
    """SIGTERM the process group, SIGKILL whatever of it is left after ``grace_s``; returns the exit code.

    The group, not just the leader: a worker's flow-run processes (or a server's children) may
    outlive it and ignore SIGTERM.
    """
    pgid = proc.pid  # spawn() made it a group leader
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    return proc.wait(timeout=grace_s)


def wait_healthy(url: str, timeout_s: float = 120.0, proc: subprocess.Popen | None = None) -> float:
    """Poll ``<api>/health`` until it answers 200; returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"Prefect server exited with code {proc.returncode} before answering {url}/health")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return time.monotonic() - t0
        time.sleep(0.5)
    raise TimeoutError(f"Prefect server at {url} did not answer its health check within {timeout_s:.0f} s")


def server_env(url: str | None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.setdefault("PREFECT_HOME", str(REPO / ".prefect"))
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("DO_NOT_TRACK", "1")
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    if url:
        env["PREFECT_API_URL"] = url
    return env


def start_server(host: str, port: int, env: Mapping[str, str], log_path: Path | None = None) -> subprocess.Popen:
    cmd = [str(BIN / "prefect"), "server", "start", "--host", host, "--port", str(port)]
    return spawn(cmd, env, log_path)


def ensure_work_pool(pool: str, env: Mapping[str, str]) -> None:
    """Create the ``process`` work pool unless it exists."""
    res = subprocess.run(
        [str(BIN / "prefect"), "work-pool", "inspect", pool], env=dict(env), capture_output=True, text=True
    )
    if res.returncode == 0:
        return
    subprocess.run(
        [str(BIN / "prefect"), "work-pool", "create", pool, "--type", "process"],
        env=dict(env),
        check=True,
        capture_output=True,
        text=True,
    )


def start_worker(pool: str, env: Mapping[str, str], log_path: Path | None = None, cwd: Path = REPO):
    cmd = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"]
    return spawn(cmd, env, log_path, cwd=cwd)


def start_mlflow_ui(host: str, port: int, backend_uri: str, log_path: Path | None = None) -> subprocess.Popen:
    cmd = [str(BIN / "mlflow"), "ui", "--host", host, "--port", str(port), "--backend-store-uri", backend_uri]
    return spawn(cmd, server_env(None), log_path)


@contextlib.contextmanager
def running(procs: list[subprocess.Popen], grace_s: float = 10.0) -> Iterator[list[subprocess.Popen]]:
    """Stop every process in ``procs`` (last started first) on the way out, whatever happened."""
    try:
        yield procs
    finally:
        for p in reversed(procs):
            stop(p, grace_s)


def main(argv: list[str] | None = None) -> int:
    from dreampose import tracking

    p = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--prefect-port", type=int, default=4200)
    p.add_argument("--mlflow-port", type=int, default=5000)
    p.add_argument("--pool", default=WORK_POOL)
    args = p.parse_args(argv)
    url = api_url(args.host, args.prefect_port)
    env = server_env(url)
    logs = REPO / ".prefect" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking.default_tracking_uri(REPO)
    with running([]) as procs:
        procs.append(start_server(args.host, args.prefect_port, env, logs / "server.log"))
        waited = wait_healthy(url, proc=procs[0])
        ensure_work_pool(args.pool, env)
        procs.append(start_worker(args.pool, env, logs / "worker.log"))
        procs.append(start_mlflow_ui(args.host, args.mlflow_port, uri, logs / "mlflow.log"))
        print(f"Prefect server  http://{args.host}:{args.prefect_port}  (healthy after {waited:.1f} s)")
        print(f"Work pool       {args.pool} (process), worker log {logs / 'worker.log'}")
        print(f"MLflow UI       http://{args.host}:{args.mlflow_port}  ({uri})")
        print(f"In another shell:  export PREFECT_API_URL={url}")
        print("                   .venv/bin/prefect deploy --all")
        print("Ctrl-C stops all three.")
        try:
            while all(pr.poll() is None for pr in procs):
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        dead = [pr.args[1:3] for pr in procs if pr.poll() is not None]
        if dead:
            print(f"stopped: {dead} exited; see {logs}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
