"""Sealing in the firmware, on the MicroPython VM (192 KB heap): the comm task after Ctrl-C and
Ctrl-A bytes (what a sealed meter's firmware receives), and the kernel's SEAL service. The
whole meter sealed, power-cut and unsealed is tests_device/test_seal.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests_host.conftest import FIRMWARE

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
        assert r[case]["sent"] == [["cs_security", "frame_in", "~AAAA"]], r
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


# -- main.py's boot and seal.run, the first and the last thing a sealed meter runs ------------
class _Stop(BaseException):
    """Ends main.py's run for ever (seal.run) in the tests below."""


def _boot_main(sealed: bool, interrupts: int = 0) -> tuple[list[object], BaseException | None]:
    """Run firmware/main.py on CPython with stand-ins for the modules it imports, recording
    what it does in order; `interrupts` Ctrl-Cs land in its seal check. -> (events, what
    escaped main.py)."""
    events: list[object] = []
    pending = [interrupts]

    class Os:
        @staticmethod
        def stat(path: str) -> tuple[int, ...]:
            events.append(("stat", path))
            if pending[0]:
                pending[0] -= 1
                raise KeyboardInterrupt
            if not sealed:
                raise OSError(2, "ENOENT")
            return (0,) * 10

    class Micropython:
        @staticmethod
        def kbd_intr(c: int) -> None:
            events.append(("kbd_intr", c))

    class PortCheck:
        @staticmethod
        def identity() -> tuple[()]:
            return ()

        @staticmethod
        def problem(ident: object) -> None:
            return None

    class Lazy:
        @staticmethod
        def compact_imports(on: bool) -> None:
            pass

    class Meter:
        @staticmethod
        def start(s: bool) -> str:
            events.append(("meter.start", s))
            return "kernel"

    class Seal:
        @staticmethod
        def run(k: object) -> None:
            events.append(("seal.run", k))
            raise _Stop

    class Gc:
        @staticmethod
        def collect() -> None:
            pass

    import builtins
    import sys

    stand_ins: dict[str, object] = {"os": Os, "micropython": Micropython,
                                    "port_check": PortCheck, "lazy": Lazy, "meter": Meter,
                                    "seal": Seal, "gc": Gc, "sys": sys}
    real_import = builtins.__import__

    def imp(name: str, *args: object, **kw: object) -> object:
        if name in stand_ins:
            if name == "meter":
                events.append("import meter")
            return stand_ins[name]
        return real_import(name, *args, **kw)  # type: ignore[arg-type]

    code = compile((FIRMWARE / "main.py").read_text(), str(FIRMWARE / "main.py"), "exec")
    env = {"__name__": "__main__", "__builtins__": dict(vars(builtins), __import__=imp)}
    saved = sys.modules.get("port_check")
    try:
        exec(code, env)
    except BaseException as e:  # what escaped main.py is the result
        return events, e
    finally:
        if saved is not None:
            sys.modules["port_check"] = saved
    return events, None


def _kbd(events: list[object], before: str = "import meter") -> list[int]:
    """The kbd_intr() calls made before `before` happened."""
    upto = events.index(before) if before in events else len(events)
    return [e[1] for e in events[:upto] if isinstance(e, tuple) and e[0] == "kbd_intr"]


def test_main_turns_ctrl_c_off_first_on_a_sealed_meter() -> None:
    """Sealed: the seal is checked and Ctrl-C is off before the meter is even imported, and
    stays off; Ctrl-Cs landing in the check itself are ignored. Unsealed: Ctrl-C is on when
    the meter starts, and a Ctrl-C in the check is honoured (the REPL, as on any board)."""
    for interrupts in (0, 1, 2):
        events, escaped = _boot_main(sealed=True, interrupts=interrupts)
        assert isinstance(escaped, _Stop), (interrupts, escaped)  # no Ctrl-C got through
        assert ("stat", "/data/sealed") in events[:events.index("import meter")]
        assert _kbd(events)[-1:] == [-1], events  # off before the meter is imported ...
        assert _kbd(events, "end") == _kbd(events), events  # ... and nothing turns it on
        assert ("meter.start", True) in events

    events, escaped = _boot_main(sealed=False)
    assert isinstance(escaped, _Stop)
    assert _kbd(events, "end")[-1:] in ([], [3]), events  # Ctrl-C on, as on any board
    assert ("meter.start", False) in events

    events, escaped = _boot_main(sealed=False, interrupts=1)
    assert isinstance(escaped, KeyboardInterrupt) and "import meter" not in events


def test_a_sealed_meters_main_loop_never_returns_to_the_repl(micropython: Run,
                                                             tmp_path: Path) -> None:
    """seal.run on the VM: a kernel whose run() keeps failing is logged and run again while
    the meter is sealed; unsealed, the error ends main.py (the REPL, as on any board)."""
    flag = tmp_path / "sealed"
    out = micropython(f"""
import json, seal
seal.SEALED = {str(flag)!r}
class Stop(BaseException):
    pass
class K:
    def __init__(self):
        self.runs, self.logs = 0, []
    def run(self):
        self.runs += 1
        if self.runs > 3:
            raise Stop
        raise ValueError("boom %d" % self.runs)
    def log(self, task, text):
        self.logs.append([task, text])
def go():
    k = K()
    try:
        seal.run(k)
    except Stop:
        return [k.runs, k.logs, "ran on"]
    except ValueError as e:
        return [k.runs, k.logs, "ended: %s" % e]
r = {{"unsealed": go()}}
open(seal.SEALED, "w").close()
r["sealed"] = go()
print(json.dumps(r))
""")
    r = json.loads(out.strip().splitlines()[-1])
    assert r["unsealed"] == [1, [], "ended: boom 1"]
    assert r["sealed"] == [4, [["kernel", f"main loop error: ValueError boom {i}"]
                               for i in (1, 2, 3)], "ran on"]
