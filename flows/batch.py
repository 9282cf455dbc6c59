"""Many catalog items at once: a CSV or a folder of photos → one ``catalog-item`` flow run per item.

    python -m flows.batch items.csv                       # columns photo, poses[, item_id, ground_truth]
    python -m flows.batch photos/ --poses syn_test_000    # every photo, one pose sequence, item id = file stem
    python -m flows.batch items.csv --wait                # --wait reports each item's outcome

The runs go to the deployment (default ``catalog-item/catalog-item``) on a running stack (``make serve``,
``PREFECT_API_URL``; ``PREFECT_API_AUTH_STRING`` for the production profile), which spreads them over
its workers. Each item's id names its own ``catalog/<item_id>/<run_id>/``, so ids must be unique.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

from flows.prefect_server import api_call

DEPLOYMENT = "catalog-item/catalog-item"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
FINAL = {"COMPLETED", "FAILED", "CANCELLED"}  # CRASHED is not final here: the stack retries it


def read_batch(source: Path, poses: str | None = None) -> list[dict[str, str]]:
    """The items of a CSV (``photo``, ``poses``, optional ``item_id``/``ground_truth``) or a photo folder."""
    from dreampose.catalog import item_id_from

    source = Path(source)
    if source.is_dir():
        if not poses:
            raise ValueError(f"{source}: a folder of photos needs --poses (one pose sequence for every photo)")
        photos = sorted(p for p in source.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
        items = [{"photo": str(p.resolve()), "poses": poses} for p in photos]
    elif source.is_file():
        with source.open(newline="") as fh:
            reader = csv.DictReader(fh)
            required = {"photo"} if poses else {"photo", "poses"}
            missing = required - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{source}: missing column(s) {sorted(missing)}")
            items = []
            for row in reader:
                item = {k: v.strip() for k, v in row.items() if k and v and v.strip()}
                item.setdefault("poses", poses or "")
                photo = Path(item["photo"])
                if not photo.is_absolute() and "://" not in item["photo"]:
                    item["photo"] = str((source.parent / photo).resolve())
                items.append(item)
    else:
        raise FileNotFoundError(f"{source}: no such CSV file or photo folder")
    if not items:
        raise ValueError(f"{source}: no items")
    ids = [item_id_from(i["photo"], i.get("item_id")) for i in items]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"{source}: item ids must be unique, repeated: {dup}")
    for item, item_id in zip(items, ids, strict=True):
        item["item_id"] = item_id
    return items


def _auth() -> tuple[str, str] | None:
    auth = os.environ.get("PREFECT_API_AUTH_STRING")
    if not auth:
        return None
    user, _, password = auth.partition(":")
    return user, password


def submit(items: list[dict[str, str]], api: str, root: str, deployment: str = DEPLOYMENT, auth=None) -> list[str]:
    """One flow run of ``deployment`` per item; returns the flow run ids in item order."""
    flow, _, name = deployment.partition("/")
    res = api_call("GET", f"{api}/deployments/name/{flow}/{name}", auth=auth)
    if res.status_code == 404:
        raise ValueError(f"no deployment {deployment!r} at {api} (run `prefect deploy --all` first)")
    res.raise_for_status()
    dep_id = res.json()["id"]
    ids = []
    for item in items:
        params = {**item, "root": root}
        r = api_call(
            "POST",
            f"{api}/deployments/{dep_id}/create_flow_run",
            json={"parameters": params, "name": f"item-{item['item_id']}"},
            auth=auth,
        )
        r.raise_for_status()
        ids.append(r.json()["id"])
    return ids


def states(api: str, run_ids: list[str], auth=None) -> dict[str, str]:
    """``{flow_run_id: state type}`` for the given runs."""
    r = api_call(
        "POST", f"{api}/flow_runs/filter", json={"flow_runs": {"id": {"any_": run_ids}}, "limit": 200}, auth=auth
    )
    r.raise_for_status()
    return {fr["id"]: (fr.get("state_type") or fr["state"]["type"]) for fr in r.json()}


def wait(api: str, run_ids: list[str], timeout_s: float = 3600, poll_s: float = 2.0, auth=None) -> dict[str, str]:
    """Poll until every run is COMPLETED, FAILED or CANCELLED (a CRASHED one is being retried)."""
    t0 = time.monotonic()
    while True:
        now = states(api, run_ids, auth)
        if all(now.get(i) in FINAL for i in run_ids) or time.monotonic() - t0 > timeout_s:
            return now
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.batch", description=__doc__.splitlines()[0])
    p.add_argument("source", type=Path, help="a CSV (photo, poses[, item_id, ground_truth]) or a folder of photos")
    p.add_argument("--poses", default=None, help="pose sequence for every item (a folder of photos needs it)")
    p.add_argument("--root", default=".", help="the workspace the workers run in")
    p.add_argument("--deployment", default=DEPLOYMENT)
    p.add_argument("--api", default=os.environ.get("PREFECT_API_URL"), help="default: $PREFECT_API_URL")
    p.add_argument("--wait", action="store_true", help="wait for every item and exit 1 unless all completed")
    p.add_argument("--timeout", type=float, default=3600)
    a = p.parse_args(argv)
    if not a.api:
        print("flows.batch: error: set PREFECT_API_URL (see `make serve`) or pass --api", file=sys.stderr)
        return 2
    try:
        items = read_batch(a.source, a.poses)
        ids = submit(items, a.api, str(Path(a.root).resolve()), a.deployment, _auth())
    except (ValueError, FileNotFoundError) as err:
        print(f"flows.batch: error: {err}", file=sys.stderr)
        return 2
    for item, run_id in zip(items, ids, strict=True):
        print(f"{item['item_id']}\t{run_id}")
    if not a.wait:
        return 0
    final = wait(a.api, ids, a.timeout, auth=_auth())
    for item, run_id in zip(items, ids, strict=True):
        print(f"{item['item_id']}\t{final.get(run_id)}")
    return 0 if all(final.get(i) == "COMPLETED" for i in ids) else 1


if __name__ == "__main__":
    sys.exit(main())
