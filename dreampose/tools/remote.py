"""The DVC remote that lets a second workspace serve catalog items without rebuilding the pipeline.

``dreampose remote add URL`` (or ``make remote URL=...``, which also pushes) sets the workspace's default DVC
remote in ``.dvc/config`` (committed with git, so every clone knows it). Then:

    dvc push                              # after the pipeline: every stage output into the remote
    git clone <workspace repo> serve && cd serve
    dvc pull models/base                  # plus what items need, e.g. a pose directory that is a DVC output
    dreampose catalog-item --photo shirt.jpg --poses <pose dir>

Nothing upstream (download, frames, densepose, ...) runs in the second workspace: ``dvc pull`` only fetches
the cached outputs named by ``dvc.lock``.

URLs: a local or mounted path, ``ssh://host/path``, ``s3://bucket/prefix``, ``gs://bucket/prefix``,
``azure://container/prefix``, ``http(s)://...``, ``hdfs://...``, ``webdav(s)://...``. Cloud schemes need
DVC's plugin for them in the environment (``pip install dvc-s3`` / ``dvc-gs`` / ``dvc-ssh``); credentials
come from the usual places (``AWS_PROFILE``, ``GOOGLE_APPLICATION_CREDENTIALS``, ``~/.ssh``), never params.yaml.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SCHEMES = ("s3", "gs", "gcs", "azure", "ssh", "http", "https", "hdfs", "webdav", "webdavs", "oss")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def normalize_url(url: str, cwd: Path) -> str:
    """A remote URL as DVC should store it: scheme URLs unchanged, local paths absolute (a relative path in
    ``.dvc/config`` would be read relative to ``.dvc/``, not to where the command ran)."""
    if not url or not url.strip():
        raise ValueError("remote URL: empty")
    m = _URL.match(url)
    if m:
        if m.group(1).lower() not in SCHEMES:
            raise ValueError(f"remote URL {url}: unknown scheme {m.group(1)!r} (use a path or one of {SCHEMES})")
        return url
    return str((cwd / Path(url).expanduser()).resolve())


def dvc(args: list[str], root: Path) -> subprocess.CompletedProcess:
    """Run ``dvc`` (this environment's) in ``root``; a failure raises ``ValueError`` with DVC's message."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise ValueError(f"dvc {' '.join(args)}: {msg[-1] if msg else f'exit {proc.returncode}'}")
    return proc


def add_remote(root: Path, url: str, name: str = "store", default: bool = True, cwd: Path | None = None) -> str:
    """Set DVC remote ``name`` to ``url`` in ``root/.dvc/config`` (replacing one of that name); returns the URL
    stored. ``default``: make it the remote that plain ``dvc push`` / ``dvc pull`` use."""
    root = Path(root)
    if not (root / ".dvc").is_dir():
        raise ValueError(f"{root}: not a DVC workspace (no .dvc/; run `dvc init` in the git repository)")
    if not _NAME.match(name):
        raise ValueError(f"remote name {name!r}: use letters, digits, '_' or '-'")
    stored = normalize_url(url, Path(cwd) if cwd is not None else Path.cwd())
    dvc(["remote", "add", "--force", *(["--default"] if default else []), name, stored], root)
    return stored
