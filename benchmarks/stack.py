"""Catalog items per hour through the deployment stack with 1 and 2 process workers, and where an item's
time goes (finetune / render / score / registry), on tiny items (the tests' seeded tiny model, 2 finetune
steps, 6 frames, 2 DDIM steps).

The breakdown runs items in this process (``run_catalog_item``); the throughput submits a batch of
``N`` items to a local-profile stack (Prefect server + process workers, sqlite MLflow) and times it from
submission to the last completed run, so it includes each flow run's process start-up.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.common import emit

N = 4


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


def throughput(ws: Path, state: Path) -> dict[str, float]:
    from flows import REPO, batch, serve
    from flows.stack import Stack

    stack = Stack(
        state=state, profile="local", prefect_port=_free_port(), mlflow_port=_free_port(), pool="bench-stack",
        workers=1, extra_env={"PREFECT_HOME": str(state / "home"), "PREFECT_WORKER_QUERY_SECONDS": "1",
                              "MLFLOW_TRACKING_URI": f"sqlite:///{ws / 'mlruns.db'}"},
    )  # fmt: skip
    out = {}
    with stack:
        stack.start()
        env = stack.client_env()
        subprocess.run(
            [str(serve.BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file", str(REPO / "prefect.yaml"),
             "--name", "catalog-item", "--pool", "bench-stack"],
            cwd=REPO, env=env, check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        for workers in (1, 2):
            if workers == 2:
                stack.start_worker("worker-2")
            items = _items(ws, f"w{workers}")
            t0 = time.perf_counter()
            ids = batch.submit(items, stack.api, str(ws))
            final = batch.wait(stack.api, ids, timeout_s=1800, poll_s=1)
            wall = time.perf_counter() - t0
            if any(s != "COMPLETED" for s in final.values()):
                raise RuntimeError(f"{workers} worker(s): {final}")
            out[f"workers_{workers}_s"] = round(wall, 1)
            out[f"workers_{workers}_items_per_hour"] = round(N / wall * 3600, 1)
    return out


def main() -> None:
    from tests.flows.conftest import make_catalog_workspace

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as tmp:
        ws = make_catalog_workspace(Path(tmp) / "ws")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{ws / 'mlruns.db'}"
        parts = breakdown(ws)
        rates = throughput(ws, Path(tmp) / "state")
    one, two = rates["workers_1_items_per_hour"], rates["workers_2_items_per_hour"]
    emit(
        "stack_catalog_items_per_hour",
        {"items": N, "item": "tiny model 64x48, 2 finetune steps, 6 frames, DDIM 2", "cpus": os.cpu_count()},
        {"workers": 1, "items_per_hour": one, "batch_s": rates["workers_1_s"]},
        {"workers": 2, "items_per_hour": two, "batch_s": rates["workers_2_s"]},
        two / one,
        per_item_s=parts,
    )


if __name__ == "__main__":
    main()
