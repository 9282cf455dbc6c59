"""Child processes of the stack: start each in its own process group, stop it by group, reap what it orphans, and
wait until a started server answers.

Each child runs in its own process group and is stopped by group: SIGTERM, then SIGKILL after a grace period
(a worker whose server has gone away can ignore SIGTERM, and a worker's flow-run processes may outlive it).
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import signal
import subprocess
import sys
import time
from collections.abc import Container, Iterator, Mapping
from pathlib import Path

import requests

from flows import REPO

BIN = Path(sys.executable).parent


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


def start_worker(
    pool: str, name: str, env: Mapping[str, str], log_path: Path | None = None, cwd: Path = REPO, limit: int = 1
) -> subprocess.Popen:
    """``python -m flows.worker`` (Prefect's process worker with an idempotent crash report) serving ``pool``,
    at most ``limit`` flow runs at once, with this checkout on its ``PYTHONPATH``."""
    env = dict(env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "flows.worker", "--pool", pool, "--name", name, "--limit", str(limit)]
    return spawn(cmd, env, log_path, cwd=cwd)


def group_alive(pgid: int) -> bool:
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
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if group_alive(pgid):
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
        if not any(group_alive(p.pid) for p in procs):
            break
        time.sleep(0.1)
    for proc in procs:
        if group_alive(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)


@contextlib.contextmanager
def running(procs: list[subprocess.Popen], grace_s: float = 10.0) -> Iterator[list[subprocess.Popen]]:
    """Stop every process in ``procs`` (last started first) on the way out, whatever happened."""
    try:
        yield procs
    finally:
        for p in reversed(procs):
            stop(p, grace_s)


def wait_answering(
    url: str,
    proc: subprocess.Popen | None = None,
    timeout_s: float = 120.0,
    name: str = "server",
    codes: Container[int] | None = None,
) -> float:
    """Poll ``url`` until it answers with a status in ``codes`` (default: any below 500); returns the seconds
    waited. Raises when ``proc`` (the server) exits first, or after ``timeout_s``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode} before answering {url}")
        with contextlib.suppress(requests.RequestException):
            status = requests.get(url, timeout=2).status_code
            if (status < 500) if codes is None else (status in codes):
                return time.monotonic() - t0
        time.sleep(0.5)
    raise TimeoutError(f"{name} at {url} did not answer within {timeout_s:.0f} s")


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux), so a server's grandchildren that outlive
    their parent are reaped here (``reap_orphans``) instead of waiting on a PID 1 that may never reap them."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    return False


def reap_orphans(keep: set[int]) -> int:
    """Reap exited children of this process that are not ``keep`` (the Popen objects reap those); returns how
    many."""
    n = 0
    for child in children_of(os.getpid()):
        if child in keep:
            continue
        with contextlib.suppress(ChildProcessError, OSError):
            if os.waitpid(child, os.WNOHANG)[0] == child:
                n += 1
    return n


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(stat.split("/")[2]))
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = children_of(todo.pop())
        out += kids
        todo += kids
    return out


@contextlib.contextmanager
def signals_held():
    """A second SIGTERM/SIGINT/SIGHUP during a stop does not cut its settling short (main thread only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
