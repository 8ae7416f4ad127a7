"""`python -m host_tools.sim.rtt`: bad input is one clear line and a non-zero exit, before any
meter is started or port opened; the idle figure reads /proc as the kernel accounts."""

from __future__ import annotations

import os
import time

import pytest

from host_tools.sim import rtt


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    code = rtt.main(argv)
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return code, lines[0]


def test_runs_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    code, line = one_line_error(capsys, ["--port", "/dev/null", "--runs", "0"])
    assert code == 2 and line == "rtt: --runs must be at least 1"


def test_idle_must_not_be_negative(capsys: pytest.CaptureFixture[str]) -> None:
    code, line = one_line_error(capsys, ["--sim", "--idle", "-1"])
    assert code == 2 and line == "rtt: --idle must not be negative"


def test_a_missing_port_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    code, line = one_line_error(capsys, ["--port", "/dev/no-such-meter"])
    assert code == 1 and line == "rtt: /dev/no-such-meter: no such port"


def test_an_unknown_profile_is_refused_before_a_meter_starts(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[object] = []
    monkeypatch.setattr(rtt, "measure_sim", lambda *a: started.append(a))
    code, line = one_line_error(capsys, ["--sim", "--profile", "nope"])
    assert code == 1 and line.startswith("rtt: unknown profile 'nope'; valid: ")
    assert "rp2-pico" in line and started == []


def test_port_and_sim_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        rtt.main(["--port", "/dev/null", "--sim"])
    assert e.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_cpu_ticks_count_this_process_work() -> None:
    before = rtt.cpu_ticks(os.getpid())
    t = time.process_time()
    while time.process_time() - t < 0.1:  # 100 ms of CPU: at least a few clock ticks
        pass
    after = rtt.cpu_ticks(os.getpid())
    assert after - before >= 0.05 * os.sysconf("SC_CLK_TCK")


def test_thread_cpu_ns_counts_each_threads_own_work() -> None:
    import threading

    tid: list[int] = []
    spun, done = threading.Event(), threading.Event()

    def spin() -> None:
        tid.append(threading.get_native_id())
        t = time.thread_time()
        while time.thread_time() - t < 0.1:  # 100 ms of this thread's CPU
            pass
        spun.set()
        done.wait(10)

    before = rtt.thread_cpu_ns(os.getpid())
    th = threading.Thread(target=spin)
    th.start()
    assert spun.wait(10)
    after = rtt.thread_cpu_ns(os.getpid())
    done.set()
    th.join()
    assert tid[0] not in before and 0.1e9 <= after[tid[0]] < 0.2e9
    assert after[os.getpid()] - before[os.getpid()] < 0.05e9  # the main thread only waited


def test_thread_wakeups_counts_each_threads_own_sleeps() -> None:
    import threading

    tid: list[int] = []
    slept, done = threading.Event(), threading.Event()

    def sleeper() -> None:
        tid.append(threading.get_native_id())
        for _ in range(30):  # 30 sleeps: 30 times blocked and woken
            time.sleep(0.002)
        slept.set()
        done.wait(10)

    before = rtt.thread_wakeups(os.getpid())
    th = threading.Thread(target=sleeper)
    th.start()
    assert slept.wait(10)
    after = rtt.thread_wakeups(os.getpid())
    done.set()
    th.join()
    assert tid[0] not in before and 30 <= after[tid[0]] < 60
    assert after[os.getpid()] - before[os.getpid()] < 10  # the main thread waited once
