"""DVC stage tasks: output streamed line by line, skip detection, failures named, PATH and parent id."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tasks.dvc import StageFailed, dvc_command, repro_stage, run_streaming, stage_env
from tests.flows.conftest import make_dvc_repo


def test_run_streaming_emits_each_line(tmp_path):
    lines: list[str] = []
    rc, last = run_streaming(
        [sys.executable, "-c", "import sys; print('one'); print('two', file=sys.stderr); print(''); print('three')"],
        tmp_path,
        stage_env(None),
        lines.append,
    )
    assert rc == 0 and last == "three"
    assert sorted(lines) == ["one", "three", "two"]


def test_stage_env_puts_venv_first_and_parent(tmp_path):
    env = stage_env("abc123", base={"PATH": "/usr/bin"})
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert env["DREAMPOSE_PARENT_RUN_ID"] == "abc123"
    assert "DREAMPOSE_PARENT_RUN_ID" not in stage_env(None, base={"PATH": "/usr/bin"})


def test_dvc_command_is_single_item():
    cmd = dvc_command("render@x")
    assert cmd[1:] == ["-m", "dvc", "repro", "--single-item", "render@x"]


def test_repro_stage_runs_skips_and_fails(tmp_path):
    repo = make_dvc_repo(
        tmp_path / "ws",
        "stages:\n  hello:\n    cmd: echo hi > hi.txt\n    outs: [hi.txt]\n"
        "  broken:\n    cmd: echo boom-reason && exit 3\n",
        "{}\n",
    )
    first = repro_stage("hello", repo)
    assert first["stage"] == "hello" and first["skipped"] is False
    assert (repo / "hi.txt").read_text().strip() == "hi"
    assert repro_stage("hello", repo)["skipped"] is True
    with pytest.raises(StageFailed, match="broken"):
        repro_stage("broken", repo)


@pytest.mark.slow
def test_stage_task_in_a_flow(tmp_path, prefect_harness):
    from prefect import flow

    from tasks.dvc import stage_task

    repo = make_dvc_repo(tmp_path / "ws", "stages:\n  hello:\n    cmd: echo hi > hi.txt\n    outs: [hi.txt]\n", "{}\n")

    @flow(persist_result=False)
    def one_stage(root: str) -> list[dict]:
        return [stage_task(name, root) for name in ("hello", "hello")]

    first, second = one_stage(str(repo))
    assert (first["skipped"], second["skipped"]) == (False, True)


def test_progress_throttle_keeps_lines_and_limits_bars():
    from tasks.dvc import ProgressThrottle

    now = [0.0]
    t = ProgressThrottle(interval_s=10, clock=lambda: now[0])
    bar = "base:  60%|######    | {}/5 [00:50<00:31, 15.92s/it]"
    assert t("Running stage 'x':") == "Running stage 'x':"
    assert t(bar.format(1)) == bar.format(1)  # the first bar line passes
    now[0] = 3.0
    assert t(bar.format(2)) is None  # held back
    assert t("plain output") == "plain output"  # never throttled
    now[0] = 11.0
    assert t(bar.format(3)) == bar.format(3)
    now[0] = 12.0
    assert t(bar.format(5)) is None
    assert t.flush() == bar.format(5) and t.flush() is None  # the final state is not lost
