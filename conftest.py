"""What every test directory shares: the figures the benchmarks print.

Speed and memory targets are measured by tests that print their figures. A test calls the
``figure`` fixture with one text; the run's summary lists every figure under "figures", with
the test it came from. It goes through the test's report, so it reaches the terminal under
pytest-xdist too (a worker's own output is not the terminal)."""

from __future__ import annotations

import collections
import os
from collections.abc import Callable

import pytest

_FIGURES: list[tuple[str, str]] = []


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    def say(text: str) -> None:
        request.node.user_properties.append(("figure", text))

    return say


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("figures")
        for nodeid, text in _FIGURES:
            terminalreporter.write_line(f"{text}\n  ({nodeid})")


# -- the order of test files under pytest-xdist (`make test`: --dist loadfile) ----------------
# A worker takes the next whole file when it is nearly done with its own; xdist hands them out
# in collection order (the Makefile's --no-loadscope-reorder keeps ours instead of xdist's
# "most tests first"). Longest first, so that the last files to start are short and both
# workers end together instead of one running a 5-minute file alone. The seconds: a file's
# setup, call and teardown time in the last full runs this checkout made (pytest's cache,
# written by the controller at the end of each xdist run), else FILE_SECONDS, else a guess by
# its number of tests (a device test drives meters; most host tests take milliseconds).
# Only under xdist: a one-process run keeps the usual order.
FILE_SECONDS = {  # 2 workers: CI (7 December 2026) and 14 files measured on their own
    "tests_device/test_powercut.py": 285,
    "tests_device/test_adversarial_headend.py": 230,
    "tests_device/test_seal.py": 155,
    "tests_device/test_flashmodel.py": 135,
    "tests_device/test_soak.py": 120,
    "tests_host/test_mutate.py": 120,
    "tests_device/test_forgery.py": 85,
    "tests_device/test_flash.py": 80,
    "tests_device/test_headend_device.py": 70,
    "tests_device/test_board_profiles.py": 70,
    "tests_device/test_lopa_device.py": 65,
    "tests_device/test_meter.py": 60,
    "tests_device/test_calibrate.py": 55,
    "tests_device/test_pybv11.py": 50,
    "tests_device/test_offswitch_device.py": 47,
    "tests_device/test_bench.py": 45,
    "tests_device/test_heap.py": 45,
    "tests_device/test_board_virtual.py": 40,
    "tests_device/test_versions_device.py": 40,
    "tests_host/test_emulated.py": 40,
    "tests_device/test_mqtt.py": 35,
    "tests_host/test_port_rp2.py": 30,
    "tests_device/test_link.py": 20,
    "tests_host/test_fuzz.py": 20,
}
_CACHE_KEY = "meterctl/file-seconds"
_RUN_SECONDS: dict[str, float] = {}


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    cache = getattr(config, "cache", None)
    learnt: dict[str, float] = cache.get(_CACHE_KEY, {}) if cache is not None else {}
    count = collections.Counter(_file_of(i.nodeid) for i in items)

    def seconds(f: str) -> float:
        guess = count[f] * (2.0 if f.startswith("tests_device/") else 0.2)
        return float(learnt.get(f, FILE_SECONDS.get(f, guess)))

    first = {f: n for n, f in enumerate(count)}  # ties: the usual order
    items.sort(key=lambda i: (-seconds(_file_of(i.nodeid)), first[_file_of(i.nodeid)]))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _FIGURES.extend((report.nodeid, str(v)) for k, v in report.user_properties
                        if k == "figure")
    f = _file_of(report.nodeid)
    _RUN_SECONDS[f] = _RUN_SECONDS.get(f, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # the controller of a whole xdist run (not a worker, not a run of a few files) learns
    config = session.config
    cache = getattr(config, "cache", None)
    if (cache is None or hasattr(config, "workerinput") or not getattr(config.option, "dist", "no")
            or config.option.dist == "no" or exitstatus not in (0, 1) or len(_RUN_SECONDS) < 20):
        return
    learnt = dict(cache.get(_CACHE_KEY, {}))
    learnt.update({f: round(s, 1) for f, s in _RUN_SECONDS.items()})
    cache.set(_CACHE_KEY, learnt)
