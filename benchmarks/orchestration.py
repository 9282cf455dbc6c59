"""Orchestration overhead: ``dvc repro`` with nothing stale, and Prefect's cost per task.

- dvc: the demo workspace (this repo, after ``make demo``) vs a bare 4-stage DVC repo built here.
- prefect: a flow of N trivial tasks on the ephemeral local server vs the same N plain calls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import emit

REPO = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc"]


def _time_cmd(cmd: list[str], cwd: Path, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


def _bare_repo(tmp: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(tmp)], check=True)
    subprocess.run([*DVC, "init", "-q"], cwd=tmp, check=True)
    stages = {}
    prev = None
    for i in range(4):
        out = f"s{i}.txt"
        deps = [prev] if prev else []
        stages[f"s{i}"] = {"cmd": f"echo {i} > {out}", "deps": deps, "outs": [out]}
        prev = out
    (tmp / "dvc.yaml").write_text(json.dumps({"stages": stages}))
    subprocess.run([*DVC, "repro", "-q"], cwd=tmp, check=True, capture_output=True)
    return tmp


def bench_dvc() -> None:
    with tempfile.TemporaryDirectory() as d:
        bare = _time_cmd([*DVC, "repro"], _bare_repo(Path(d)))
    status = subprocess.run([*DVC, "status", "--json"], cwd=REPO, capture_output=True, text=True)
    clean = status.returncode == 0 and status.stdout.strip() in ("{}", "")
    lock = (REPO / "dvc.lock").is_file()
    if clean and lock:
        ours = _time_cmd([*DVC, "repro"], REPO)
        emit(
            "dvc_repro_noop",
            {"workspace": "demo (this repo)", "goal_s": 5.0},
            {"what": "bare 4-stage DVC repo, nothing stale", "seconds": round(bare, 3)},
            {"what": "demo workspace, nothing stale", "seconds": round(ours, 3)},
            bare / ours,
            note="ratio = bare/ours: 1.0 means the demo workspace costs no more than a bare repo",
        )
    else:
        emit(
            "dvc_repro_noop",
            {"workspace": "demo (this repo)", "goal_s": 5.0},
            {"what": "bare 4-stage DVC repo, nothing stale", "seconds": round(bare, 3)},
            {"status": "unavailable", "reason": "demo workspace not built or stale: run `make demo` first"},
            None,
        )


def bench_prefect(n: int = 20) -> None:
    os.environ.setdefault("PREFECT_HOME", str(Path(tempfile.mkdtemp()) / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect import flow, task

    def work(i: int) -> int:
        return i * i

    @task(cache_policy=None, persist_result=False)
    def work_task(i: int) -> int:
        return work(i)

    @flow(persist_result=False)
    def many(k: int) -> int:
        return sum(work_task(i) for i in range(k))

    many(2)  # start the ephemeral server once; its start-up is not per-task overhead
    t0 = time.perf_counter()
    many(n)
    t_flow = time.perf_counter() - t0
    t0 = time.perf_counter()
    sum(work(i) for i in range(n))
    t_plain = time.perf_counter() - t0
    per_task = (t_flow - t_plain) / n
    emit(
        "prefect_task_overhead",
        {"tasks": n, "server": "ephemeral", "goal_s_per_task": 1.0},
        {"what": "plain function calls", "seconds_per_call": t_plain / n},
        {"what": "Prefect tasks in a flow", "seconds_per_task": round(per_task, 4)},
        1.0 / per_task if per_task > 0 else None,
        note="ratio = goal / overhead per task (the 1 s budget over what a task costs)",
    )


if __name__ == "__main__":
    bench_dvc()
    bench_prefect()
