"""The deployment stack on 127.0.0.1: Prefect server, a ``process`` work pool + 2 workers, MLflow.

    python -m flows.serve                  # what `make serve` runs; SIGTERM or Ctrl-C stops everything
    python -m flows.serve --profile prod   # `make serve PROFILE=prod`: PostgreSQL + authenticated servers

The profiles, secrets and the worker supervisor are in ``flows.stack``.

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


def stop(proc: subprocess.Popen, grace_s: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
    """``sig`` (SIGTERM) to the process group, SIGKILL whatever of it is left after ``grace_s``; returns the exit code.

    The group, not just the leader: a worker's flow-run processes (or a server's children) may
    outlive it and ignore SIGTERM.
    """
    pgid = proc.pid  # spawn() made it a group leader
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
    deadline = time.monotonic() + grace_s
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    return proc.wait(timeout=grace_s)


def stop_all(procs: list[subprocess.Popen], grace_s: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """``stop`` for several process groups at once: one grace period for all of them, not one each."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        for proc in procs:
            proc.poll()
        if not any(_group_alive(p.pid) for p in procs):
            break
        time.sleep(0.1)
    for proc in procs:
        if _group_alive(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)


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


def start_mlflow_ui(
    host: str, port: int, backend_uri: str, log_path: Path | None = None, workers: int = 1, jobs: bool = False
) -> subprocess.Popen:
    """``mlflow ui`` with ``workers`` web workers; MLflow's job runner (a consumer process per job function) only
    with ``jobs``."""
    cmd = [str(BIN / "mlflow"), "ui", "--host", host, "--port", str(port), "--backend-store-uri", backend_uri,
           "--workers", str(workers)]  # fmt: skip
    env = server_env(None)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "true" if jobs else "false"
    return spawn(cmd, env, log_path)


@contextlib.contextmanager
def running(procs: list[subprocess.Popen], grace_s: float = 10.0) -> Iterator[list[subprocess.Popen]]:
    """Stop every process in ``procs`` (last started first) on the way out, whatever happened."""
    try:
        yield procs
    finally:
        for p in reversed(procs):
            stop(p, grace_s)


class Stop(Exception):
    """SIGTERM/SIGINT/SIGHUP, or the parent (``make``) went away: stop the stack."""


def _raise_stop(signum, _frame) -> None:
    raise Stop(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    from flows.stack import Stack, default_state

    p = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=("local", "prod"), default=os.environ.get("PROFILE") or "local")
    p.add_argument("--host", default=os.environ.get("DREAMPOSE_BIND") or "127.0.0.1", help="bind address")
    p.add_argument("--prefect-port", type=int, default=4200)
    p.add_argument("--mlflow-port", type=int, default=5000)
    p.add_argument("--pg-port", type=int, default=5432)
    p.add_argument("--pool", default=WORK_POOL)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--zombie-after", type=float, default=None, help="seconds without a heartbeat before a run is "
                   "marked Crashed (default: 3 heartbeat intervals, 90 s)")  # fmt: skip
    p.add_argument("--state", type=Path, default=None, help="state directory (default .serve/<profile>)")
    args = p.parse_args(argv)
    state = args.state or default_state(args.profile)
    stack = Stack(state=state.resolve(), profile=args.profile, host=args.host, prefect_port=args.prefect_port,
                  mlflow_port=args.mlflow_port, pg_port=args.pg_port, pool=args.pool, workers=args.workers)  # fmt: skip
    if args.zombie_after:
        stack.zombie_after_s = args.zombie_after
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _raise_stop)
    parent = os.getppid()
    rc = 0
    try:
        with stack:
            stack.start()
            print(f"Prefect server  {stack.api[: -len('/api')]}  (profile {args.profile})")
            print(f"Work pool       {args.pool}: {args.workers} process workers, logs in {stack.logs}")
            print(f"MLflow          http://{args.host}:{args.mlflow_port}  (tracking URI {stack.mlflow_uri})")
            if args.profile == "prod":
                print(f"Credentials     {stack.state / 'secrets'} (or DREAMPOSE_<NAME> / DREAMPOSE_<NAME>_FILE)")
            print(f"In another shell:  export PREFECT_API_URL={stack.api}")
            print("                   .venv/bin/prefect deploy --all")
            print(f"State           {stack.state} (Prefect database {stack.prefect_home / 'prefect.db'})")
            print("SIGTERM or Ctrl-C stops everything (what is running is settled and retried at the next start).",
                  flush=True)  # fmt: skip
            while True:
                if os.getppid() != parent:
                    raise Stop("parent exited")
                dead = stack.supervise_once(report=lambda m: print(m, file=sys.stderr, flush=True))
                if dead:
                    print(f"stopping: {dead} exited; see {stack.logs}", file=sys.stderr)
                    rc = 1
                    break
                time.sleep(1)
    except (Stop, KeyboardInterrupt) as why:
        print(f"stopping ({why or 'interrupt'})", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
