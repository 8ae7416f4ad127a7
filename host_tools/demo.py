"""The main job on virtual meters, as `make run` shows it.

Start a fleet, flash each meter, provision it (identity, WAN keys, clock; keys kept in a
keystore inside the fleet directory) and read it once over the authenticated WAN protocol.
Then act as the LoPA head-end (state in the fleet directory's ``headend.db``): key pairs (S1),
public keys (S2), one group of all meters (S3; robust with M=1 from 3 meters), three
aggregation rounds (S4) shown next to the lab truth, and finally one meter loses its power and
a robust round still decrypts. Bytes on the wire and times per S-test close the show.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from host_tools import demo_offswitch
from host_tools.flash.deploy import flash
from host_tools.headend import wire
from host_tools.headend.client import open_link
from host_tools.headend.keystore import Keystore
from host_tools.headend.lopa import HeadEnd, OpResult, State, Target, serial_connector
from host_tools.headend.lopa.lab import serial_probe
from host_tools.headend.lopa.report import figures_table, rounds_table
from host_tools.headend.provision import provision
from host_tools.sim import fleet
from host_tools.sim.fleet import SimError

INTERVAL_S = 4  # load-profile interval on the virtual meters (a real meter: 900)
GID = b"demo"
PLATFORM = "virtual board"


def _reading_table(readings: dict[int, dict[str, Any]], title: str) -> Table:
    t = Table("meter", "V", "A", "W", "VA", "PF", "Hz", "imp Wh", "exp Wh", "interval from",
              title=title)
    for i, r in sorted(readings.items()):
        t.add_row(str(i), f"{r['vrms']:.1f}", f"{r['irms']:.2f}", f"{r['power_w']:.0f}",
                  f"{r['apparent_va']:.0f}", f"{r['pf']:.3f}", f"{r['freq_hz']:.2f}",
                  str(r["energy_import_wh"]), str(r["energy_export_wh"]),
                  time.strftime("%H:%M:%S", time.gmtime(r["interval"]["start"])))
    return t


def _check(res: OpResult, what: str, console: Console) -> None:
    for o in res.failed:
        console.print(f"[red]  {what}: {o.target.name}: {o.error}[/]", highlight=False)
    if res.failed:
        raise SimError(f"{what} failed on {len(res.failed)} meter(s)")


def _fresh_db(base: Path) -> Path:
    # a demo starts from scratch: provisioning gives the meters new ids
    db = base / "headend.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    return db


def _lopa(recs: list[dict[str, Any]], ids: dict[int, int], base: Path, keystore: Keystore,
          console: Console) -> None:
    n = len(recs)
    m = 1 if n >= 3 else 0
    targets = [Target(ids[r["id"]], r["port"]) for r in recs]
    figures = []
    with State(_fresh_db(base)) as state, HeadEnd(state, serial_connector(keystore),
                                                  timeout=3.0) as he:
        console.print(f"[bold]LoPA head-end[/] (database {state.path})")
        res = he.keys(targets)
        _check(res, "S1 key pairs", console)
        figures.append(res.op.summary())
        console.print(f"  S1: {n} key pairs made on the meters "
                      f"({sum(bool(o.created) for o in res.outcomes)} new)")
        res = he.pubkeys(targets)
        _check(res, "S2 public keys", console)
        figures.append(res.op.summary())
        console.print(f"  S2: {n} public keys read and checked (length, not low-order)")
        res = he.group_create(GID, targets, m=m)
        _check(res, "S3 group keys", console)
        figures.append(res.op.summary())
        kind = f"robust, M={m}" if m else "plain"
        console.print(f"  S3: group {GID.decode()!r} of {n} meters set up ({kind}); "
                      f"each meter derived {n - 1} pair keys")
        console.print(f"  S4: {3} rounds, one per {INTERVAL_S}-s interval; then the lab probe "
                      "reads each meter's plaintexts from its flash (lab truth)")
        run = he.run(GID, 3, lab=serial_probe(fleets=[base], keystore=keystore))
        figures.append(run.op.summary())
        console.print(rounds_table(run, f"group {GID.decode()!r}: 3 rounds (mWh)"))
        for i, why in run.lab_errors.items():
            console.print(f"[yellow]  lab probe, meter {i}: {why}[/]", highlight=False)
        if m == 0:
            console.print("(fewer than 3 meters: no robust group, no power cut shown)")
            return
        # One meter loses its power for a while: the robust round goes on without it.
        cut = n - 1
        off_s = 3 * INTERVAL_S + 8

        def power_cut() -> None:
            with contextlib.suppress(SimError):
                fleet.power_cut(cut, base, off_s)

        cutter = threading.Thread(target=power_cut, daemon=True)
        cutter.start()
        console.print(f"[bold]meter {cut} ({ids[cut]}): power cut[/] (off for {off_s} s); "
                      f"next round, M={m} may be missing")
        run = he.run(GID, 1, lab=serial_probe(fleets=[base], keystore=keystore))
        figures.append({**run.op.summary(), "label": "S4, 1 meter down"})
        console.print(rounds_table(run, "robust round with a meter down (mWh)"))
        for r in run.rounds:
            if r.ok:
                console.print(f"  decrypted without meter {', '.join(map(str, r.missing))}: "
                              f"sum {r.aggregate} = lab truth {r.expected}"
                              if r.aggregate == r.expected else
                              f"  [red]sum {r.aggregate} != lab truth {r.expected}[/]")
            else:
                console.print(f"[red]  {r.error}[/]", highlight=False)
        console.print(figures_table(figures, PLATFORM))
        cutter.join(timeout=off_s + 15)


def run_demo(meters: int, base: Path | None, keep: bool, console: Console) -> None:
    base = (base or fleet.default_dir()).resolve()
    console.print(f"[bold]Starting {meters} virtual meters[/] in {base}")
    t0 = time.monotonic()
    recs = fleet.start(meters, base)
    console.print(f"  up in {time.monotonic() - t0:.1f} s")
    keystore = Keystore(base / "keystore.json")
    try:
        ids: dict[int, int] = {}
        for r in recs:
            rep = flash(r["port"])
            what = (f"wrote {len(rep.written)} files, {rep.bytes_sent} B" if rep.written
                    else f"up to date ({len(rep.unchanged)} files)")
            console.print(f"  flashed meter {r['id']} on {r['port']}: {what}, as {rep.mode}")
            console.print(f"    {rep.board.describe()}")
        for r in recs:
            p = provision(r["port"], keystore, force=True, interval_s=INTERVAL_S,
                          offswitch_limits=demo_offswitch.DEMO_LIMITS)
            ids[r["id"]] = p.meter_id
            console.print(f"  provisioned meter {r['id']}: id {p.meter_id}, "
                          f"{'new key' if p.new_key else 'key kept'}, clock set, "
                          f"{INTERVAL_S}-s intervals")
        console.print(f"  keystore: {keystore.path}")
        time.sleep(1.2)  # a first complete second measured
        readings = {}
        for r in recs:
            with open_link(r["port"], keystore) as link:
                readings[r["id"]] = link.request(wire.K_READ)
        console.print(_reading_table(
            readings, f"Head-end read (authenticated, encrypted; {PLATFORM})"))
        # The HAN data diode and an off-switch cycle (docs/OFFSWITCH.md), on meter 0.
        demo_offswitch.show(0, recs[0]["port"], recs[0]["han"], base, keystore, console)
        _lopa(recs, ids, base, keystore, console)
        console.print(f"done in {time.monotonic() - t0:.0f} s")
    finally:
        if keep:
            console.print(f"meters left running; stop them with: meterctl sim stop --dir {base}")
        else:
            fleet.stop(base)
            console.print("meters stopped")
