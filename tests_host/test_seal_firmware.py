"""Sealing in the firmware, on the MicroPython VM (192 KB heap): the comm task after Ctrl-C and
Ctrl-A bytes (what a sealed meter's firmware receives), and the kernel's SEAL service. The
whole meter sealed, power-cut and unsealed is tests_device/test_seal.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

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
