"""The default suite's file order under pytest-xdist (the root conftest.py): the longest file
first, by the last full run's seconds (pytest's cache), else by the table, else by a guess;
a one-process run keeps pytest's order, and only a whole xdist run's controller learns."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def order() -> ModuleType:
    """A fresh copy of the root conftest (its own run seconds)."""
    spec = importlib.util.spec_from_file_location("root_conftest_copy", ROOT / "conftest.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@dataclass
class Cache:
    data: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value


def items(*nodeids: str) -> list[Any]:
    return [SimpleNamespace(nodeid=n) for n in nodeids]


def files(its: list[Any]) -> list[str]:
    out: list[str] = []
    for i in its:
        f = i.nodeid.split("::")[0]
        if f not in out:
            out.append(f)
    return out


COLLECTED = ("tests_host/test_a.py::t1", "tests_host/test_a.py::t2",
             "tests_device/test_b.py::t1", "tests_device/test_powercut.py::t1",
             "tests_device/test_powercut.py::t2", "tests_host/test_c.py::t1")


def test_under_xdist_the_longest_file_goes_first_and_a_files_tests_keep_their_order(
        order: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    its = items(*COLLECTED)
    order.pytest_collection_modifyitems(SimpleNamespace(cache=Cache()), its)
    # the table's 290 s, then a device test's guess (2 s), then host tests by their number
    assert files(its) == ["tests_device/test_powercut.py", "tests_device/test_b.py",
                          "tests_host/test_a.py", "tests_host/test_c.py"]
    assert [i.nodeid for i in its][:2] == ["tests_device/test_powercut.py::t1",
                                          "tests_device/test_powercut.py::t2"]
    # the last run's seconds win over the table
    its = items(*COLLECTED)
    learnt = Cache({order._CACHE_KEY: {"tests_host/test_c.py": 400.0}})
    order.pytest_collection_modifyitems(SimpleNamespace(cache=learnt), its)
    assert files(its)[:2] == ["tests_host/test_c.py", "tests_device/test_powercut.py"]


def test_one_process_keeps_pytests_order(order: ModuleType,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    its = items(*COLLECTED)
    order.pytest_collection_modifyitems(SimpleNamespace(cache=Cache()), its)
    assert [i.nodeid for i in its] == list(COLLECTED)


def _session(cache: Cache, dist: str, worker: bool = False) -> Any:
    config = SimpleNamespace(cache=cache, option=SimpleNamespace(dist=dist))
    if worker:
        config.workerinput = {}
    return SimpleNamespace(config=config)


def test_only_a_whole_xdist_runs_controller_learns_each_files_seconds(
        order: ModuleType) -> None:
    for n in range(25):
        for when, s in (("setup", 1.0), ("call", 2.5), ("teardown", 0.5)):
            order.pytest_runtest_logreport(SimpleNamespace(
                nodeid=f"tests_host/test_{n}.py::t", when=when, duration=s,
                user_properties=[]))
    for session in (_session(Cache(), "no"), _session(Cache(), "loadfile", worker=True)):
        order.pytest_sessionfinish(session, 0)
        assert session.config.cache.data == {}
    interrupted = _session(Cache(), "loadfile")
    order.pytest_sessionfinish(interrupted, 2)
    assert interrupted.config.cache.data == {}
    old = {"tests_host/test_0.py": 99.0, "tests_host/gone.py": 7.0}
    whole = _session(Cache({order._CACHE_KEY: dict(old)}), "loadfile")
    order.pytest_sessionfinish(whole, 1)
    learnt = whole.config.cache.data[order._CACHE_KEY]
    assert learnt["tests_host/test_0.py"] == 4.0 and learnt["tests_host/test_24.py"] == 4.0
    assert learnt["tests_host/gone.py"] == 7.0 and len(learnt) == 26


def test_a_run_of_a_few_files_teaches_nothing(order: ModuleType) -> None:
    order.pytest_runtest_logreport(SimpleNamespace(nodeid="tests_host/test_x.py::t",
                                                   when="call", duration=3.0,
                                                   user_properties=[]))
    small = _session(Cache(), "loadfile")
    order.pytest_sessionfinish(small, 0)
    assert small.config.cache.data == {}
