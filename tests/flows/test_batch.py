"""``flows.batch``: a CSV or a folder of photos becomes one ``catalog-item`` flow run each on a Prefect server, and
``--wait`` reports each item's outcome in its exit code."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flows import batch
from flows.prefect_server import api_call
from tests.flows.conftest import person_photo


def test_read_batch_csv_and_folder(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    person_photo(photos / "shirt-a.png")
    person_photo(photos / "shirt-b.png", (200, 40, 40))
    (photos / "notes.txt").write_text("not a photo")
    items = batch.read_batch(photos, poses="poses")
    assert [i["item_id"] for i in items] == ["shirt-a", "shirt-b"]
    assert all(i["poses"] == "poses" for i in items)
    with pytest.raises(ValueError, match="needs --poses"):
        batch.read_batch(photos)

    csv_file = tmp_path / "items.csv"
    csv_file.write_text("photo,poses,item_id\nphotos/shirt-a.png,syn_test_000,sku-1\nphotos/shirt-b.png,poses,\n")
    items = batch.read_batch(csv_file)
    assert [(i["item_id"], i["poses"]) for i in items] == [("sku-1", "syn_test_000"), ("shirt-b", "poses")]
    assert items[0]["photo"] == str(photos / "shirt-a.png")  # relative to the CSV

    csv_file.write_text("photo,poses,item_id\na.png,p,x\nb.png,p,x\n")
    with pytest.raises(ValueError, match="unique"):
        batch.read_batch(csv_file)
    csv_file.write_text("photo\na.png\n")
    with pytest.raises(ValueError, match="poses"):
        batch.read_batch(csv_file)
    with pytest.raises(FileNotFoundError):
        batch.read_batch(tmp_path / "missing.csv")


def _deployment(api: str, flow: str = "catalog-item", name: str = "catalog-item") -> str:
    """A deployment on the server (no work pool: its runs stay scheduled until a test sets their state)."""
    # api_call: the test's own calls ride out a busy server's 503s (its sqlite locked on a loaded machine) as
    # the command's calls do
    flow_id = api_call("POST", f"{api}/flows/", json={"name": flow}).json()["id"]
    res = api_call("POST", f"{api}/deployments/", json={"name": name, "flow_id": flow_id})
    res.raise_for_status()
    return res.json()["id"]


def _set_state(api: str, run_id: str, state: str) -> None:
    res = api_call("POST", f"{api}/flow_runs/{run_id}/set_state", json={"state": {"type": state}, "force": True})
    res.raise_for_status()


def test_submit_and_wait_on_a_prefect_server(tmp_path, prefect_harness, capsys):
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value().rstrip("/")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("shirt-a", "shirt-b"):
        person_photo(photos / f"{name}.png")
    items = batch.read_batch(photos, poses="poses")
    with pytest.raises(ValueError, match=r"no deployment 'batch-test/none'.*prefect deploy"):
        batch.submit(items, api, str(tmp_path), deployment="batch-test/none")

    dep_id = _deployment(api, "batch-test", "items")
    ids = batch.submit(items, api, str(tmp_path), deployment="batch-test/items")
    assert len(set(ids)) == 2
    for item, run_id in zip(items, ids, strict=True):  # one run per item, in item order, with the item's parameters
        run = api_call("GET", f"{api}/flow_runs/{run_id}").json()
        assert run["deployment_id"] == dep_id and run["name"] == f"item-{item['item_id']}"
        assert run["parameters"] == {**item, "root": str(tmp_path)}
    assert batch.states(api, ids) == {i: "SCHEDULED" for i in ids}
    assert batch.wait(api, ids, timeout_s=0.0) == {i: "SCHEDULED" for i in ids}  # gives up: not final yet

    _set_state(api, ids[0], "COMPLETED")
    _set_state(api, ids[1], "CRASHED")  # not final: the stack retries a crashed run
    assert batch.wait(api, ids, timeout_s=0.0) == {ids[0]: "COMPLETED", ids[1]: "CRASHED"}
    _set_state(api, ids[1], "FAILED")
    assert batch.wait(api, ids, timeout_s=60, poll_s=0.1) == {ids[0]: "COMPLETED", ids[1]: "FAILED"}

    # The command: one line per item (id, flow run), then with --wait its final state; exit 1 unless all completed.
    argv = [str(photos), "--poses", "poses", "--root", str(tmp_path), "--deployment", "batch-test/items", "--api", api]
    assert batch.main(argv) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == ["shirt-a", "shirt-b"]
    assert batch.main([*argv, "--wait", "--timeout", "0"]) == 1  # its new runs are not final when it gives up
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[2:] == [f"{s}\tSCHEDULED" for s in ("shirt-a", "shirt-b")]
    assert batch.main([*argv, "--deployment", "batch-test/none"]) == 2
    assert "flows.batch: error: no deployment" in capsys.readouterr().err


def test_main_needs_an_api(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert batch.main([str(tmp_path)]) == 2
    assert "set PREFECT_API_URL" in capsys.readouterr().err


class _Busy(BaseHTTPRequestHandler):
    """Answers 503 (the server's database busy) to the first ``busy`` requests, then a deployment."""

    busy = 2
    seen = 0

    def do_GET(self):
        type(self).seen += 1
        status, body = (503, b"busy") if type(self).seen <= self.busy else (200, b'{"id": "dep"}')
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_busy_server_is_retried_then_answered():
    _Busy.seen = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/deployments/name/a/b"
        assert api_call("GET", url, attempts=3).json() == {"id": "dep"}
        assert _Busy.seen == 3
        _Busy.seen = 0
        assert api_call("GET", url, attempts=2).status_code == 503  # out of attempts: the last answer
    finally:
        server.shutdown()
        server.server_close()
