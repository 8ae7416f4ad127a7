"""What every test directory shares: the figures the benchmarks print.

Speed and memory targets are measured by tests that print their figures. A test calls the
``figure`` fixture with one text; the run's summary lists every figure under "figures", with
the test it came from. It goes through the test's report, so it reaches the terminal under
pytest-xdist too (a worker's own output is not the terminal)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

_FIGURES: list[tuple[str, str]] = []


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    def say(text: str) -> None:
        request.node.user_properties.append(("figure", text))

    return say


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _FIGURES.extend((report.nodeid, str(v)) for k, v in report.user_properties
                        if k == "figure")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("figures")
        for nodeid, text in _FIGURES:
            terminalreporter.write_line(f"{text}\n  ({nodeid})")
