"""The Prefect server of the stack: its environment and start, the ``process`` work pool, and the automation that
marks a flow run whose heartbeats stop Crashed."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import requests

from flows import REPO
from flows.processes import BIN, spawn

WORK_POOL = "dreampose-local"
PREFECT_USER = "dreampose"  # the production profile's basic-auth user
HEARTBEAT_S = 30  # Prefect's minimum flow-run heartbeat interval
LEGACY_AUTOMATIONS = ("dreampose: retry crashed",)  # replaced by the supervisor's retry (flows.recovery)


def api_call(method: str, url: str, attempts: int = 6, timeout: float = 60, **kw) -> requests.Response:
    """One API call, retried on 503 (the server's sqlite database busy, as on a loaded machine) and dropped
    connections, as Prefect's own client does; the last answer is returned."""
    for i in range(attempts):
        try:
            res = requests.request(method, url, timeout=timeout, **kw)
            if res.status_code != 503 or i == attempts - 1:
                return res
        except requests.ConnectionError:
            if i == attempts - 1:
                raise
        time.sleep(0.5 * 2**i)
    raise AssertionError("unreachable")


def api_url(host: str, port: int) -> str:
    return f"http://{host}:{port}/api"


def server_env(url: str | None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a server or CLI the stack starts: this checkout's Prefect home (unless set), no
    analytics, the virtualenv's ``bin`` first on ``PATH``, and ``PREFECT_API_URL`` when ``url`` is given."""
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


def automation_specs(zombie_after_s: float = 3 * HEARTBEAT_S) -> list[dict]:
    """Zombie detection: a flow run with no heartbeat for ``zombie_after_s`` (3 intervals) is marked Crashed. The
    retry of a crashed catalog item is the supervisor's (``flows.recovery.retry_crashed``), whoever marked it."""
    from datetime import timedelta

    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    zombie = AutomationCore(
        name="dreampose: crash zombie flow runs",
        description="A flow run whose heartbeats stop (its worker or machine died) is marked Crashed.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=zombie_after_s),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message="No heartbeat: the flow run's process is gone")],
    )
    return [zombie.model_dump(mode="json")]


def ensure_process_pool(api: str, pool: str, auth: tuple[str, str] | None = None) -> None:
    """Create the ``process`` work pool unless it exists (the REST call: no CLI start-up)."""
    res = api_call("POST", f"{api}/work_pools/", json={"name": pool, "type": "process"}, auth=auth, timeout=30)
    if res.status_code not in (200, 201, 409):
        res.raise_for_status()


def set_pool_concurrency(api: str, pool: str, limit: int | None, auth: tuple[str, str] | None = None) -> None:
    """How many flow runs of ``pool`` may run at once across all its workers (``None``: no limit)."""
    res = api_call("PATCH", f"{api}/work_pools/{pool}", json={"concurrency_limit": limit}, auth=auth, timeout=30)
    res.raise_for_status()


def ensure_automations(
    api: str, auth: tuple[str, str] | None = None, zombie_after_s: float = 3 * HEARTBEAT_S
) -> list[str]:
    """Create the stack's automations unless automations of the same names exist, and delete the retry automation
    of earlier versions (it raced the worker's crash report); returns their names."""
    have = api_call("POST", f"{api}/automations/filter", json={}, auth=auth, timeout=10)
    have.raise_for_status()
    names = {a["name"] for a in have.json()}
    for a in have.json():
        if a["name"].startswith(LEGACY_AUTOMATIONS):
            api_call("DELETE", f"{api}/automations/{a['id']}", auth=auth, timeout=10).raise_for_status()
    specs = automation_specs(zombie_after_s)
    for spec in specs:
        if spec["name"] not in names:
            api_call("POST", f"{api}/automations/", json=spec, auth=auth, timeout=10).raise_for_status()
    return [s["name"] for s in specs]
