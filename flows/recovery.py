"""Settling and retrying the stack's flow runs, over the Prefect and MLflow REST APIs (no Prefect client import).

Who ends an attempt, and who retries it:

- A flow-run process that dies is reported Crashed by its runner, then (the same exit) by its worker; a run whose
  heartbeats stop is marked Crashed by the zombie automation; a stop marks what was running Crashed with
  ``STOP_MESSAGE`` (``settle_orphans``).
- The supervisor alone retries (``retry_crashed``): a ``catalog-item`` run whose *current* state has been Crashed
  for ``settle_s`` seconds (so a second report of the same exit has landed and is absorbed) is rescheduled
  (``AwaitingRetry``) once, or failed when its crashes used up the attempts. A run that is Scheduled, Pending or
  Running is never touched, so a late crash report cannot stack a second retry on the first.
- Attempts count real crashes: a Running period that ended Crashed, once, however many reports said so; a
  crash caused by a stop (``STOP_MESSAGE``) is not a failed attempt.
- Concurrency leases: a deployment with a ``concurrency_limit`` holds one lease per Pending/Running run. Prefect
  releases it when the run leaves Pending/Running (``ReleaseFlowConcurrencySlots``) but copies its id forward
  into the Crashed and AwaitingRetry states (``PreserveDeploymentConcurrencyLeaseId``); the retry's own
  Scheduled → Pending transition takes a new lease (``SecureFlowConcurrencySlots``), which its engine renews. The
  "410 Gone" renewal failure came from a second Crashed report landing on the retry's Pending/Running state,
  which revoked the retry's live lease; retrying only from a settled Crashed state removes that.
- MLflow: an attempt's run (tag ``catalog.attempt_key`` = flow run id) left RUNNING by a dead process is marked
  KILLED and its ``catalog/<item>/<run_id>/`` directory removed (``settle_tracking``) at a stop and at a start,
  when no attempt can be live; the retry's own ``settle_attempts`` does the same for the run it replaces.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from flows.prefect_server import api_call

STOP_MESSAGE = "Stack stopped while this run was in flight; it is retried at the next start"
ATTEMPT_TAG = "catalog.attempt_key"  # dreampose.catalog.attempts.ATTEMPT_TAG (not imported: no torch here)
ITEM_FLOW = "catalog-item"
LIVE = ("RUNNING", "PENDING", "CANCELLING")


def _post(url: str, body: dict, auth=None, timeout: float = 30) -> requests.Response:
    res = api_call("POST", url, json=body, auth=auth, timeout=timeout)
    res.raise_for_status()
    return res


def flow_runs(api: str, pool: str, states: Iterable[str], auth=None, flow_name: str | None = None) -> list[dict]:
    """The pool's flow runs whose current state type is one of ``states`` (of flow ``flow_name`` if given)."""
    body: dict[str, Any] = {
        "flow_runs": {"state": {"type": {"any_": list(states)}}},
        "work_pools": {"name": {"any_": [pool]}},
        "limit": 200,
    }
    if flow_name:
        body["flows"] = {"name": {"any_": [flow_name]}}
    out, offset = [], 0
    while True:
        page = _post(f"{api}/flow_runs/filter", {**body, "offset": offset}, auth).json()
        out += page
        if len(page) < 200:
            return out
        offset += 200


def set_state(api: str, run_id: str, type_: str, name: str, message: str, auth=None, force: bool = True) -> dict:
    body = {"state": {"type": type_, "name": name, "message": message}, "force": force}
    return _post(f"{api}/flow_runs/{run_id}/set_state", body, auth).json()


def state_history(api: str, run_id: str, auth=None) -> list[dict]:
    res = api_call("GET", f"{api}/flow_run_states/", params={"flow_run_id": run_id}, auth=auth, timeout=30)
    res.raise_for_status()
    return sorted(res.json(), key=lambda s: s["timestamp"])


def failed_attempts(history: list[dict]) -> int:
    """Running periods that ended Crashed or Failed, counted once each however many reports said so; a period
    that a stop ended (``STOP_MESSAGE``) is not counted, and one that never reported an end is."""
    n, cur = 0, None
    for s in history:
        kind = s["type"]
        if kind == "RUNNING":
            if cur is not None and not cur["closed"] and not cur["stop"]:
                n += 1  # the previous Running period ended without a report
            cur = {"crash": False, "stop": False, "closed": False}
        elif cur is None or cur["closed"]:
            continue
        elif kind in ("CRASHED", "FAILED"):
            cur["crash"] = True
            cur["stop"] = cur["stop"] or (s.get("message") or "").startswith(STOP_MESSAGE)
        elif kind in ("SCHEDULED", "COMPLETED", "CANCELLED"):
            n += 1 if cur["crash"] and not cur["stop"] else 0
            cur["closed"] = True
    if cur is not None and not cur["closed"] and cur["crash"] and not cur["stop"]:
        n += 1
    return n


def crash_is_ours(submitted_run_count: int, state_type: str | None, run_count: int) -> bool:
    """Whether a worker's crash report for an attempt it submitted at ``submitted_run_count`` still concerns the
    run now in ``state_type`` with ``run_count``: the attempt is Running (it raised the count by one) or still
    Pending (``flows.worker``)."""
    if state_type == "RUNNING":
        return run_count == submitted_run_count + 1
    if state_type == "PENDING":
        return run_count == submitted_run_count
    return False  # already Crashed (reported), Scheduled for a retry, or final


def _age_s(state: dict) -> float:
    ts = datetime.fromisoformat(state["timestamp"].replace("Z", "+00:00"))
    return time.time() - ts.timestamp()


def retry_crashed(
    api: str,
    pool: str,
    max_attempts: int,
    settle_s: float = 5.0,
    auth=None,
    flow_name: str = ITEM_FLOW,
) -> dict[str, str]:
    """Reschedule each settled Crashed ``flow_name`` run once, or fail it after ``max_attempts`` failed attempts.

    Returns ``{flow_run_id: "retried" | "failed"}``. Only a run whose current state is Crashed is touched, and
    only ``settle_s`` after it became Crashed, so every report of one exit maps to one retry.
    """
    done: dict[str, str] = {}
    for run in flow_runs(api, pool, ["CRASHED"], auth, flow_name):
        if _age_s(run["state"]) < settle_s:
            continue
        failed = failed_attempts(state_history(api, run["id"], auth))
        if failed < max_attempts:
            msg = f"Retrying a crashed {flow_name} run (failed attempts so far: {failed} of {max_attempts})"
            new = set_state(api, run["id"], "SCHEDULED", "AwaitingRetry", msg, auth)
            done[run["id"]] = "retried" if new.get("status") == "ACCEPT" else "unchanged"
        else:
            msg = f"Giving up: {failed} failed attempts (the limit is {max_attempts})"
            set_state(api, run["id"], "FAILED", "Failed", msg, auth)
            done[run["id"]] = "failed"
    return done


def settle_orphans(api: str, pool: str, auth=None, only: Iterable[str] | None = None) -> list[dict]:
    """Mark the pool's Running/Pending runs (or those of ``only`` that ended Crashed on their own during the
    stop) Crashed with ``STOP_MESSAGE``: call it when no worker of the pool is running. Returns the runs."""
    runs = flow_runs(api, pool, LIVE, auth)
    if only:
        ids = {r["id"] for r in runs}
        runs += [r for r in flow_runs(api, pool, ["CRASHED"], auth) if r["id"] in set(only) and r["id"] not in ids]
    for run in runs:
        set_state(api, run["id"], "CRASHED", "Crashed", STOP_MESSAGE, auth)
    return runs


# ---------------------------------------------------------------- MLflow


def _ml(mlflow_url: str, path: str, body: dict, auth=None) -> dict:
    return _post(f"{mlflow_url}/api/2.0/mlflow/{path}", body, auth, timeout=60).json()


def running_item_runs(mlflow_url: str, auth=None) -> list[dict]:
    """MLflow runs of catalog attempts (tagged ``catalog.attempt_key``) that are still RUNNING, all experiments."""
    exps = _ml(mlflow_url, "experiments/search", {"max_results": 1000}, auth).get("experiments", [])
    if not exps:
        return []
    flt = f"attributes.status = 'RUNNING' and tags.`{ATTEMPT_TAG}` != ''"
    body = {"experiment_ids": [e["experiment_id"] for e in exps], "filter": flt, "max_results": 1000}
    return _ml(mlflow_url, "runs/search", body, auth).get("runs", [])


def settle_tracking(
    mlflow_url: str, api: str, base: Path, mlflow_auth=None, prefect_auth=None, only: Iterable[str] | None = None
) -> list[str]:
    """Mark RUNNING catalog-attempt runs KILLED and remove their ``catalog/<item>/<run_id>/`` directories; only the
    attempts of flow runs in ``only`` when given. Call it when no attempt can be live (workers stopped). The
    workspace is the flow run's ``root`` parameter (relative to ``base``, the workers' directory). Returns the
    MLflow run ids settled."""
    from dreampose.catalog.attempts import remove_run_dir

    only = set(only) if only is not None else None
    settled = []
    for run in running_item_runs(mlflow_url, mlflow_auth):
        tags = {t["key"]: t["value"] for t in run.get("data", {}).get("tags", [])}
        key, item, run_id = tags.get(ATTEMPT_TAG), tags.get("catalog_item"), run["info"]["run_id"]
        if only is not None and key not in only:
            continue
        res = api_call("GET", f"{api}/flow_runs/{key}", auth=prefect_auth, timeout=30)
        if res.status_code == 404:
            continue  # not a flow run of this server (e.g. `make demo`'s item on its own Prefect): not ours
        res.raise_for_status()
        flow_run = res.json()
        if (flow_run.get("state_type") or (flow_run.get("state") or {}).get("type")) in LIVE:
            continue
        _ml(mlflow_url, "runs/update", {"run_id": run_id, "status": "KILLED", "end_time": int(time.time() * 1000)},
            mlflow_auth)  # fmt: skip
        root = (flow_run.get("parameters") or {}).get("root") or "."
        if item:
            remove_run_dir((Path(base) / root).resolve(), item, run_id)
        settled.append(run_id)
    return settled
