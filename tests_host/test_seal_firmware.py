"""Sealing in the firmware, on the MicroPython VM (192 KB heap): the comm task after Ctrl-C and
Ctrl-A bytes (what a sealed meter's firmware receives), and the kernel's SEAL service. The
whole meter sealed, power-cut and unsealed is tests_device/test_seal.py."""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

Run = Callable[..., str]

PRELUDE = """
import json, os, seal
seal.SEALED = {path!r}
from tasks.comm import Comm, SEALED_NOTICE

class Link:
    def __init__(self, data):
        self.data, self.out = data, []
    def readinto(self, buf):
        n = min(len(buf), len(self.data))
        buf[:n] = self.data[:n]
        self.data = self.data[n:]
        return n
    def write(self, b):
        self.out.append(bytes(b))

class Port:
    def __init__(self):
        self.sent = []
    def send(self, to, kind, payload=None):
        self.sent.append([to, kind, payload.decode() if isinstance(payload, bytes) else payload])
        return True
    def log(self, text):
        pass

def run(data):
    port, link = Port(), Link(data)
    c = Comm(port, {{"wan": link}})
    c.step()
    return {{"sent": port.sent, "notices": sum(o == SEALED_NOTICE for o in link.out)}}
"""


def test_comm_after_ctrl_bytes_takes_the_next_frame_and_says_sealed_only_when_sealed(
        micropython: Run, tmp_path: Path) -> None:
    flag = tmp_path / "sealed"
    out = micropython(PRELUDE.format(path=str(flag)) + """
mpremote = b"\\r\\x03\\r\\x01" + b"junk\\x03~AAAA\\n" + b"\\x03\\x03\\x01"
r = {"unsealed": run(mpremote)}
open(seal.SEALED, "w").close()
r["sealed"] = run(mpremote)
print(json.dumps(r))
""")
    r = json.loads(out.strip().splitlines()[-1])
    # a control byte ends whatever came before it: the frame after it still arrives, once
    for case in ("unsealed", "sealed"):
        assert r[case]["sent"] == [["cs_security", "frame_in", "AAAA"]], r  # the frame
    assert r["unsealed"]["notices"] == 0
    assert r["sealed"]["notices"] == 2  # one for Ctrl-C, one for Ctrl-A, each once a second


def test_the_kernel_seals_and_unseals_and_logs_it(micropython: Run, tmp_path: Path) -> None:
    flag = tmp_path / "sealed"
    logs = tmp_path / "logs"
    logs.mkdir()
    out = micropython(f"""
import json, micropython, seal, kernel
seal.SEALED = {str(flag)!r}
flows = {{("a", "kernel"): ("seal",), ("kernel", "a"): ("seal_data",)}}
got = []
class A:
    def __init__(self, port, hw):
        self.port = port
    def handle(self, sender, kind, payload):
        got.append([kind, payload[1], payload[2], seal.is_sealed()])
k = kernel.Kernel(flows, {{}}, {{"security": ({str(logs / "sec.bin")!r}, 8, 64)}}, lambda: 0)
a = k.add("a", A)
for on in (True, True, False):
    a.port.send("kernel", "seal", (7, on))
    k.run_once()
    k.run_once()
micropython.kbd_intr(3)
print(json.dumps({{"got": got, "log": [r[2] for r in k.read_log("security")]}}))
""")
    r = json.loads(out.strip().splitlines()[-1])
    assert r["got"] == [["seal_data", 0, '{"sealed": true}', True],
                        ["seal_data", 0, '{"sealed": true}', True],
                        ["seal_data", 0, '{"sealed": false}', False]]
    assert r["log"] == ["seal: sealed (WAN command)"] * 2 + ["seal: unsealed (WAN command)"]
    assert not flag.exists()


MAIN_PY = Path(__file__).resolve().parent.parent / "firmware" / "main.py"

# main.py run on the VM as the board's pyexec runs it, with its flash path moved to tmp, and
# port_check, meter and time replaced: `problem` is what port_check says (None: boot on),
# `boot_raises` what meter.start raises, and time.sleep ends the run with Idle (the board
# would idle there for ever). What the run ends with, and whether Ctrl-C is on at that moment
# (the unix port keeps SIGINT caught exactly while the interrupt character is on:
# ports/unix/unix_mphal.c, v1.28.0 mp_hal_set_interrupt_char), is printed.
MAIN_HARNESS = """
import json, sys

class Idle(BaseException):
    pass

def ctrl_c_on():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & 2)  # bit 1: SIGINT (2)

class M:
    pass

port_check = M()
port_check.identity = lambda: None
port_check.problem = lambda ident: {problem!r}
tm = M()
def sleep(s):
    raise Idle()
tm.sleep = sleep
meter = M()
def start(sealed):
    if {unseal_then_raise!r}:
        import os
        os.remove({flag!r})  # an authenticated UNSEAL while it ran (kernel_svc.set_sealed)
    raise {boot_raises}
meter.start = start
lazy = M()
lazy.compact_imports = lambda on: None
sys.modules.update({{"port_check": port_check, "time": tm, "meter": meter, "lazy": lazy}})
src = open({main!r}).read().replace('"/data/sealed"', repr({flag!r}))
try:
    exec(src, {{"__name__": "__main__"}})
    end = "main.py ended"
except Idle:
    end = "idles"
except BaseException as e:
    end = "main.py ended by " + type(e).__name__
print(json.dumps({{"end": end, "ctrl_c_on": ctrl_c_on()}}))
"""


def _main_on_vm(micropython: Run, tmp_path: Path, *, sealed: bool, problem: str | None = None,
                boot_raises: str = "RuntimeError('flash corrupt')",
                unseal_then_raise: bool = False) -> dict[str, object]:
    flag = tmp_path / "sealed"
    if sealed:
        flag.write_text("sealed\n")
    elif flag.exists():
        flag.unlink()
    out = micropython(MAIN_HARNESS.format(problem=problem, boot_raises=boot_raises,
                                          unseal_then_raise=unseal_then_raise, flag=str(flag),
                                          main=str(MAIN_PY)))
    r: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return r


def test_a_sealed_main_py_never_ends_and_keeps_ctrl_c_off(micropython: Run,
                                                          tmp_path: Path) -> None:
    # Whatever stops the boot of a sealed meter (an unsupported port, an exception, even a
    # KeyboardInterrupt or SystemExit from the firmware), main.py does not end - that would be
    # the REPL - and Ctrl-C stays off.
    for kw in ({"problem": "unsupported MicroPython"}, {"boot_raises": "RuntimeError('x')"},
               {"boot_raises": "KeyboardInterrupt"}, {"boot_raises": "SystemExit"},
               {"boot_raises": "MemoryError"}):
        assert _main_on_vm(micropython, tmp_path, sealed=True, **kw) == {  # type: ignore[arg-type]
            "end": "idles", "ctrl_c_on": False}, kw
    # unsealed, it ends as on any board, with Ctrl-C on again
    assert _main_on_vm(micropython, tmp_path, sealed=False, boot_raises="RuntimeError('x')") == {
        "end": "main.py ended by RuntimeError", "ctrl_c_on": True}
    assert _main_on_vm(micropython, tmp_path, sealed=False, problem="unsupported") == {
        "end": "main.py ended", "ctrl_c_on": True}
    # unsealed by an authenticated UNSEAL while it ran: it ends too (the REPL is open again)
    r = _main_on_vm(micropython, tmp_path, sealed=True, unseal_then_raise=True,
                    boot_raises="KeyboardInterrupt")
    assert r["end"] == "main.py ended by KeyboardInterrupt"


def test_main_py_turns_ctrl_c_off_before_the_vms_first_check() -> None:
    # The window before Ctrl-C is off (docs/SECURITY.md "Sealed meters"): a board raises a
    # pending KeyboardInterrupt only at a jump (py/vm.c v1.28.0, DISPATCH_WITH_PEND_EXC_CHECK)
    # or in Python code a call runs. So before kbd_intr(-1) main.py may hold only constant
    # assignments, the import of the built-in `micropython` and the call itself, inside a try
    # whose handler catches the one KeyboardInterrupt that can be pending, raised by the loop
    # right after it (the check inside the try) - and nothing may read the flash first. A
    # main.py that checked the seal first, or caught the interrupt in a loop whose handler ran
    # with Ctrl-C still on (issue 18's window), fails here.
    tree = ast.parse(MAIN_PY.read_text())
    body = tree.body
    i = 0
    while isinstance(body[i], ast.Assign | ast.Expr) and not _has_call(body[i]):
        i += 1  # comments, docstrings, `_x = False`
    first = body[i]
    assert isinstance(first, ast.Try), ast.dump(first)[:200]
    stmts = first.body
    assert isinstance(stmts[0], ast.Import) and [a.name for a in stmts[0].names] == ["micropython"]
    call = stmts[1]
    assert (isinstance(call, ast.Expr) and isinstance(call.value, ast.Call)
            and ast.unparse(call.value) == "micropython.kbd_intr(-1)"), ast.unparse(call)
    assert isinstance(stmts[2], ast.While), "no check inside the try right after kbd_intr(-1)"
    assert [ast.unparse(h.type) for h in first.handlers if h.type] == ["KeyboardInterrupt"]
    assert all(not _has_call(s) for h in first.handlers for s in h.body)


def _has_call(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Call | ast.Import | ast.ImportFrom) for n in ast.walk(node))


def test_the_main_loop_of_a_sealed_meter_goes_on_after_any_exception(micropython: Run,
                                                                    tmp_path: Path) -> None:
    # lib/seal.py run(): sealed, the kernel's loop survives a SystemExit and an error (each
    # logged); once an UNSEAL has removed the seal, an exception ends it as on any board.
    flag = tmp_path / "sealed"
    flag.write_text("sealed\n")
    out = micropython(f"""
import json, os, seal
seal.SEALED = {str(flag)!r}
class K:
    def __init__(self):
        self.calls, self.logs = 0, []
    def log(self, task, text):
        self.logs.append(text)
    def run(self):
        self.calls += 1
        if self.calls == 1:
            raise SystemExit
        if self.calls == 2:
            raise RuntimeError("boom")
        os.remove(seal.SEALED)
        raise KeyboardInterrupt
k = K()
try:
    seal.run(k)
    end = "returned"
except KeyboardInterrupt:
    end = "KeyboardInterrupt"
print(json.dumps({{"end": end, "calls": k.calls, "logs": k.logs}}))
""")
    r = json.loads(out.strip().splitlines()[-1])
    assert r == {"end": "KeyboardInterrupt", "calls": 3,
                 "logs": ["main loop error: SystemExit ", "main loop error: RuntimeError boom"]}


def test_the_han_telegram_shows_the_seal_and_stays_dsmr_valid(micropython: Run,
                                                             tmp_path: Path) -> None:
    # tasks/han.py on the VM: the text message (0-0:96.13.0) says the seal, re-read every
    # SEAL_EVERY telegrams; dsmr-parser's V5 (checksum checked) reads every telegram.
    from dsmr_parser import telegram_specifications
    from dsmr_parser.parsers import TelegramParser

    flag = tmp_path / "sealed"
    out = micropython(f"""
import json, os, seal
seal.SEALED = {str(flag)!r}
from tasks.han import Han, SEAL_EVERY
class Tx:  # the HAN UART: a telegram may come in several writes; printed once whole
    name = ""
    buf = ""
    def write(self, b):
        self.buf += bytes(b).decode()
        i = self.buf.rfind("!")
        if i >= 0 and len(self.buf) - i == 7 and self.buf.endswith("\\r\\n"):  # "!" CRC CRLF
            print(json.dumps([self.name, self.buf]))
            self.buf = ""
def run(name, service, sealed_at):
    tx = Tx()
    tx.name = name
    h = Han(None, {{"han_tx": tx, "config": {str(tmp_path / "none.json")!r},
                   "unsealed_by_service": service}})
    for i in range(3 * SEAL_EVERY):
        if i == sealed_at:
            open(seal.SEALED, "w").close()
        h.handle("metrology", "reading", (1753000000 + i, 230.0, 1.0, 230.0, 5, 0))
    if seal.is_sealed():
        os.remove(seal.SEALED)
run("service", True, SEAL_EVERY)
run("plain", False, -1)
print(json.dumps(["every", SEAL_EVERY]))
""")
    r: dict[str, Any] = {}
    for line in out.strip().splitlines():
        name, value = json.loads(line)
        r[name] = value if name == "every" else [*r.get(name, []), value]
    v5 = TelegramParser(telegram_specifications.V5)

    def texts(tels: list[str]) -> list[str]:
        # the seal's word (the line also says consent=on|off: tests_host/test_roles.py)
        return [bytes.fromhex(v5.parse(t).TEXT_MESSAGE.value).decode().split()[0]
                for t in tels]

    n = r["every"]
    # unsealed by the service input at this power-up, sealed again after n telegrams: seen at
    # the next read of the seal, and the service mark gone for good
    assert texts(r["service"]) == (["seal=open-service"] * n + ["seal=closed"] * n
                                   + ["seal=closed"] * n)
    assert set(texts(r["plain"])) == {"seal=open"}
