"""UBC Fashion download: two URL lists (train / test), one video URL per line.

Hostile or broken lists are expected, so every entry is checked before anything is fetched:
only ``http``/``https`` URLs are accepted, file names come from the URL's last path segment,
sanitised (no traversal, no absolute or hidden names) and made unique with a short hash of the
URL. Downloads run in a thread pool with per-request timeouts, exponential-backoff retries
on connection errors / timeouts / 5xx (never on 404), HTTP ``Range`` resume of ``.part`` files,
a size cap, and an atomic rename when complete. Every URL ends up in ``download_report.json``
with its status, size and sha256. Dead links are expected (the paper could use 339 of the 500 listed training
videos): the missing ones are reported and skipped, and the stage fails only when a split has fewer valid
videos than ``min_train_videos`` / ``min_test_videos``.

URL lists are read as text editors save them (UTF-8 with or without a byte-order mark, UTF-16/32, Windows-1252;
``\\n``, ``\\r\\n`` or ``\\r`` line ends), and each URL is fetched once.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import requests
from tqdm import tqdm

from dreampose.config import UBCConfig
from dreampose.fsutil import atomic_write, sha256_file
from dreampose.video import probe_video

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
CHUNK = 1 << 16
USER_AGENT = "dreampose-downloader/0.1"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
# 408 Request Timeout and 429 Too Many Requests are transient like 5xx; other 4xx are final.
_RETRY_STATUS = {408, 429}


class DownloadError(RuntimeError):
    """Too few videos could be downloaded; the report has the per-URL reasons."""


class _Retryable(Exception):
    pass


class _Final(Exception):
    def __init__(self, status: str, reason: str, http_status: int | None = None):
        super().__init__(reason)
        self.status, self.reason, self.http_status = status, reason, http_status


def check_url(url: str) -> str | None:
    """Why ``url`` must not be fetched, or ``None`` if it is acceptable."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        return f"scheme {parts.scheme or '(none)'!r} is not http(s)"
    if not parts.hostname:
        return "no host"
    segments = unquote(parts.path).replace("\\", "/").split("/")
    if any(s in ("..", ".") for s in segments):
        return "path traversal ('..' or '.') in the URL path"
    if any("\x00" in s for s in segments):
        return "NUL byte in the URL path"
    return None


def safe_filename(url: str) -> str:
    """A file name from the URL's last path segment: only ``[A-Za-z0-9._-]``, never hidden, ``.mp4`` kept.

    Names without a usable stem fall back to a hash of the URL.
    """
    base = PurePosixPath(unquote(urlsplit(url).path).replace("\\", "/")).name
    base = _SAFE.sub("_", base).lstrip("._-")[:120]
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    if not stem:
        stem = "video_" + _url_hash(url)
    ext = ext.lower() if ext.lower() in ("mp4", "mov", "webm", "mkv", "avi") else "mp4"
    return f"{stem}.{ext}"


def _url_hash(url: str) -> str:
    return hashlib.sha1(url.encode()).hexdigest()[:8]


def assign_names(urls: list[str]) -> dict[str, str]:
    """Unique file names for ``urls`` (in order): a repeated stem gets ``-<hash of URL>``.

    Video ids are file stems and must be unique across both splits, so one namespace is used.
    """
    taken: set[str] = set()
    names: dict[str, str] = {}
    for url in urls:
        name = safe_filename(url)
        stem, ext = name.rsplit(".", 1)
        if stem.lower() in taken:
            stem = f"{stem}-{_url_hash(url)}"
        taken.add(stem.lower())
        names[url] = f"{stem}.{ext}"
    return names


_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode_url_list(data: bytes, charset: str | None = None) -> tuple[str, str]:
    """A URL list's bytes -> ``(text, encoding used)``, as text editors save them.

    A byte-order mark decides (UTF-8, UTF-16 or UTF-32, either byte order); else a declared ``charset`` (an HTTP
    ``Content-Type``); else UTF-16 without a mark when every other byte is NUL (ASCII text in UTF-16); else UTF-8;
    else Windows-1252 (what "ANSI" editors write), undecodable bytes replaced.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data.decode(encoding, errors="replace"), encoding
    if charset:
        try:
            return data.decode(charset), charset.lower()
        except (LookupError, UnicodeDecodeError):
            pass  # a wrong or unknown declaration: sniff instead
    if len(data) >= 2 and data.count(0) * 2 >= len(data) - 1:
        even, odd = data[0::2].count(0), data[1::2].count(0)
        encoding = "utf-16-le" if odd > even else "utf-16-be"
        return data.decode(encoding, errors="replace"), encoding
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace"), "cp1252"


def parse_url_list(text: str) -> tuple[list[str], int]:
    """One URL per line (``\\n``, ``\\r\\n`` or ``\\r`` ends); blank lines, ``#`` comments and stray byte-order
    marks dropped; each URL kept once, in first-seen order. Returns ``(urls, duplicates dropped)``."""
    lines = [ln.replace("\ufeff", "").strip() for ln in text.splitlines()]
    kept = [ln for ln in lines if ln and not ln.startswith("#")]
    urls = list(dict.fromkeys(kept))
    return urls, len(kept) - len(urls)


def read_url_list(source: str, timeout_s: float = 30.0) -> list[str]:
    """The URLs of a list at a local path or an http(s) URL, each once, in order (``decode_url_list`` for the
    encodings understood, ``parse_url_list`` for the lines); repeats are dropped and logged."""
    scheme = urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        try:
            resp = requests.get(source, timeout=timeout_s, headers={"User-Agent": USER_AGENT})
            resp.raise_for_status()
        except requests.RequestException as err:
            raise ValueError(f"URL list {source}: cannot fetch ({err})") from None
        charset = requests.utils.get_encoding_from_headers(resp.headers)
        # requests guesses ISO-8859-1 for any text/* without a charset; that is not a declaration
        declared = "charset" in resp.headers.get("content-type", "").lower()
        data = resp.content
    elif scheme and len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise ValueError(f"URL list {source}: scheme {scheme!r} not supported (use a local path or http(s))")
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"URL list {source}: no such file")
        data, charset, declared = path.read_bytes(), None, False
    text, encoding = decode_url_list(data, charset if declared else None)
    if encoding not in ("utf-8", "ascii"):
        log.info("URL list %s: read as %s", source, encoding)
    urls, repeats = parse_url_list(text)
    if repeats:
        log.warning("URL list %s: %d repeated URL(s) dropped; each URL is fetched once", source, repeats)
    return urls


_local = threading.local()


def _session() -> requests.Session:
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
        _local.session.headers["User-Agent"] = USER_AGENT
    return _local.session


def _fetch_once(url: str, part: Path, cfg: UBCConfig) -> bool:
    """One HTTP attempt appending to / replacing ``part``. Returns whether a Range resume was used."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        resp = _session().get(url, stream=True, timeout=cfg.timeout_s, headers=headers, allow_redirects=True)
    except (requests.ConnectionError, requests.Timeout) as err:
        raise _Retryable(f"{type(err).__name__}: {err}") from None
    except requests.RequestException as err:  # e.g. a redirect to file:// or too many redirects
        raise _Final("failed", f"{type(err).__name__}: {err}") from None
    with resp:
        code = resp.status_code
        if code == 416 and offset:  # our .part is not a prefix the server agrees with: start over
            part.unlink()
            raise _Retryable("HTTP 416 on resume; restarting from zero")
        if code >= 500 or code in _RETRY_STATUS:
            raise _Retryable(f"HTTP {code}")
        if code >= 400:
            raise _Final("dead", f"HTTP {code}", code)
        resumed = code == 206 and offset > 0
        if resumed:
            start = _content_range_start(resp.headers.get("Content-Range", ""))
            if start != offset:
                resumed = False
                raise _Retryable(f"server resumed at {start}, not {offset}")
        elif offset:
            offset = 0  # the server ignored Range and sent the whole file: overwrite
        length = resp.headers.get("Content-Length")
        expected = offset + int(length) if length and length.isdigit() else None
        if expected is not None and expected > cfg.max_bytes:
            part.unlink(missing_ok=True)
            raise _Final("too_large", f"{expected} bytes > max_bytes {cfg.max_bytes}", code)
        size = offset
        # urllib3 would raise on a short body and drop the bytes it had buffered; we keep them
        # in the .part (so the next attempt resumes from there) and check the length ourselves.
        resp.raw.enforce_content_length = False
        try:
            with part.open("ab" if resumed else "wb") as f:
                for chunk in resp.iter_content(CHUNK):
                    size += len(chunk)
                    if size > cfg.max_bytes:
                        raise _Final("too_large", f"more than max_bytes {cfg.max_bytes}", code)
                    f.write(chunk)
        except _Final:
            part.unlink(missing_ok=True)
            raise
        except (requests.RequestException, OSError) as err:
            # connection dropped mid-body (e.g. fewer bytes than Content-Length): keep the .part to resume
            raise _Retryable(f"interrupted after {size} bytes: {type(err).__name__}") from None
        if expected is not None and size != expected:
            raise _Retryable(f"truncated: {size} of {expected} bytes")
    return resumed


def _content_range_start(value: str) -> int | None:
    m = re.match(r"bytes\s+(\d+)-", value.strip())
    return int(m.group(1)) if m else None


def download_file(url: str, dest: Path, cfg: UBCConfig) -> dict[str, Any]:
    """Download ``url`` to ``dest`` via ``dest.part`` with retries; returns the report entry fields."""
    part = dest.with_name(dest.name + ".part")
    attempts, resumed, last = 0, False, ""
    for attempt in range(cfg.retries + 1):
        attempts = attempt + 1
        try:
            resumed = _fetch_once(url, part, cfg) or resumed
            os.replace(part, dest)
            break
        except _Final as err:
            return {"status": err.status, "error": err.reason, "http_status": err.http_status, "attempts": attempts}
        except _Retryable as err:
            last = str(err)
            log.debug("%s: attempt %d failed: %s", url, attempts, last)
            if attempt < cfg.retries:
                time.sleep(cfg.backoff_s * 2**attempt)
    else:
        return {"status": "failed", "error": last, "attempts": attempts}
    return {**_verify(dest), "attempts": attempts, "resumed": resumed}


def _verify(dest: Path) -> dict[str, Any]:
    """Size, sha256 and a probe of a finished file; undecodable files are ``corrupt`` (frames quarantines them)."""
    entry: dict[str, Any] = {"status": "ok", "bytes": dest.stat().st_size, "sha256": sha256_file(dest)}
    try:
        info = probe_video(dest)
        entry.update(frames=info.num_frames, fps=info.fps, height=info.height, width=info.width)
    except ValueError as err:
        entry.update(status="corrupt", error=str(err))
    return entry


def _write_json_atomic(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def split_counts(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per split: ``listed`` (distinct URLs), ``ok`` and ``missing`` ``{status: count}`` of the others."""
    out: dict[str, dict[str, Any]] = {s: {"listed": 0, "ok": 0, "missing": {}} for s in SPLITS}
    for e in entries:
        if e["status"] == "duplicate":
            continue
        c = out[e["split"]]
        c["listed"] += 1
        if e["status"] == "ok":
            c["ok"] += 1
        else:
            c["missing"][e["status"]] = c["missing"].get(e["status"], 0) + 1
    return out


def too_few_videos(per_split: dict[str, dict[str, Any]], minimum: dict[str, int]) -> dict[str, str]:
    """``{split: why}`` for each split with fewer valid videos than its minimum (empty when all suffice)."""
    short = {}
    for split, c in per_split.items():
        if c["ok"] < minimum[split]:
            why = ", ".join(f"{n} {status}" for status, n in sorted(c["missing"].items())) or "none missing"
            short[split] = f"only {c['ok']} of {c['listed']} {split} videos downloaded, need {minimum[split]} ({why})"
    return short


def download_ubc(cfg: UBCConfig, out_dir: Path) -> dict[str, Any]:
    """Fetch the train/test lists into ``out_dir/videos/{train,test}/`` and write ``download_report.json``.

    Raises ``DownloadError`` (after writing the report) when a split has fewer valid videos than
    ``cfg.min_train_videos`` / ``cfg.min_test_videos``; the message names the split and why videos are missing.
    """
    out_dir = Path(out_dir)
    start = time.perf_counter()
    listed = {
        split: read_url_list(src, cfg.timeout_s)
        for split, src in zip(SPLITS, (cfg.train_list, cfg.test_list), strict=True)
    }
    entries: list[dict[str, Any]] = []
    jobs: list[tuple[dict[str, Any], Path]] = []
    seen: set[str] = set()
    accepted = [u for split in SPLITS for u in listed[split] if check_url(u) is None]
    names = assign_names(list(dict.fromkeys(accepted)))
    for split in SPLITS:
        split_dir = out_dir / "videos" / split
        split_dir.mkdir(parents=True, exist_ok=True)
        for url in listed[split]:
            entry: dict[str, Any] = {"url": url, "split": split}
            entries.append(entry)
            reason = check_url(url)
            if reason:
                entry.update(status="rejected", error=reason)
                continue
            if url in seen:
                entry.update(status="duplicate", error="listed before")
                continue
            seen.add(url)
            name = names[url]
            dest = split_dir / name
            if dest.resolve().parent != split_dir.resolve():  # belt and braces after sanitising
                entry.update(status="rejected", error="file name escapes the download directory")
                continue
            entry.update(id=dest.stem, path=f"videos/{split}/{name}")
            jobs.append((entry, dest))
    total = sum(e.get("status") != "duplicate" for e in entries)
    if total == 0:
        raise ValueError(f"URL lists {cfg.train_list}, {cfg.test_list}: no URLs")

    with (
        ThreadPoolExecutor(max_workers=cfg.workers) as pool,
        tqdm(total=len(jobs), desc="ubc videos", unit="video", leave=False) as bar,
    ):
        futures = {}
        for entry, dest in jobs:
            if dest.is_file():  # finished by an earlier run
                futures[pool.submit(_verify, dest)] = entry
            else:
                futures[pool.submit(download_file, entry["url"], dest, cfg)] = entry
        for fut in as_completed(futures):
            futures[fut].update(fut.result())
            bar.update(1)

    counts: dict[str, int] = {}
    for e in entries:
        counts[e["status"]] = counts.get(e["status"], 0) + 1
    downloaded = counts.get("ok", 0)
    fraction = downloaded / total
    per_split = split_counts(entries)
    report = {
        "source": "ubc",
        "train_list": cfg.train_list,
        "test_list": cfg.test_list,
        "total": total,
        "downloaded": downloaded,
        "fraction": round(fraction, 4),
        "counts": counts,
        "splits": per_split,
        "min_videos": {"train": cfg.min_train_videos, "test": cfg.min_test_videos},
        "videos": entries,
    }
    _write_json_atomic(out_dir / "download_report.json", report)
    short = too_few_videos(per_split, {"train": cfg.min_train_videos, "test": cfg.min_test_videos})
    if short:
        raise DownloadError(
            "; ".join(f"{why} (data.ubc.min_{split}_videos)" for split, why in short.items())
            + f"; per-URL reasons in {out_dir / 'download_report.json'}"
        )
    missing = total - downloaded
    if missing:
        log.warning("download: %d of %d listed videos unavailable (skipped; see download_report.json)", missing, total)
    return {
        "source": "ubc",
        "total": total,
        "downloaded": downloaded,
        "fraction": round(fraction, 4),
        "train_downloaded": per_split["train"]["ok"],
        "test_downloaded": per_split["test"]["ok"],
        "skipped": missing,
        "dead": counts.get("dead", 0),
        "rejected": counts.get("rejected", 0),
        "corrupt": counts.get("corrupt", 0),
        "failed": counts.get("failed", 0) + counts.get("too_large", 0),
        "bytes": sum(e.get("bytes", 0) for e in entries),
        "seconds": round(time.perf_counter() - start, 3),
    }
