"""Process-group control for the stack (``flows.processes``): a child that ignores SIGTERM is still ended; the wait
for a server gives up when the server dies."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from flows import processes

IGNORES_TERM = (
    "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print(os.getpid(), flush=True); time.sleep(60)"
)


def _gone(pid: int) -> bool:
    """Ended: no such process, or a zombie waiting for its (re)parent to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_stop_ends_the_whole_group_even_if_it_ignores_sigterm(tmp_path):
    log = tmp_path / "child.log"
    # The leader exits on SIGTERM but leaves a grandchild that ignores it, as a worker's flow runs may.
    script = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {IGNORES_TERM!r}]); time.sleep(60)"
    proc = processes.spawn([sys.executable, "-c", script], os.environ, log)
    t0 = time.monotonic()
    while not log.read_text().strip() and time.monotonic() - t0 < 20:
        time.sleep(0.05)
    grandchild = int(log.read_text().split()[0])
    assert processes.stop(proc, grace_s=1.0) is not None
    t0 = time.monotonic()
    while not _gone(grandchild) and time.monotonic() - t0 < 5:
        time.sleep(0.05)
    assert _gone(grandchild)


def test_running_stops_everything_on_error(tmp_path):
    procs = []
    with pytest.raises(RuntimeError, match="boom"), processes.running(procs, grace_s=1.0):
        procs.append(processes.spawn([sys.executable, "-c", "import time; time.sleep(60)"], os.environ))
        raise RuntimeError("boom")
    assert procs[0].poll() == -signal.SIGTERM


def test_wait_answering_reports_a_dead_server():
    proc = processes.spawn([sys.executable, "-c", "raise SystemExit(3)"], os.environ)
    proc.wait()
    with pytest.raises(RuntimeError, match="exited with code 3"):
        processes.wait_answering("http://127.0.0.1:9/api/health", proc, timeout_s=5, codes={200})
