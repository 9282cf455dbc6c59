"""Prefect flows: the whole DVC graph (``pipeline``) and one new catalog item (``catalog_item``).

Prefect keeps its state under ``<repo>/.prefect`` unless ``PREFECT_HOME`` is set, so a fresh clone
is self-contained; with no ``PREFECT_API_URL`` flows run on Prefect's ephemeral local server.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Before anything imports prefect: its settings are read from the environment once.
os.environ.setdefault("PREFECT_HOME", str(REPO / ".prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Prefect waits 20 s for its ephemeral server by default; on a busy 2-core machine its start (migrations, imports)
# takes longer and `make demo` died before its first stage. A hang guard, not a wait.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
