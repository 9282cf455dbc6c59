"""DVC links outputs into its cache rather than copying them (``.dvc/config``: ``cache.type``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc"]


def _reflinks(tmp: Path) -> bool:
    """Whether ``tmp``'s filesystem makes copy-on-write copies (then DVC prefers a reflink to a hardlink)."""
    a = tmp / "reflink_probe"
    a.write_bytes(b"x")
    ok = subprocess.run(["cp", "--reflink=always", str(a), str(tmp / "reflink_probe2")], capture_output=True)
    return ok.returncode == 0


def _cache_file(repo: Path, ws_file: Path) -> Path:
    import hashlib

    md5 = hashlib.md5(ws_file.read_bytes()).hexdigest()
    return repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def _linked(ws_file: Path, cache_file: Path) -> bool:
    if ws_file.is_symlink():
        return ws_file.resolve() == cache_file.resolve()
    return os.stat(ws_file).st_ino == os.stat(cache_file).st_ino


@pytest.mark.skipif(shutil.which("cp") is None, reason="needs cp")
def test_added_and_reproduced_outputs_share_the_cache_files(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    run = lambda *a: subprocess.run([*DVC, *a], cwd=repo, env=env, check=True, capture_output=True, text=True)  # noqa: E731
    run("init", "--no-scm", "-q")
    project = (REPO / ".dvc" / "config").read_text()
    cache = project[project.index("[cache]") :] if "[cache]" in project else ""  # the project's cache settings
    with (repo / ".dvc" / "config").open("a") as f:
        f.write("\n" + cache)
    (repo / "weights.bin").write_bytes(os.urandom(1 << 16))
    run("add", "-q", "weights.bin")
    (repo / "dvc.yaml").write_text(
        "stages:\n  make:\n    cmd: python -c \"open('model.bin', 'wb').write(bytes(range(256)) * 64)\"\n"
        "    outs:\n      - model.bin\n"
    )
    run("repro", "-q")
    for name in ("weights.bin", "model.bin"):
        ws_file = repo / name
        cache = _cache_file(repo, ws_file)
        assert cache.is_file(), f"{name} is not in the cache"
        if _reflinks(tmp_path):  # copy-on-write: its own inode, shared blocks (not observable from here)
            assert not _linked(ws_file, cache) and ws_file.read_bytes() == cache.read_bytes()
        else:
            assert _linked(ws_file, cache), f"{name} was copied into the cache, not linked"
            assert not os.access(ws_file, os.W_OK) or os.geteuid() == 0  # DVC leaves a linked output read-only
