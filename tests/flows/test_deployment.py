"""The real deployment path: `prefect server start` on 127.0.0.1, the stack's process worker (`python -m
flows.worker`, as `make serve` starts it), `prefect deploy` from prefect.yaml, a triggered catalog item, its
review=pending version, then approval through the CLI."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from dreampose import cli, registry, tracking
from flows import REPO
from flows.prefect_server import api_url, ensure_process_pool, server_env, start_server
from flows.processes import BIN, running, start_worker, wait_answering

MODEL = "catalog-test-model"
POOL = "dreampose-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefect(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_deployed_catalog_item_is_pending_then_approved(tmp_path, catalog_workspace):
    ws = catalog_workspace
    port = _free_port()
    url = api_url("127.0.0.1", port)
    # The worker polls every second (default 10 s) so the test does not wait on its schedule.
    base = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    env = server_env(url, base=base)
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []
    with running(procs, grace_s=10):
        procs.append(start_server("127.0.0.1", port, env, logs / "server.log"))
        # the timeout is a hang guard: minutes on a loaded machine
        wait_answering(f"{url}/health", procs[0], timeout_s=600, name="Prefect server", codes={200})
        ensure_process_pool(url, POOL)
        deployed = _prefect(
            ["deploy", "--prefect-file", str(REPO / "prefect.yaml"), "--name", "catalog-item", "--pool", POOL], env
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        procs.append(start_worker(POOL, "worker-1", env, logs / "worker.log"))
        run = _prefect(
            [
                "deployment", "run", "catalog-item/catalog-item",
                "--param", f"photo={ws / 'photo.png'}",
                "--param", "poses=poses",
                "--param", "item_id=served-1",
                "--param", f"root={ws}",
                "--watch", "--watch-interval", "1", "--watch-timeout", "600",  # minutes when the machine is loaded
            ],
            env,
            timeout=660,
        )  # fmt: skip
        worker_log = (logs / "worker.log").read_text(errors="replace")[-3000:]
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:] + worker_log
        assert "Completed" in run.stdout

    tracking.configure("catalog-test", ws)
    pending = registry.list_pending(MODEL)
    assert [v.tags["catalog_item"] for v in pending] == ["served-1"]
    version = pending[0].version
    assert cli.main(["--root", str(ws), "review", "approve", MODEL, version]) == 0
    assert registry.approved_version(MODEL, "served-1").version == version
    assert registry.list_pending(MODEL) == []
    for p in procs:
        assert p.poll() is not None  # everything started here has ended
