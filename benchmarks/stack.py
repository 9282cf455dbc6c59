"""Catalog items per hour through the deployment stack with one and with two flow runs at a time, and where
an item's time goes (finetune / render / score / registry), on tiny items (the tests' seeded tiny model,
2 finetune steps, 6 frames, 2 DDIM steps).

The breakdown runs items in this process (``run_catalog_item``). The throughput submits batches of ``N`` items
to one local-profile stack (Prefect server, two process workers, sqlite MLflow) and times each from submission
to the last completed run, so it includes each flow run's process start-up. The work pool's concurrency limit
switches between 1 and 2 flow runs between batches, interleaved ABBA, and the ratio is the median of the paired
batch ratios, so a loaded machine slows both sides of a pair alike.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import emit

N = 4
ROUNDS = 2  # pairs of (1, 2)-concurrency batches, ABBA


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _items(tmp: Path, tag: str) -> list[dict[str, str]]:
    from tests.flows.conftest import person_photo

    colours = [(30, 60, 200), (200, 40, 40), (40, 160, 60), (120, 40, 160)]
    return [
        {"photo": person_photo(tmp / f"{tag}{i}.png", colours[i % 4]), "poses": "poses", "item_id": f"{tag}-{i}"}
        for i in range(N)
    ]


def breakdown(ws: Path, runs: int = 2) -> dict[str, float]:
    from dreampose.catalog import run_catalog_item
    from dreampose.config import load_params

    params = load_params(ws / "params.yaml")
    parts: dict[str, list[float]] = {}
    for i, item in enumerate(_items(ws, "inproc")[:runs]):
        t0 = time.perf_counter()
        out = run_catalog_item(params, ws, item["photo"], "poses", item_id=item["item_id"])
        sec = out["seconds"]
        total = time.perf_counter() - t0
        row = {
            "finetune": sec["finetune"],
            "render": sec.get("load", 0.0) + sec["render"],
            "score": sec["score"],
            "registry": sec["registry"],
            "total": total,
        }
        if i == 0:
            continue  # the first item pays one-off imports
        for k, v in row.items():
            parts.setdefault(k, []).append(v)
    return {k: round(sum(v) / len(v), 2) for k, v in parts.items()}


def throughput(ws: Path, state: Path, rounds: int = ROUNDS) -> dict[str, Any]:
    """Batches of ``N`` items with the pool's concurrency at 1 and at 2, interleaved (ABBA order per pair of
    rounds) on one running stack of two workers, so both settings see the same machine load; returns each
    batch's wall time and the median of the paired rate ratios."""
    from flows import REPO, batch
    from flows.prefect_server import set_pool_concurrency
    from flows.processes import BIN
    from flows.stack import Stack

    stack = Stack(
        state=state, profile="local", prefect_port=_free_port(), mlflow_port=_free_port(), pool="bench-stack",
        workers=2, extra_env={"PREFECT_HOME": str(state / "home"), "PREFECT_WORKER_QUERY_SECONDS": "1",
                              "MLFLOW_TRACKING_URI": f"sqlite:///{ws / 'mlruns.db'}"},
    )  # fmt: skip
    walls: dict[int, list[float]] = {1: [], 2: []}
    with stack:
        stack.start()
        env = stack.client_env()
        subprocess.run(
            [str(BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file", str(REPO / "prefect.yaml"),
             "--name", "catalog-item", "--pool", "bench-stack"],
            cwd=REPO, env=env, check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        for r in range(rounds):
            for concurrency in (1, 2) if r % 2 == 0 else (2, 1):
                set_pool_concurrency(stack.api, "bench-stack", concurrency)
                items = _items(ws, f"r{r}c{concurrency}-")
                t0 = time.perf_counter()
                ids = batch.submit(items, stack.api, str(ws))
                final = batch.wait(stack.api, ids, timeout_s=1800, poll_s=1)
                wall = time.perf_counter() - t0
                if any(s != "COMPLETED" for s in final.values()):
                    raise RuntimeError(f"concurrency {concurrency}, round {r}: {final}")
                walls[concurrency].append(round(wall, 1))
    ratios = [one / two for one, two in zip(walls[1], walls[2], strict=True)]
    return {
        "walls": walls,
        "threads": stack.threads_per_run,
        "paired_ratios": [round(x, 3) for x in ratios],
        "ratio": statistics.median(ratios),
    }


def main() -> None:
    from tests.flows.conftest import make_catalog_workspace

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as tmp:
        ws = make_catalog_workspace(Path(tmp) / "ws")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{ws / 'mlruns.db'}"
        parts = breakdown(ws)
        rates = throughput(ws, Path(tmp) / "state")
    walls = rates["walls"]

    def side(concurrency: int) -> dict[str, Any]:
        med = statistics.median(walls[concurrency])
        rate = round(N / med * 3600, 1)
        return {"concurrent_runs": concurrency, "items_per_hour": rate, "batch_s": walls[concurrency]}

    emit(
        "stack_catalog_items_per_hour",
        {"items": N, "item": "tiny model 64x48, 2 finetune steps, 6 frames, DDIM 2", "cpus": os.cpu_count(),
         "workers": 2, "rounds": len(walls[1]), "omp_threads_per_run": rates["threads"]},
        side(1),
        side(2),
        rates["ratio"],
        paired_ratios=rates["paired_ratios"],
        per_item_s=parts,
        load_average=[round(x, 2) for x in os.getloadavg()],
    )  # fmt: skip


if __name__ == "__main__":
    main()
