"""The supervisor's diagnosis of a VM that ignores Ctrl-C while on a CPU (host_tools/sim/
supervisor.py vm_pcs): where its main thread runs, sampled by ptrace, as mapping + offset."""
from __future__ import annotations

import platform
import subprocess
import sys
import time

import pytest

from host_tools.sim import supervisor

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64" or sys.platform != "linux",
                                reason="ptrace's registers: x86-64 Linux")


def test_a_process_spinning_is_found_in_its_own_code_and_left_running() -> None:
    # CPython spinning in its eval loop: every sample in an executable mapping of its own
    # binary or library (not in the kernel, not in a sleep)
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        where = supervisor.vm_pcs(p.pid)
        samples = where.split(", ")
        assert len(samples) == 5, where
        assert all("x" in s.rsplit("(", 1)[1] for s in samples), where  # r-xp: code
        assert p.poll() is None  # still running: the samples stopped it only for a moment
        time.sleep(0.1)
        assert p.poll() is None
    finally:
        p.kill()
        p.wait()


def test_a_process_that_is_gone_gives_nothing() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert supervisor.vm_pcs(p.pid) == ""
