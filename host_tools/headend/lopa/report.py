"""Tables of the head-end's results, for ``meterctl headend`` and the demo (rich)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from rich import box
from rich.table import Table

from host_tools.headend.lopa.headend import OpResult, RunResult, gid_text


def short_id(meter_id: int) -> str:
    s = str(meter_id)
    return s if len(s) <= 8 else "…" + s[-6:]


def outcomes_table(res: OpResult, title: str) -> Table:
    t = Table("meter", "port", "result", "public key / detail", title=title)
    for o in res.outcomes:
        if o.ok:
            detail = o.pk.hex()[:16] + "…" if o.pk else ""
            if o.created is not None:
                detail += " (new)" if o.created else " (kept)"
            if o.note:
                detail = f"{detail} {o.note}".strip()
            t.add_row(str(o.target.meter_id), o.target.port, "[green]ok[/]", detail)
        else:
            t.add_row(str(o.target.meter_id), o.target.port, "[red]failed[/]", o.error or "")
    return t


SHORT = {"S1": "key pairs", "S2": "public keys", "S3": "group keys", "S4": "ciphertexts"}


def figures_table(summaries: Iterable[dict[str, Any]], platform: str) -> Table:
    """Bytes on the wire and times per S-test (``Op.summary()`` dicts; a ``label`` key, if
    any, names the row)."""
    t = Table("test", "meters", "cmds", "tx B", "rx B", "busy ms", "RTT ms avg/max",
              "meter µs", title=f"Head-end figures per system test ({platform})")
    for s in summaries:
        failed = f" ({s['failed']} failed)" if s["failed"] else ""
        label = s.get("label") or f"{s['test']} {SHORT.get(s['test'], s['name'])}"
        t.add_row(label, str(s["meters"]), f"{s['commands']}{failed}",
                  str(s["tx_bytes"]), str(s["rx_bytes"]), f"{s['busy_ms']:.0f}",
                  f"{_ms(s['rtt_ms_mean'])}/{_ms(s['rtt_ms_max'])}",
                  "-" if s["meter_us_sum"] is None else str(s["meter_us_sum"]))
    t.caption = ("bytes: whole frame lines on the serial line; busy: wall time less the "
                 "waits for interval boundaries (S4); RTT: host-measured round trip per "
                 "command; meter µs: the meters' own ticks_us for the LoPA work")
    return t


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def rounds_table(run: RunResult, title: str | None = None) -> Table:
    """One row per round: each member's ciphertext (hex: it is noise to anyone without the
    other members' keys), the aggregate and, in lab mode, the lab truth (labelled: read by a
    lab probe, never over the WAN). Failed rounds say FAILED; their reasons are in
    ``RoundResult.error``."""
    ids = sorted({i for r in run.rounds for i in r.ciphertexts}
                 | {i for r in run.rounds for i in r.missing})
    wide = len(ids) <= 5
    lab = any(r.expected is not None or r.lab for r in run.rounds)
    status = any(not r.ok or r.resumed for r in run.rounds)
    cols = ["interval, end"]
    cols += [f"c {short_id(i)}" for i in ids] if wide else ["ciphertexts"]
    cols += ["missing", "sum"]
    if lab:
        cols += ["LAB TRUTH", "Δ"]
    if status:
        cols += ["result"]
    t = Table(*cols, box=box.SIMPLE_HEAD, pad_edge=False,
              title=title or f"group {gid_text(run.gid)}: rounds (mWh)")
    for r in run.rounds:
        # ISO-8601 UTC, the time of day only: the date is the run's, and the column stays narrow
        row = [f"{r.t} {time.strftime('%H:%M:%SZ', time.gmtime((r.t + 1) * r.length))}"]
        if wide:
            row += [f"{r.ciphertexts[i]:08x}" if i in r.ciphertexts else "—" for i in ids]
        else:
            row += [f"{len(r.ciphertexts)} received"]
        row += [", ".join(short_id(i) for i in r.missing) or "none",
                "—" if r.aggregate is None else str(r.aggregate)]
        if lab:
            err = r.lab_error
            row += ["?" if r.expected is None else str(r.expected),
                    "" if err is None else f"{err:+d}"]
        if status:
            res = "[green]ok[/]" if r.ok else "[red]FAILED[/]"
            row.append(res + ("*" if r.resumed else ""))
        t.add_row(*row)
    notes = ["sum: the head-end's aggregate, (Σc − Σr) mod 2^32"]
    if wide:
        notes.append("c: each meter's 4-byte ciphertext, hex")
    if lab:
        notes.append("LAB TRUTH: Σ of the reporting meters' plaintexts, read by a lab probe "
                     "(a virtual meter's flash, a board's REPL), never over the WAN; "
                     "Δ = sum − lab truth")
    if any(r.resumed for r in run.rounds):
        notes.append("*: done by an earlier, interrupted run")
    t.caption = "; ".join(notes)
    return t
