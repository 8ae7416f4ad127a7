"""The firmware's timed code on an emulated board: C1 (key pair), C4 (one pair key: X25519 +
HKDF) and C5 (blinding of one value, plus the addition) in emulated instructions, and in ms at
the board's nominal clock beside the Elster AS300's figures (seed 000, 72 MHz).

The board counts its own time: ``emu.count()`` reads QEMU's instruction clock on the m0plus
and m4 boards (exact to the timer's resolution, 63 ns on the M0+ board) and rp2040js's cycle
clock on the rp2040 board (to 1 us, 125 cycles). An instruction count is converted to time at
one instruction per cycle, which no Cortex-M achieves: those figures are a lower bound, and for
the M0+ the CPI of this code under rp2040js (1.287, issue 8; the rp2040 board measures it
again) gives the cycle estimate printed beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from host_tools.emu.build import REPO, BoardSpec
from host_tools.emu.run import Emulator
from host_tools.flash.build import compile_one
from host_tools.transport.serial import Board

LIB = REPO / "firmware" / "lib"
# What the timed code imports, in dependency order.
CRYPTO_LIBS = ("x25519_thumb", "x25519", "hmac_sha256", "lopa")
# Cycles per instruction of this code on an RP2040 (rp2040js against QEMU's count, issue 8).
M0PLUS_CPI = 1.287
# Elster AS300 at 72 MHz (seed 000, table 2): (3 meters, 50 meters) in ms.
ELSTER_MS = {"C1": (124.9, 126.9), "C4": (173.8, 181.2), "C5": (5.02, 96.7)}


@contextlib.contextmanager
def emulated_board(board: str = "m0plus", quiet: bool = True,
                   timeout: float = 60.0) -> Iterator[tuple[Emulator, Board]]:
    """Build (cached) and boot an emulated board; yields it with a Board in the raw REPL."""
    with Emulator(board, quiet=quiet) as emu, Board(emu.port, timeout=timeout) as b:
        b.enter_raw(soft_reset=True)
        yield emu, b


def upload_libs(b: Board, spec: BoardSpec, names: tuple[str, ...] = CRYPTO_LIBS) -> None:
    """Compile firmware/lib modules for the board's architecture and write them to its RAM
    filesystem, as `meterctl flash` puts them in a Pico's flash."""
    for name in names:
        dest = f"/{name}.mpy"
        b.write_file(dest, compile_one(LIB / f"{name}.py", dest, spec.mpy_arch))


@dataclass(frozen=True)
class Figure:
    test: str
    what: str
    members: int | None
    count: int  # instructions or cycles, as the board counts (BoardSpec.unit)
    nominal_hz: int

    @property
    def ms(self) -> float:
        return self.count / self.nominal_hz * 1000

    def elster(self) -> str:
        """Elster's figure for the same test: per group size where ours has one, else both
        (3 / 50 meters)."""
        pair = ELSTER_MS.get(self.test)
        if pair is None:
            return ""
        if self.members is None:
            return f"{pair[0]:g} / {pair[1]:g}"
        return f"{pair[1] if self.members >= 50 else pair[0]:g}"


BENCH_CODE = """
import emu, gc, os, x25519, lopa
def count(fn):
    gc.collect()
    t0 = emu.count()
    r = fn()
    return emu.count() - t0, r
out = {}
def keypair():
    sk = os.urandom(32)
    return sk, x25519.public_key(sk)
out["C1"], (sk, pk) = count(keypair)
sk2 = os.urandom(32)
pk2 = x25519.public_key(sk2)
gid = b"group-1"
out["C4"], k = count(lambda: lopa.pair_key(sk, pk2, gid, 1, 2))
for n in (3, 50):
    keys = [(j + 2, os.urandom(32)) for j in range(n - 1)]
    prepared = lopa.prepare_keys(keys)
    out["C5_%d" % n], c = count(lambda: lopa.encrypt(123456, lopa.blinding(keys, 1, gid, 96)))
    out["C5p_%d" % n], c = count(lambda: lopa.encrypt(123456, lopa.blinding(prepared, 1, gid, 96)))
gc.collect()
out["heap_free"] = gc.mem_free()
print(repr(out))
"""


def run_bench(board: str = "m0plus", quiet: bool = True) -> tuple[list[Figure], dict[str, int]]:
    from host_tools.emu.build import board_spec

    spec = board_spec(board)
    with emulated_board(board, quiet=quiet) as (_, b):
        upload_libs(b, spec)
        raw = b.exec(BENCH_CODE, "running the bench").decode().strip()
    import ast

    out: dict[str, int] = ast.literal_eval(raw.splitlines()[-1])
    hz = spec.nominal_hz
    figs = [
        Figure("C1", "create key pair (X25519 with the base point)", None, out["C1"], hz),
        Figure("C4", "create one group key (X25519 + HKDF-SHA256)", None, out["C4"], hz),
    ]
    for n in (3, 50):
        figs.append(Figure("C5", f"encrypt one value, {n} members (blinding + addition)", n,
                           out[f"C5_{n}"], hz))
        figs.append(Figure("C5'", f"same with the HMAC pads prepared ({n} members)", n,
                           out[f"C5p_{n}"], hz))
    return figs, out


def render(figs: list[Figure], spec: BoardSpec) -> str:
    cpi = spec.name == "m0plus"
    head = (f"| test | what | {spec.unit} | ms @ {spec.nominal_hz // 1_000_000} MHz "
            f"(lower bound) |{' est. ms at CPI 1.287 |' if cpi else ''} Elster AS300 ms |")
    sep = "|---|---|---:|---:|" + ("---:|" if cpi else "") + "---:|"
    rows = [head, sep]
    for f in figs:
        est = f" {f.ms * M0PLUS_CPI:.1f} |" if cpi else ""
        rows.append(f"| {f.test} | {f.what} | {f.count:,} | {f.ms:.1f} |{est} {f.elster()} |")
    return "\n".join(rows)


def update_doc(path: Path, board: str, text: str) -> None:
    """Put ``text`` between ``<!-- bench-emulated:BOARD -->`` and
    ``<!-- /bench-emulated:BOARD -->`` in ``path`` (appended with the markers if absent)."""
    begin, end = f"<!-- bench-emulated:{board} -->", f"<!-- /bench-emulated:{board} -->"
    doc = path.read_text() if path.exists() else ""
    block = f"{begin}\n{text}\n{end}"
    if begin in doc and end in doc:
        doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(doc)


def main(argv: list[str] | None = None) -> int:
    from host_tools.emu.build import board_spec

    ap = argparse.ArgumentParser(prog="python -m host_tools.emu run-bench")
    ap.add_argument("--board", default="m0plus", choices=["m0plus", "m4", "rp2040"])
    ap.add_argument("--json", type=Path, help="also write the raw counts here")
    ap.add_argument("--update-doc", type=Path, metavar="MD",
                    help="replace this board's table in MD (between its bench-emulated "
                         "markers) with the new figures")
    args = ap.parse_args(argv)
    spec = board_spec(args.board)
    figs, raw = run_bench(args.board, quiet=False)
    how = "QEMU instruction count" if spec.unit == "instructions" else "rp2040js cycle count"
    text = (f"{spec.label} ({how}; Elster AS300 at 72 MHz beside it)\n\n"
            f"{render(figs, spec)}\n\nheap free after the bench: {raw['heap_free']:,} bytes "
            f"of 192 KB")
    print(text)
    if args.update_doc:
        update_doc(args.update_doc, args.board, text)
    if args.json:
        args.json.write_text(json.dumps({"board": args.board, "label": spec.label, **raw},
                                        indent=1))
    return 0
