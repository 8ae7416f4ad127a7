"""The component tests on an emulated board, beside the Elster AS300's figures (seed 000,
72 MHz): C1–C5, C13/C14 and one metrology tick, run by ``host_tools.bench.components``
(``run_emulated``) through the same on-board code as on a virtual meter or a Pico, and
rendered here as the tables in docs/BENCH.md (``python -m host_tools.emu run-bench``,
``make bench-emulated``).

The board counts its own time: ``emu.count()`` reads QEMU's instruction clock on the m0plus
and m4 boards (exact to the timer's resolution, 63 ns on the M0+ board) and rp2040js's cycle
clock on the rp2040 board (to 1 us, 125 cycles). An instruction count is converted to time at
one instruction per cycle, which no Cortex-M achieves: those figures are a lower bound, and for
the M0+ the CPI of this code under rp2040js (1.36, the rp2040 board's cycles over the m0plus
board's instructions for the component bench) gives the cycle estimate printed beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from host_tools.bench.results import BenchAborted, Result, replace_marked_block
from host_tools.emu.build import BOARDS, REPO, BoardSpec
from host_tools.emu.run import Emulator
from host_tools.flash.build import compile_one
from host_tools.transport.serial import Board

LIB = REPO / "firmware" / "lib"
# What the timed code imports, in dependency order.
CRYPTO_LIBS = ("x25519_py", "x25519_thumb", "x25519_v7m", "x25519", "hmac_sha256", "lopa_core",
               "lopa_noise", "lopa")
# Cycles per instruction of this code on an RP2040 (rp2040js against QEMU's count).
M0PLUS_CPI: float = BOARDS["m0plus"].cpi_est or 1.0


@contextlib.contextmanager
def emulated_board(board: str = "m0plus", quiet: bool = True,
                   timeout: float = 60.0) -> Iterator[tuple[Emulator, Board]]:
    """Build (cached) and boot an emulated board; yields it with a Board in the raw REPL."""
    with Emulator(board, quiet=quiet) as emu, \
            Board(emu.port, timeout=timeout, read_timeout=emu.read_timeout,
                  exec_timeout=emu.exec_timeout) as b:
        b.enter_raw(soft_reset=True)
        yield emu, b


def upload_libs(b: Board, spec: BoardSpec, names: tuple[str, ...] = CRYPTO_LIBS) -> None:
    """Compile firmware/lib modules for the board's architecture and write them to its RAM
    filesystem, as `meterctl flash` puts them in a Pico's flash."""
    for name in names:
        dest = f"/{name}.mpy"
        b.write_file(dest, compile_one(LIB / f"{name}.py", dest, spec.mpy_arch))


def run_bench(board: str = "m0plus", sizes: tuple[int, ...] = (3, 50), runs: int = 1,
              progress: Callable[[str], None] | None = None) -> list[Result]:
    """The component tests on the emulated ``board`` (host_tools.bench.components)."""
    from host_tools.bench.components import run_emulated

    return run_emulated(board, sizes=list(sizes), runs=runs, quick=True, progress=progress)


def elster_ms(r: Result) -> str:
    """Elster's figure for the same test and group size, in ms ("" where it has none)."""
    from host_tools.bench import elster

    f = elster.component(r.test, r.size, r.variant, r.unit)
    return f"{f.bound}{f.value:g}" if f is not None and f.unit == "ms" else ""


RAM_NOTE = ("C13/C14: gc.mem_alloc() after gc.collect() with the firmware's LoPA modules "
            "loaded and a key pair, without and with a group; C11/C12: the .mpy image")


def render(results: list[Result], spec: BoardSpec) -> str:
    """The timing table (in the board's count and in ms at its clock) and the memory lines."""
    cpi = spec.name == "m0plus"
    est = f" est. ms (CPI {M0PLUS_CPI:g}; X25519 machine code by its timing walk) |" if cpi else ""
    head = (f"| test | members | what | {spec.unit} | ms @ {spec.nominal_hz // 1_000_000} MHz "
            f"(lower bound) |{est} Elster AS300 ms |")
    sep = "|---|---:|---|---:|---:|" + ("---:|" if cpi else "") + "---:|"
    rows = [head, sep]
    for r in results:
        if r.unit != "us":
            continue
        count = int(statistics.median(r.extra[spec.unit]))
        ms = r.median / 1000
        # the bench's estimate where it made one (the X25519 machine code's cycles by its
        # own timing walk: components._cycles_est), else the instructions at the CPI
        cyc = r.extra.get("cycles_est")
        est_ms = (statistics.median(cyc) * 1000 / spec.nominal_hz if cyc
                  else ms * M0PLUS_CPI)
        est = f" {est_ms:.1f} |" if cpi else ""
        what = r.what.split(":")[0]
        rows.append(f"| {r.test} | {r.size or ''} | {what} | {count:,} | {ms:.2f} |{est} "
                    f"{elster_ms(r)} |")
    mem = [r for r in results if r.unit == "bytes"]
    if mem:
        rows += ["", f"Memory ({RAM_NOTE}):", ""]
        for r in mem:
            size = f", {r.size} members" if r.size else ""
            rows.append(f"- {r.test}{size}: {r.median:,.0f} bytes ({r.what.split(':')[0]})")
    return "\n".join(rows)


def update_doc(path: Path, board: str, text: str) -> None:
    """Put ``text`` between ``<!-- bench-emulated:BOARD -->`` and
    ``<!-- /bench-emulated:BOARD -->`` in ``path`` (appended with the markers if absent)."""
    replace_marked_block(path, f"<!-- bench-emulated:{board} -->",
                         f"<!-- /bench-emulated:{board} -->", text)


# RFC 7748 section 5.2, the first vector: (scalar, u, X25519(scalar, u)).
RFC7748_VECTOR = ("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
                  "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
                  "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")

_X25519_COUNT = """
import gc, emu, x25519
k, u, want = (bytes.fromhex(x) for x in {vector!r})
thumb, impl = x25519._THUMB, x25519.IMPL
variants = []
if thumb is not None:
    variants.append(("machine code, " + impl, thumb))
if impl == "armv7e-m":  # the ARMv6-M code on the same core, for comparison
    x25519._has_umaal = lambda m: False
    variants.append(("machine code, armv6-m", x25519._load_thumb()))
variants.append(("pure Python", None))
for name, code in variants:
    x25519._THUMB = code
    counts = []
    for _ in range({runs}):
        gc.collect()
        t0 = emu.count()
        out = x25519.x25519(k, u)
        counts.append(emu.count() - t0)
        if out != want:
            raise ValueError(name + ": not the RFC 7748 result")
    gc.collect()
    free = gc.mem_free()
    gc.disable()
    try:
        x25519.x25519(k, u)
        heap = free - gc.mem_free()
    except MemoryError:
        heap = -free
    gc.enable()
    print("R", repr((name, counts, heap)))
x25519._THUMB, x25519.IMPL = thumb, impl
"""


def x25519_counts(board: str = "m0plus", runs: int = 3) -> list[tuple[str, list[int], int]]:
    """One full X25519 (the RFC 7748 section 5.2 vector, checked) on the emulated ``board``,
    ``runs`` times for each variant the board runs (the machine code where it can run: the
    ARMv7E-M code and, for comparison, the ARMv6-M code on a core with UMAAL; and the
    pure-Python fallback): (variant, counts, heap bytes one X25519 allocates; negative:
    more than that many bytes, the whole free heap, with the GC off)."""
    from host_tools.emu.build import board_spec

    spec = board_spec(board)
    timeout = 60.0 if spec.runner == "qemu" else 900.0
    with emulated_board(board, timeout=timeout) as (_, b):
        upload_libs(b, spec, CRYPTO_LIBS[:4])
        out = b.exec(_X25519_COUNT.format(vector=RFC7748_VECTOR, runs=runs),
                     "timing X25519").decode()
    import ast

    return [ast.literal_eval(ln[2:]) for ln in out.splitlines() if ln.startswith("R ")]


def x25519_main(argv: list[str]) -> int:
    from host_tools.emu.build import EmuError, board_spec

    ap = argparse.ArgumentParser(prog="python -m host_tools.emu x25519")
    ap.add_argument("--board", default="m0plus", choices=list(BOARDS))
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    spec = board_spec(args.board)
    try:
        rows = x25519_counts(args.board, max(1, args.runs))
    except EmuError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    mhz = spec.nominal_hz // 1_000_000
    print(f"one X25519 (RFC 7748 5.2 vector, matches), {spec.label}, {spec.unit} "
          f"min / median / max of {max(1, args.runs)} runs")
    for name, counts, heap in rows:
        med = statistics.median(counts)
        line = (f"  {name}: {min(counts):,} / {med:,.0f} / {max(counts):,} {spec.unit}, "
                f"{med / spec.nominal_hz * 1e3:.1f} ms at {mhz} MHz")
        if spec.cpi_est:
            line += (f", est. {med * spec.cpi_est / 1e6:.2f} M cycles "
                     f"({med * spec.cpi_est / spec.nominal_hz * 1e3:.1f} ms) at CPI "
                     f"{spec.cpi_est}")
        heap_s = f"{heap:,} B" if heap >= 0 else f"more than the free {-heap:,} B"
        print(f"{line}; heap allocated by one X25519 with the GC off: {heap_s}")
        if name.endswith("armv7e-m"):
            from host_tools.emu.x25519_v7m_gen import REFILL, trace_counts

            insns, cycles = trace_counts()
            print(f"    its machine code alone: {insns:,} instructions (the generator's walk "
                  f"of it); {cycles:,} Cortex-M4 cycles estimated from the M4's instruction "
                  f"timings (zero wait states, branch refill {REFILL}); with the rest at 2 "
                  f"cycles per instruction, one X25519 is about "
                  f"{(cycles + 2 * (med - insns)) / 1e6:.2f} M cycles")
    return 0


def main(argv: list[str] | None = None) -> int:
    from host_tools.emu.build import board_spec

    ap = argparse.ArgumentParser(prog="python -m host_tools.emu run-bench")
    ap.add_argument("--board", default="m0plus", choices=list(BOARDS))
    ap.add_argument("--runs", type=int, default=1, help="runs of each test (default 1)")
    ap.add_argument("--json", type=Path, help="also write every Result here")
    ap.add_argument("--update-doc", type=Path, metavar="MD",
                    help="replace this board's table in MD (between its bench-emulated "
                         "markers) with the new figures")
    args = ap.parse_args(argv)
    spec = board_spec(args.board)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    try:
        results = run_bench(args.board, runs=args.runs,
                            progress=lambda m: print(f"[bench] {m}", file=sys.stderr,
                                                     flush=True))
    except BenchAborted as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    how = "QEMU instruction count" if spec.unit == "instructions" else "rp2040js cycle count"
    runs = f"median of {args.runs} runs" if args.runs > 1 else "1 run"
    text = (f"{spec.label} ({how}, {runs}; Elster AS300 at 72 MHz beside it)\n\n"
            f"{render(results, spec)}")
    print(text)
    if args.update_doc:
        update_doc(args.update_doc, args.board, text)
    if args.json:
        args.json.write_text(json.dumps({"board": args.board, "label": spec.label,
                                         "results": [r.to_json() for r in results]}, indent=1))
    return 0
