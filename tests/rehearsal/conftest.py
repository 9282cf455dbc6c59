"""The rehearsal's summary (each stage, its time, the component kind it ran) is printed at the end of the run."""

from __future__ import annotations

import pytest

_LINES: list[str] = []
_KEY = "rehearsal_report"


@pytest.fixture
def rehearsal_report(request) -> list[str]:
    """Lines the test fills; they travel with its report (from a pytest-xdist worker too) to the summary."""
    lines: list[str] = []
    request.node.user_properties.append((_KEY, lines))
    return lines


def pytest_runtest_logreport(report) -> None:
    if report.when == "call":
        for key, value in report.user_properties:
            if key == _KEY:
                _LINES.extend(value)


def pytest_terminal_summary(terminalreporter) -> None:
    if _LINES:
        terminalreporter.section("paper-preset rehearsal")
        for line in _LINES:
            terminalreporter.write_line(line)
