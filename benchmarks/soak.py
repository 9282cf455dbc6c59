"""Soak test of the serving stack: submit N catalog items, kill things at random times, restart, count what is lost.

    python -m benchmarks.soak --items 12 --kills 4 --seed 0     # not part of `make bench`: tens of minutes

A local-profile stack (``python -m flows.serve``: Prefect server, two process workers, MLflow UI, all on
127.0.0.1) serves N tiny catalog items (the tests' seeded tiny model). While they run, ``--kills`` kills of each
kind happen in a random order, each after a random pause (``--gap`` seconds, bounded):

- ``flow_run``: SIGKILL of one flow-run process (a worker's child) → its worker reports the crash, the
  supervisor retries the item once;
- ``worker``: SIGKILL of one worker → the supervisor restarts it, its flow run ends itself (watchdog);
- ``supervisor``: alternately SIGTERM to the supervisor (a stop: it settles what is running) and SIGKILL of the
  supervisor and every process it started at once (a lost machine or a cgroup kill: nothing is settled then,
  the next start does it); either way the stack is started again.

Then it waits until every item is final and reports one JSON line (``benchmarks/results.jsonl``): items
submitted, registered exactly once, lost, duplicated, MLflow runs left RUNNING, partial run directories left,
per item the flow run's runs (``run_count``), failed attempts, retries (AwaitingRetry states) and Crashed
reports, kills done per kind, seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import emit

POOL = "soak"
MODEL = "catalog-test-model"


def _items(tmp: Path, n: int) -> list[dict[str, str]]:
    from tests.flows.conftest import person_photo

    rng = random.Random(n)
    return [
        {
            "photo": person_photo(tmp / f"soak-{i}.png", tuple(rng.randrange(20, 220) for _ in range(3))),
            "poses": "poses",
            "item_id": f"soak-{i:02d}",
        }
        for i in range(n)
    ]


def _kill(sup, kind: str, rng: random.Random, n_super: int, log: list[dict]) -> bool:
    """One kill of ``kind``; False when there was nothing of that kind to kill right now."""
    from flows.processes import descendants

    t = round(time.monotonic(), 1)
    if kind in ("flow_run", "worker"):
        pids = sup.flow_run_pids() if kind == "flow_run" else sup.worker_pids()
        if not pids:
            return False
        pid = rng.choice(pids)
        os.kill(pid, signal.SIGKILL)
        log.append({"t": t, "kind": kind, "pid": pid})
        return True
    # the supervisor: a stop (SIGTERM) or a hard kill of everything it started (nothing settles at stop)
    if n_super % 2 == 0:
        t0 = time.monotonic()
        sup.stop()
        log.append({"t": t, "kind": kind, "how": "SIGTERM", "stop_s": round(time.monotonic() - t0, 1)})
    else:
        tree = [sup.proc.pid, *descendants(sup.proc.pid)]
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        sup.proc.wait(timeout=30)
        log.append({"t": t, "kind": kind, "how": "SIGKILL (all)", "processes": len(tree)})
    log[-1]["restart_s"] = round(sup.start(), 1)
    return True


def soak(n_items: int, kills: int, seed: int, gap: tuple[float, float], timeout_s: float) -> dict[str, Any]:
    from mlflow import MlflowClient

    from flows import batch, recovery
    from tests.flows.conftest import make_catalog_workspace
    from tests.flows.supervisor import Supervisor, wait_for

    rng = random.Random(seed)
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp_s:
        tmp = Path(tmp_s)
        ws = make_catalog_workspace(tmp / "ws")
        items = _items(tmp, n_items)
        sup = Supervisor(tmp / "state", ws, tmp / "serve.log", POOL, workers=2, zombie_after_s=90)
        kill_log: list[dict] = []
        try:
            sup.start()
            sup.deploy()
            ids = batch.submit(items, sup.api, str(ws))
            plan = [k for k in ("flow_run", "worker", "supervisor") for _ in range(kills)]
            rng.shuffle(plan)
            n_super = 0
            deadline = time.monotonic() + timeout_s
            while plan and time.monotonic() < deadline:
                time.sleep(rng.uniform(*gap))
                states = batch.states(sup.api, ids)
                if all(s in batch.FINAL for s in states.values()):
                    break  # nothing left to disturb
                kind = plan[0]
                if _kill(sup, kind, rng, n_super, kill_log):
                    plan.pop(0)
                    n_super += kind == "supervisor"
                elif kind != "supervisor":
                    plan.append(plan.pop(0))  # nothing of that kind running now: try another kind first
            final = wait_for(
                lambda: (s := batch.states(sup.api, ids)) and all(v in batch.FINAL for v in s.values()) and s,
                max(60.0, deadline - time.monotonic()),
                "every item to finish",
                poll_s=2,
            )
            runs = {i: sup_run for i, sup_run in zip(ids, _flow_runs(sup.api, ids), strict=True)}
            attempts = {}
            for item, i in zip(items, ids, strict=True):
                history = recovery.state_history(sup.api, i)
                attempts[item["item_id"]] = {
                    "runs": runs[i]["run_count"],
                    "failed": recovery.failed_attempts(history),
                    "retries": sum(1 for s in history if s["name"] == "AwaitingRetry"),
                    "crash_reports": sum(1 for s in history if s["type"] == "CRASHED"),
                    "state": final[i],
                }
        finally:
            sup.stop()
        uri = f"sqlite:///{ws / 'mlruns.db'}"
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        exp = client.get_experiment_by_name("catalog-test")
        all_runs = client.search_runs([exp.experiment_id], max_results=5000) if exp else []
        registered, lost, duplicated, partial = 0, [], [], []
        for item in items:
            name = item["item_id"]
            versions = client.search_model_versions(f"name = '{MODEL}' and tags.catalog_item = '{name}'")
            dirs = sorted(p.name for p in (ws / "catalog" / name).iterdir()) if (ws / "catalog" / name).is_dir() else []
            if len(versions) == 1:
                registered += 1
            elif not versions:
                lost.append(name)
            else:
                duplicated.append(name)
            partial += [f"{name}/{d}" for d in dirs if d not in {v.run_id for v in versions}]
        zombies = _zombies()
    return {
        "submitted": n_items,
        "registered_once": registered,
        "lost": lost,
        "duplicated": duplicated,
        "running_runs_left": [r.info.run_id for r in all_runs if r.info.status == "RUNNING"],
        "partial_dirs_left": partial,
        "attempts": attempts,
        "kills": {k: sum(1 for x in kill_log if x["kind"] == k) for k in ("flow_run", "worker", "supervisor")},
        "kill_log": kill_log,
        "zombie_processes_left": zombies,
        "seconds": round(time.monotonic() - t_start, 1),
    }


def _flow_runs(api: str, ids: list[str]) -> list[dict]:
    import requests

    return [requests.get(f"{api}/flow_runs/{i}", timeout=60).json() for i in ids]


def _zombies() -> int:
    """Zombie children of this process (what a stop failed to reap)."""
    from flows.processes import children_of

    n = 0
    for pid in children_of(os.getpid()):
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                n += 1
        except OSError:
            continue
    return n


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=12)
    p.add_argument("--kills", type=int, default=4, help="kills of each kind (flow run, worker, supervisor)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gap", type=float, nargs=2, default=(10.0, 30.0), help="pause before each kill: min max (s)")
    p.add_argument("--timeout", type=float, default=3600, help="bound on the whole soak (s)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results.jsonl"), help="'' to skip")
    a = p.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    report = soak(a.items, a.kills, a.seed, tuple(a.gap), a.timeout)
    print(json.dumps(report, indent=1), file=sys.stderr)
    ok = (
        report["registered_once"] == report["submitted"]
        and not report["running_runs_left"]
        and not report["partial_dirs_left"]
    )
    rec = emit(
        "stack_soak",
        {"items": a.items, "kills_per_kind": a.kills, "seed": a.seed, "gap_s": list(a.gap), "workers": 2,
         "cpus": os.cpu_count()},
        {},
        {k: v for k, v in report.items() if k != "kill_log"},
        None,
        all_registered_once_nothing_left=ok,
        load_average=[round(x, 2) for x in os.getloadavg()],
    )  # fmt: skip
    if a.out:  # not part of `make bench` (it takes tens of minutes): it appends its own line
        with open(a.out, "a") as fh:
            fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
