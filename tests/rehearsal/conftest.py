"""The rehearsal's summary (each stage, its time, the component kind it ran) is printed at the end of the run."""

from __future__ import annotations

import pytest

_LINES: list[str] = []


@pytest.fixture
def rehearsal_report() -> list[str]:
    return _LINES


def pytest_terminal_summary(terminalreporter) -> None:
    if _LINES:
        terminalreporter.section("paper-preset rehearsal")
        for line in _LINES:
            terminalreporter.write_line(line)
