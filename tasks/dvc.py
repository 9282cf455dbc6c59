"""Prefect tasks that run one DVC stage each (``dvc repro --single-item <stage>``).

``--single-item`` makes a task do exactly its own stage: the flow orders the stages, DVC decides
whether the stage is stale (and skips it when nothing changed). The stage's output is streamed
line by line into the Prefect run logger. These tasks have side effects on the workspace, so
their results are never cached by Prefect (``NO_CACHE``); DVC's cache is the one that counts.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

SKIPPED = re.compile(r"Stage '([^']+)' didn't change, skipping")
PROGRESS = re.compile(r"\|\s*\d+/\d+\s*\[")  # a tqdm bar: "…| 3/5 [00:50<00:31, …]"


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message carries its last output line."""


def dvc_command(stage: str) -> list[str]:
    """The command one task runs for ``stage`` (e.g. ``render@syn_test_000``)."""
    return [sys.executable, "-m", "dvc", "repro", "--single-item", stage]


def stage_env(parent_run_id: str | None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a stage: the venv's ``bin`` first on PATH (DVC runs ``bin/python -m dreampose.stages.<stage>``
    via the shell, and that launcher falls back to the Python beside ``dreampose`` on PATH in a workspace without
    its own ``.venv``) and the MLflow parent run id, so each stage's run nests under the pipeline run."""
    env = dict(os.environ if base is None else base)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    env.setdefault("DVC_NO_ANALYTICS", "1")
    if parent_run_id:
        env["DREAMPOSE_PARENT_RUN_ID"] = parent_run_id
    return env


def run_streaming(cmd: list[str], cwd: Path, env: Mapping[str, str], emit: Callable[[str], Any]) -> tuple[int, str]:
    """Run ``cmd``, passing each output line (stdout and stderr merged) to ``emit``.

    Returns ``(exit code, last non-empty line)``.
    """
    last = ""
    with subprocess.Popen(
        cmd,
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                last = line
                emit(line)
        rc = proc.wait()
    return rc, last


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except Exception:  # called outside a flow run (plain function use)
        return logging.getLogger("dreampose.tasks")


class ProgressThrottle:
    """Pass through ordinary lines; let a progress-bar line through at most every ``interval_s`` seconds.

    Progress bars redraw with carriage returns, which arrive here as separate lines: unthrottled they
    would flood the run log. ``flush`` returns the last held-back progress line (the final state).
    """

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self._last_emit = -float("inf")
        self._held: str | None = None

    def __call__(self, line: str) -> str | None:
        if not PROGRESS.search(line):
            return line
        now = self.clock()
        if now - self._last_emit >= self.interval_s:
            self._last_emit, self._held = now, None
            return line
        self._held = line
        return None

    def flush(self) -> str | None:
        held, self._held = self._held, None
        return held


def repro_stage(stage: str, root: str | Path, parent_run_id: str | None = None) -> dict[str, Any]:
    """Bring one DVC stage up to date; returns ``{stage, skipped, seconds}``."""
    log = _logger()
    t0 = time.perf_counter()
    skipped = False
    throttle = ProgressThrottle()

    def emit(line: str) -> None:
        nonlocal skipped
        if SKIPPED.search(line):
            skipped = True
        shown = throttle(line)
        if shown is not None:
            log.info("%s | %s", stage, shown)

    rc, last = run_streaming(dvc_command(stage), Path(root), stage_env(parent_run_id), emit)
    final = throttle.flush()
    if final is not None:
        log.info("%s | %s", stage, final)
    if rc != 0:
        raise StageFailed(f"stage {stage} failed (exit {rc}): {last}")
    return {"stage": stage, "skipped": skipped, "seconds": round(time.perf_counter() - t0, 2)}


@task(name="dvc-stage", task_run_name="{stage}", cache_policy=NO_CACHE, persist_result=False)
def stage_task(stage: str, root: str, parent_run_id: str | None = None) -> dict[str, Any]:
    """One DVC stage (no retries: a failing computation fails the same way again)."""
    return repro_stage(stage, root, parent_run_id)


@task(
    name="dvc-stage-network",
    task_run_name="{stage}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_jitter_factor=0.5,
)
def network_stage_task(stage: str, root: str, parent_run_id: str | None = None) -> dict[str, Any]:
    """A stage that talks to the network (``download``): retried with exponential backoff.

    The download stage is itself resumable, so a retry continues where the last attempt stopped.
    """
    return repro_stage(stage, root, parent_run_id)
