"""Atomic file and directory replacement: an output is either the old one or the complete new one; and
``recorded``, what of a stage's summary goes into a file DVC hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Top-level summary keys that differ from run to run with equal outputs (wall-clock time, throughput, peak
#: memory, where a run resumed): they stay in the summary a stage returns (logged to MLflow) and out of the files
#: DVC hashes, so rerunning a stage with equal weights leaves ``dvc.lock`` unchanged. Top level only: a nested
#: key (a config's ``fps``) is a setting, not a measurement.
RUN_TO_RUN_KEYS = frozenset(
    {
        "seconds",
        "seconds_per_frame",
        "vae_pretrain_seconds",
        "samples_per_s",
        "peak_memory_mb",
        "frames_per_s",
        "resumed_from_step",
    }
)


def recorded(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` without its run-to-run keys (``RUN_TO_RUN_KEYS``): what a stage writes to a file that is a DVC
    output."""
    return {k: v for k, v in summary.items() if k not in RUN_TO_RUN_KEYS}


def _update(h, path: Path) -> None:
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    _update(h, path)
    return h.hexdigest()


def tree_digest(path: Path, algorithm: str = "md5") -> str | None:
    """A content hash of a file or directory tree: each file's relative path (a file's own name) then its
    bytes, in sorted order; ``None`` when ``path`` does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    h = hashlib.new(algorithm)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        _update(h, f)
    return h.hexdigest()


def staging_dir(out_dir: Path) -> Path:
    """A fresh hidden sibling of ``out_dir`` to build it in (parents made), then ``replace_dir(tmp, out_dir)``."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")


def replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move a finished ``tmp`` onto ``out_dir`` with renames only; the old ``out_dir`` is removed after the swap.

    ``tmp`` must sit beside ``out_dir`` (same filesystem) so each rename is atomic.
    """
    tmp, out_dir = Path(tmp), Path(out_dir)
    old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def atomic_write(path: Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a hidden sibling of ``path``, then rename it onto ``path`` (parents made);
    a failed write leaves ``path`` as it was and no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path
