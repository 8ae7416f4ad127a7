"""One table for every emulated board: ours, the Elster AS300's and the physical limit, with
both ratios, per component test (issue 19, "Report"). It reads the JSON that
``python -m host_tools.emu run-bench --json`` writes for each board (``make bench-emulated``
writes build/emulated/BOARD.json) and puts the table between the ``bench-emulated:summary``
markers of docs/BENCH.md.

Ours is the board's own count turned into ms at the board's clock: rp2040js cycles exactly;
on the M0+ QEMU's instructions at the measured CPI (the X25519 machine code by its timing
walk); on the M4 and M33 instructions at one per cycle (a lower bound). Elster's figures are
at 72 MHz on its own CPU: the ratio to Elster compares times, not cycles. The limit is where a
published figure bounds the test: one X25519 in hand-written assembly (the ARMv6-M figure on
the M0+ and the RP2040, the Cortex-M4 one on the M4 and the M33, which has no published
figure; cycles at the board's clock), C3 and C4 as that many X25519s (the rest of their work
taken as free), and the LoPA code and RAM against the goals issue 19 set where no limit
exists.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from host_tools.bench import elster
from host_tools.bench.results import Result, replace_marked_block
from host_tools.emu.build import BOARDS, board_spec

# One X25519 in hand-written assembly, in cycles (zero wait states).
X25519_CM0_CYCLES = 3_229_950  # pornin/x25519-cm0 README: ARMv6-M, on a SAM D20
X25519_CM4_CYCLES = 548_873  # Emill/X25519-Cortex-M4 README: ARMv7E-M, UMAAL
X25519_LIMIT = {"m0plus": X25519_CM0_CYCLES, "rp2040": X25519_CM0_CYCLES,
                "m4": X25519_CM4_CYCLES, "m33": X25519_CM4_CYCLES}
LIMIT_SOURCE = {X25519_CM0_CYCLES: "pornin/x25519-cm0", X25519_CM4_CYCLES: "Lenngren, M4"}
METRO_GOAL_CYCLES = 1_250_000  # issue 19: a metrology second at most 1 % of a 125 MHz core
CODE_GOAL_B = 15_608  # issue 19: C12 - C11 at most Elster's LoPA code
RAM_GOAL_B = 4096  # issue 19: C14 - C13 at most 4 KB at 50 members
BOARD_ORDER = ("m0plus", "rp2040", "m4", "m33")
MARK = "summary"
# (test, members, variant, X25519s the limit is made of)
TIMED = (("C1", 50, None, 1), ("C2", 50, None, 0), ("C3", 50, None, 49), ("C4", 50, None, 1),
         ("C5", 50, "precomputed", 0), ("tick", None, None, 0))
SHOWN = {t for t, *_ in TIMED} | {"C11", "C12", "C13", "C14"}


@dataclass(frozen=True)
class Row:
    test: str
    board: str
    ours: str
    elster: str
    vs_elster: str
    limit: str
    vs_limit: str


def load(path: Path) -> tuple[str, list[Result]]:
    """(board, results) from a run-bench JSON file."""
    d = json.loads(path.read_text())
    fields = ("test", "what", "unit", "samples", "platform", "size", "setup", "variant",
              "extra")
    return str(d["board"]), [Result(**{k: r.get(k) for k in fields if k in r})
                             for r in d["results"]]


def _find(results: list[Result], test: str, size: int | None,
          variant: str | None) -> Result | None:
    for r in results:
        if r.test == test and r.size == size and (variant is None or r.variant == variant):
            return r
    return None


def ours_ms(r: Result, board: str) -> float:
    """Our median in ms at the board's clock, in the board's best estimate of cycles."""
    spec = board_spec(board)
    cyc = r.extra.get("cycles_est")
    if cyc:
        return float(statistics.median(cyc)) * 1000 / spec.nominal_hz
    count = float(statistics.median(r.extra[spec.unit]))
    return count * (spec.cpi_est or 1.0) * 1000 / spec.nominal_hz


def _ratio(a: float, b: float | None) -> str:
    return f"{a / b:.2f}×" if b else "—"


def rows(board: str, results: list[Result]) -> list[Row]:
    spec = board_spec(board)
    out: list[Row] = []
    for test, size, variant, x25519s in TIMED:
        r = _find(results, test, size, variant)
        if r is None or r.unit != "us":
            continue
        ms = ours_ms(r, board)
        fig = elster.component(test, size, variant, "ms")
        if test == "tick":
            limit_ms: float | None = METRO_GOAL_CYCLES * 1000 / spec.nominal_hz
            limit = f"{limit_ms:.1f} ms (goal: 1.25 M cycles)"
        elif x25519s:
            cycles = X25519_LIMIT[board] * x25519s
            limit_ms = cycles * 1000 / spec.nominal_hz
            n = f"{x25519s} × " if x25519s > 1 else ""
            limit = f"{limit_ms:,.1f} ms ({n}{LIMIT_SOURCE[X25519_LIMIT[board]]})"
        else:
            limit_ms, limit = None, "—"
        name = f"{test} {size} members" if size else test
        if variant:
            name += f", {variant}"
        out.append(Row(name, board, f"{ms:,.2f} ms",
                       f"{fig.bound}{fig.value:,.6g} ms" if fig else "—",
                       _ratio(ms, fig.value if fig else None), limit, _ratio(ms, limit_ms)))
    mem = {(r.test, r.size): r.median for r in results if r.unit == "bytes"}
    if ("C11", None) in mem and ("C12", None) in mem:
        code = mem[("C12", None)] - mem[("C11", None)]
        e = elster.C_MEMORY["C12"].value - elster.C_MEMORY["C11"].value
        out.append(Row("C12 − C11 LoPA code", board, f"{code:,.0f} B", f"{e:,.0f} B",
                       _ratio(code, e), f"{CODE_GOAL_B:,} B (goal)", _ratio(code, CODE_GOAL_B)))
    if ("C13", None) in mem and ("C14", 50) in mem:
        ram = mem[("C14", 50)] - mem[("C13", None)]
        e = elster.C_MEMORY["C14"].value - elster.C_MEMORY["C13"].value
        out.append(Row("C14 − C13 RAM, 50 members", board, f"{ram:,.0f} B", f"{e:,.0f} B",
                       _ratio(ram, e), f"{RAM_GOAL_B:,} B (goal)", _ratio(ram, RAM_GOAL_B)))
    return out


def _runs(by_board: dict[str, list[Result]], boards: list[str]) -> str:
    """How many runs the medians are of: the common count, and the tests that differ."""
    per_test: dict[str, set[int]] = {}
    for b in boards:
        for r in by_board[b]:
            if r.samples and r.test in SHOWN:
                per_test.setdefault(r.test, set()).add(len(r.samples))
    counts = [n for ns in per_test.values() for n in ns]
    common = max(set(counts), key=counts.count) if counts else 0
    odd = [f"{t} {'/'.join(map(str, sorted(ns)))}" for t, ns in per_test.items()
           if ns != {common}]
    return f"{common} each" + (f" (medians of more: {', '.join(odd)})" if odd else "")


def render(by_board: dict[str, list[Result]]) -> str:
    boards = [b for b in BOARD_ORDER if b in by_board]
    head = ["| test | board | ours | Elster AS300 | ours ÷ Elster | limit | ours ÷ limit |",
            "|---|---|---:|---:|---:|---:|---:|"]
    body: list[tuple[str, str]] = []
    for b in boards:
        for row in rows(b, by_board[b]):
            body.append((row.test, f"| {row.test} | {b} | {row.ours} | {row.elster} | "
                                   f"{row.vs_elster} | {row.limit} | {row.vs_limit} |"))
    order = {t: i for i, t in enumerate(dict.fromkeys(t for t, _ in body))}
    body.sort(key=lambda tb: order[tb[0]])  # stable: each test's boards in BOARD_ORDER
    labels = "; ".join(f"{b}: {board_spec(b).label}" for b in boards)
    note = (f"Boards ({labels}). Runs: {_runs(by_board, boards)}. ms at the board's "
            "clock: rp2040js cycles; M0+ instructions × its CPI "
            f"{BOARDS['m0plus'].cpi_est} (the X25519 machine code by its timing walk); M4 and "
            "M33 instructions at 1 per cycle, a lower bound, and so are their ratios. Elster "
            "at 72 MHz.")
    return "\n".join([note, "", *head, *(line for _, line in body)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m host_tools.emu summary")
    ap.add_argument("json", type=Path, nargs="+", help="run-bench --json files, one per board")
    ap.add_argument("--update-doc", type=Path, metavar="MD",
                    help=f"replace the table between the bench-emulated:{MARK} markers in MD")
    args = ap.parse_args(argv)
    by_board: dict[str, list[Result]] = {}
    for p in args.json:
        try:
            board, results = load(p)
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"error: {p}: not a run-bench --json file ({e})", file=sys.stderr)
            return 1
        by_board[board] = results
    text = render(by_board)
    print(text)
    if args.update_doc:
        replace_marked_block(args.update_doc, f"<!-- bench-emulated:{MARK} -->",
                             f"<!-- /bench-emulated:{MARK} -->", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
