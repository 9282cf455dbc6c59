"""UBC downloader against a real local HTTP server: dead links, stalls, truncation + Range resume,
redirects, servers that ignore Range, flaky 5xx, duplicate basenames, hostile entries, size cap."""

from __future__ import annotations

import codecs
import hashlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from dreampose.config import UBCConfig
from dreampose.data.ubc import (
    DownloadError,
    assign_names,
    check_url,
    decode_url_list,
    download_ubc,
    parse_url_list,
    read_url_list,
    safe_filename,
)
from dreampose.video import write_video

# The client's read timeout, and a stall well past it: a normal response on a loaded machine (another CPU-heavy job
# beside the suite) stays far inside the timeout, so only the stalled one times out.
TIMEOUT_S = 2.0
STALL_S = 3 * TIMEOUT_S


def _mp4(tmp: Path, name: str, shade: int) -> bytes:
    x = np.full((6, 32, 24, 3), shade, np.uint8)
    x[:, 8:16, 8:16, 1] = 255 - shade
    return write_video(x, tmp / name, fps=8).read_bytes()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files
        self.hits: Counter[str] = Counter()
        self.ranges: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None, cut: int | None = None) -> None:
        headers = dict(headers or {})
        self.send_response(code)
        self.send_header("Content-Length", headers.pop("Content-Length", str(len(body))))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body if cut is None else body[:cut])
        self.wfile.flush()
        self.close_connection = True

    def do_GET(self) -> None:
        path = self.path
        with self.server.lock:
            self.server.hits[path] += 1
            hit = self.server.hits[path]
            if self.headers.get("Range"):
                self.server.ranges.append((path, self.headers["Range"]))
        name = "other_same.mp4" if path == "/b/same.mp4" else path.rsplit("/", 1)[-1]
        body = self.server.files.get(name, b"")
        try:
            if path.startswith("/lists/"):
                self._send(200, self.server.files[name])
            elif name == "dead.mp4":
                self._send(404, b"not found")
            elif name == "stall.mp4" and hit == 1:
                time.sleep(STALL_S)  # longer than the client's timeout
                self._send(200, body)
            elif name == "flaky.mp4" and hit == 1:
                self._send(503, b"busy")
            elif path == "/go/evil.mp4":
                self.send_response(302)
                self.send_header("Location", "file:///etc/passwd")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path == "/go/redirected":
                self.send_response(302)
                self.send_header("Location", "/v/target.mp4")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif name in ("trunc.mp4", "norange.mp4") and hit == 1:
                # Content-Length promises the whole file; the connection closes halfway
                self._send(200, body, {"Content-Length": str(len(body))}, cut=len(body) // 2)
            elif name == "trunc.mp4" and self.headers.get("Range"):
                start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                headers = {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
                self._send(206, body[start:], headers)
            elif name in self.server.files:
                self._send(200, body)  # norange.mp4 ends here too: the server ignores Range
            else:
                self._send(404, b"not found")
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on a stalled response
            pass


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("media")
    names = ["good.mp4", "stall.mp4", "flaky.mp4", "target.mp4", "trunc.mp4", "norange.mp4", "same.mp4", "big.mp4"]
    files = {name: _mp4(tmp, name, 20 + 25 * i) for i, name in enumerate(names)}
    files["big.mp4"] += b"\0" * 100_000  # over the size cap used below
    files["other_same.mp4"] = _mp4(tmp, "other_same.mp4", 240)
    files["notvideo.mp4"] = b"<html>this is an error page, not a video</html>\n" * 10
    return files


@pytest.fixture
def server(media):
    srv = _Server(dict(media))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _cfg(train: Path, test: Path, **kw) -> UBCConfig:
    base = dict(workers=3, retries=3, backoff_s=0.02, timeout_s=TIMEOUT_S, min_train_videos=0, min_test_videos=0)
    return UBCConfig(train_list=str(train), test_list=str(test), **{**base, **kw})


def _lists(tmp_path: Path, train: list[str], test: list[str]) -> tuple[Path, Path]:
    a, b = tmp_path / "fashion_train.txt", tmp_path / "fashion_test.txt"
    a.write_text("# UBC fashion train\n\n" + "\n".join(train) + "\n")
    b.write_text("\n".join(test) + "\n")
    return a, b


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_with_faults(tmp_path, server, media):
    s = server.url
    train = [
        s("/v/good.mp4"),
        s("/v/dead.mp4"),
        s("/v/stall.mp4"),
        s("/v/flaky.mp4"),
        s("/go/redirected"),
        s("/v/trunc.mp4"),
        s("/v/norange.mp4"),
        s("/a/same.mp4"),
        "ftp://example.com/video.mp4",
        "file:///etc/passwd",
        s("/v/../../etc/passwd"),
        s("/v/%2e%2e/%2e%2e/secret.mp4"),
        "videos/relative.mp4",
        "javascript:alert(1)",
    ]
    test = [s("/b/same.mp4"), s("/v/notvideo.mp4"), s("/v/good.mp4")]
    out = tmp_path / "data" / "raw"
    summary = download_ubc(_cfg(*_lists(tmp_path, train, test)), out)

    report = json.loads((out / "download_report.json").read_text())
    by_url: dict[str, dict] = {}
    for e in report["videos"]:
        by_url.setdefault(e["url"], e)
    status = {u: e["status"] for u, e in by_url.items()}

    assert status[s("/v/dead.mp4")] == "dead" and by_url[s("/v/dead.mp4")]["http_status"] == 404
    assert server.hits["/v/dead.mp4"] == 1  # a 404 is final: no retries
    for rejected in train[8:]:
        assert status[rejected] == "rejected", rejected
    assert "not http(s)" in by_url["file:///etc/passwd"]["error"]
    assert "traversal" in by_url[s("/v/../../etc/passwd")]["error"]
    assert "traversal" in by_url[s("/v/%2e%2e/%2e%2e/secret.mp4")]["error"]
    assert status[s("/v/notvideo.mp4")] == "corrupt"
    assert [e["status"] for e in report["videos"] if e["url"] == s("/v/good.mp4")] == ["ok", "duplicate"]

    ok = {u: e for u, e in by_url.items() if e["status"] == "ok"}
    assert set(ok) == {s(p) for p in ("/v/good.mp4", "/v/stall.mp4", "/v/flaky.mp4", "/go/redirected")} | {
        s("/v/trunc.mp4"),
        s("/v/norange.mp4"),
        s("/a/same.mp4"),
        s("/b/same.mp4"),
    }
    for url, e in ok.items():
        data = (out / e["path"]).read_bytes()
        served = {"/go/redirected": "target.mp4", "/b/same.mp4": "other_same.mp4"}
        path = url.split(str(server.server_address[1]), 1)[1]
        assert data == media[served.get(path, path.rsplit("/", 1)[-1])], url
        assert e["sha256"] == _sha(data) and e["bytes"] == len(data) and e["frames"] == 6

    assert by_url[s("/v/stall.mp4")]["attempts"] == 2  # timed out once, then succeeded
    assert by_url[s("/v/flaky.mp4")]["attempts"] == 2  # 503 once, then succeeded
    assert by_url[s("/v/trunc.mp4")]["resumed"] is True  # finished with a Range request
    assert any(p == "/v/trunc.mp4" and r.startswith("bytes=") for p, r in server.ranges)
    assert by_url[s("/v/norange.mp4")]["resumed"] is False  # Range ignored: full download instead
    assert by_url[s("/go/redirected")]["path"] == "videos/train/redirected.mp4"

    # same basename twice: two distinct files, both inside their split directory
    a, b = by_url[s("/a/same.mp4")]["path"], by_url[s("/b/same.mp4")]["path"]
    assert a == "videos/train/same.mp4" and b.startswith("videos/test/same-") and b.endswith(".mp4")
    # nothing outside data/raw/videos, no leftovers
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert not [f for f in files if f.endswith(".part") or "/." in f]
    assert all(f.startswith("videos/") or f == "download_report.json" for f in files)
    assert not (tmp_path / "etc").exists()

    assert summary["dead"] == 1 and summary["rejected"] == 6 and summary["corrupt"] == 1
    assert summary["total"] == 16 and summary["downloaded"] == 8  # duplicates are not counted
    assert report["fraction"] == pytest.approx(8 / 16)


def test_too_few_videos_of_a_split_raises_after_writing_report(tmp_path, server):
    urls = [server.url("/v/good.mp4"), server.url("/v/dead.mp4"), server.url("/go/evil.mp4")]
    train, test = _lists(tmp_path, urls, ["ftp://x/y.mp4"])
    out = tmp_path / "raw"
    # Real availability: dead links are skipped and reported; one good training video is enough here.
    summary = download_ubc(_cfg(train, test, min_train_videos=1, min_test_videos=0), out)
    assert summary["train_downloaded"] == 1 and summary["test_downloaded"] == 0 and summary["skipped"] == 3
    with pytest.raises(DownloadError, match=r"only 1 of 3 train videos downloaded, need 2 \(1 dead, 1 failed\)"):
        download_ubc(_cfg(train, test, min_train_videos=2, min_test_videos=0), out)
    with pytest.raises(DownloadError, match=r"only 0 of 1 test videos downloaded, need 1 \(1 rejected\).*min_test"):
        download_ubc(_cfg(train, test, min_train_videos=1, min_test_videos=1), out)
    report = json.loads((out / "download_report.json").read_text())
    assert report["counts"] == {"ok": 1, "dead": 1, "failed": 1, "rejected": 1}
    assert report["splits"]["train"] == {"listed": 3, "ok": 1, "missing": {"dead": 1, "failed": 1}}
    assert report["min_videos"] == {"train": 1, "test": 1}
    evil = next(e for e in report["videos"] if e["url"].endswith("/go/evil.mp4"))
    assert "InvalidSchema" in evil["error"]  # a redirect to file:// is not followed
    assert (out / "videos/train/good.mp4").is_file()


def test_paper_thresholds_tolerate_real_availability():
    from dreampose.data.ubc import too_few_videos

    cfg = UBCConfig()
    minimum = {"train": cfg.min_train_videos, "test": cfg.min_test_videos}
    # the paper's own availability: 339 of 500 training videos, all 100 test videos
    paper = {"train": {"listed": 500, "ok": 339, "missing": {"dead": 161}}, "test": {"listed": 100, "ok": 97,
             "missing": {"dead": 3}}}  # fmt: skip
    assert too_few_videos(paper, minimum) == {}
    worse = {**paper, "test": {"listed": 100, "ok": 80, "missing": {"dead": 20}}}
    assert too_few_videos(worse, minimum) == {"test": "only 80 of 100 test videos downloaded, need 90 (20 dead)"}


def test_size_cap_and_resume_from_existing_part(tmp_path, server, media):
    out = tmp_path / "raw"
    part = out / "videos/train/trunc.mp4.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(media["trunc.mp4"][:100])  # left by an interrupted earlier run
    server.hits["/v/trunc.mp4"] = 1  # the server is past its truncating first response
    train, test = _lists(tmp_path, [server.url("/v/trunc.mp4"), server.url("/v/big.mp4")], [])
    cap = max(len(media["trunc.mp4"]), 200) + 1
    assert len(media["big.mp4"]) > cap
    summary = download_ubc(_cfg(train, test, max_bytes=cap), out)
    report = {e["url"].rsplit("/", 1)[-1]: e for e in json.loads((out / "download_report.json").read_text())["videos"]}
    assert report["trunc.mp4"]["status"] == "ok" and report["trunc.mp4"]["resumed"] is True
    assert (out / "videos/train/trunc.mp4").read_bytes() == media["trunc.mp4"]
    assert ("/v/trunc.mp4", "bytes=100-") in server.ranges
    assert report["big.mp4"]["status"] == "too_large" and not list(out.rglob("big.mp4*"))
    assert summary["failed"] == 1


def test_url_list_sources(tmp_path, server):
    server.files["fashion_train.txt"] = (server.url("/v/good.mp4") + "\n# comment\n\n").encode()
    assert read_url_list(server.url("/lists/fashion_train.txt")) == [server.url("/v/good.mp4")]
    with pytest.raises(ValueError, match="scheme 'file' not supported"):
        read_url_list("file:///etc/hosts")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_url_list(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="cannot fetch"):
        read_url_list(server.url("/lists/missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no URLs"):
        download_ubc(_cfg(empty, empty), tmp_path / "raw")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://host/a/b.mp4", None),
        ("HTTP://host/a.mp4", None),
        ("ftp://host/a.mp4", "not http(s)"),
        ("file:///etc/passwd", "not http(s)"),
        ("javascript:alert(1)", "not http(s)"),
        ("/abs/path.mp4", "not http(s)"),
        ("http:///nohost.mp4", "no host"),
        ("http://host/a/../b.mp4", "traversal"),
        ("http://host/a/..%2Fb.mp4", "traversal"),
        ("http://host/a/%2E%2E%5Cb.mp4", "traversal"),
    ],
)
def test_check_url(url, reason):
    got = check_url(url)
    assert (got is None) if reason is None else (reason in got)


def test_safe_filename_and_unique_names():
    assert safe_filename("https://h/x/91-3003CN5S.mp4?sig=1") == "91-3003CN5S.mp4"
    assert safe_filename("https://h/x/.hidden.mp4") == "hidden.mp4"
    assert safe_filename("https://h/x/we ird;rm -rf.mp4") == "we_ird_rm_-rf.mp4"
    assert safe_filename("https://h/x/clip") == "clip.mp4"
    assert safe_filename("https://h/x/evil.sh") == "evil.mp4"
    assert safe_filename("https://h/").startswith("video_")
    names = assign_names(["https://a/x/v.mp4", "https://b/y/v.mp4", "https://c/V.mp4"])
    assert names["https://a/x/v.mp4"] == "v.mp4"
    assert len(set(names.values())) == 3 and all(n.startswith(("v-", "V-", "v.")) for n in names.values())
    assert assign_names(["https://b/y/v.mp4"]) == {"https://b/y/v.mp4": "v.mp4"}


# ---------------------------------------------------------------- URL lists as editors save them

_URLS = ["https://example.com/v/a.mp4", "https://example.com/v/b.mp4", "https://example.com/v/c%20d.mp4"]


@pytest.mark.parametrize(
    ("encoding", "newline"),
    [
        ("utf-8", "\n"),
        ("utf-8-sig", "\r\n"),  # Notepad's "UTF-8 with BOM"
        ("utf-8-sig", "\r"),  # classic Mac line ends
        ("utf-16", "\r\n"),  # "Unicode": UTF-16 LE with BOM
        ("utf-16-be-bom", "\r\n"),
        ("utf-16-le", "\n"),  # UTF-16 without a mark
        ("utf-32", "\n"),
        ("cp1252", "\r\n"),  # "ANSI", with a non-ASCII comment
    ],
)
def test_url_list_encodings_and_line_ends(tmp_path, encoding, newline):
    """Before, a byte-order mark glued itself to the first URL (rejected as scheme '\\ufeffhttps') and UTF-16/32
    lists read as garbage."""
    text = newline.join(["# défilé UBC", "", *_URLS[:2], "   ", _URLS[2], "# end", ""])
    bom_be = encoding == "utf-16-be-bom"
    path = tmp_path / "list.txt"
    path.write_bytes(codecs.BOM_UTF16_BE + text.encode("utf-16-be") if bom_be else text.encode(encoding))
    assert read_url_list(str(path)) == _URLS


def test_url_list_each_url_once_in_order(tmp_path, caplog):
    path = tmp_path / "list.txt"
    path.write_bytes(
        ("\r\n".join([_URLS[1], _URLS[0], _URLS[1] + "  ", "\ufeff" + _URLS[0], _URLS[2]]) + "\r\n").encode()
    )
    with caplog.at_level("WARNING", logger="dreampose.data.ubc"):
        assert read_url_list(str(path)) == [_URLS[1], _URLS[0], _URLS[2]]
    assert "2 repeated URL(s) dropped" in caplog.text
    assert parse_url_list("a\nb\r\na\rb\n") == (["a", "b"], 2)


def test_url_list_over_http_with_bom_and_charset(server):
    server.files["bom16.txt"] = "\r\n".join(_URLS).encode("utf-16")  # BOM, no Content-Type
    assert read_url_list(server.url("/lists/bom16.txt")) == _URLS
    assert decode_url_list("é".encode("latin-1"), "iso-8859-1") == ("é", "iso-8859-1")
    assert decode_url_list(codecs.BOM_UTF8 + b"x", "iso-8859-1") == ("x", "utf-8-sig")  # the mark wins
    assert decode_url_list(b"x\xe9", "no-such-codec") == ("x\xe9", "cp1252")


def test_download_keeps_the_first_url_of_a_list_saved_with_bom_and_crlf(tmp_path, server, media):
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    train.write_bytes(codecs.BOM_UTF8 + f"{server.url('/v/good.mp4')}\r\n{server.url('/v/target.mp4')}\r\n".encode())
    test.write_bytes("\r\n".join([server.url("/v/same.mp4")] * 2).encode("utf-16"))
    out = tmp_path / "raw"
    summary = download_ubc(_cfg(train, test), out)
    assert summary["train_downloaded"] == 2 and summary["test_downloaded"] == 1 and summary["total"] == 3
    assert (out / "videos/train/good.mp4").read_bytes() == media["good.mp4"]
    report = json.loads((out / "download_report.json").read_text())
    assert [e["status"] for e in report["videos"]] == ["ok", "ok", "ok"]
