"""Headless Chromium for page checks: installed on demand (Debian package ``chromium``), DOM dumps, screenshots.

``ensure_chromium()`` is what CI relies on: ``make test`` on a clean Debian machine (run as root) installs
the browser with apt the first time and finds it afterwards. Set ``DREAMPOSE_NO_BROWSER=1`` to skip the
browser tests instead (e.g. a workstation without root).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    "--autoplay-policy=no-user-gesture-required",
)


class BrowserUnavailable(RuntimeError):
    pass


def find_chromium() -> str | None:
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_chromium() -> str:
    """The path of a Chromium binary, installing Debian's ``chromium`` with apt when none is found (idempotent)."""
    found = find_chromium()
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise BrowserUnavailable("no chromium on PATH and cannot apt-get install it (needs root on Debian/Ubuntu)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # The suite's parallel workers may all ask at once: one installs, the others wait and then find it.
    with open(Path(tempfile.gettempdir()) / "dreampose-chromium-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if find_chromium() is None:
            for cmd in ([apt, "update", "-q"], [apt, "install", "-y", "-q", "--no-install-recommends", "chromium"]):
                res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
                if res.returncode != 0:
                    raise BrowserUnavailable(f"{' '.join(cmd)} failed: {res.stderr.strip()[-500:]}")
    found = find_chromium()
    if not found:
        raise BrowserUnavailable("apt-get installed chromium but no chromium binary is on PATH")
    return found


def dump_dom(chromium: str, page: Path, budget_ms: int = 4000) -> str:
    """The DOM after the page ran for ``budget_ms`` of virtual time (scripts, media events included)."""
    res = subprocess.run(
        [chromium, *FLAGS, f"--virtual-time-budget={budget_ms}", "--dump-dom", Path(page).resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if res.returncode != 0:
        raise RuntimeError(f"chromium --dump-dom failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    return res.stdout


def body_data(dom: str) -> dict[str, str]:
    """The ``data-*`` attributes of ``<body>`` in a DOM dump."""
    m = re.search(r"<body([^>]*)>", dom)
    if not m:
        raise ValueError("no <body> in the DOM dump")
    return dict(re.findall(r'data-([\w-]+)="([^"]*)"', m.group(1)))


def screenshot(chromium: str, page: Path, out: Path, size: tuple[int, int] = (1100, 1500)) -> Path:
    """A PNG of the page after it played for a moment."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        [
            chromium,
            *FLAGS,
            f"--window-size={size[0]},{size[1]}",
            "--virtual-time-budget=2000",
            f"--screenshot={out}",
            Path(page).resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if res.returncode != 0 or not out.is_file():
        raise RuntimeError(f"chromium --screenshot failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    return out
