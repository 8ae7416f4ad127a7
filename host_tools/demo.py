"""The main job on virtual meters, as `make run` shows it.

Start a fleet, flash each meter, provision it (identity, WAN keys, clock; keys kept in a
keystore inside the fleet directory), then act as the head-end: read every meter over the
authenticated WAN protocol a few times and print a live table, with one meter's load
changed half-way so that the readings visibly follow it. Finally show one meter's load
profile and kernel figures, and stop the fleet.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from host_tools.flash.deploy import flash
from host_tools.headend import wire
from host_tools.headend.client import open_link
from host_tools.headend.keystore import Keystore
from host_tools.headend.provision import provision
from host_tools.headend.queries import read_profile
from host_tools.sim import fleet

INTERVAL_S = 5  # load-profile interval on the virtual meters (a real meter: 900)


def _reading_table(readings: dict[int, dict[str, Any]], title: str) -> Table:
    t = Table("meter", "V", "A", "W", "VA", "PF", "Hz", "imp Wh", "exp Wh", "interval from",
              title=title)
    for i, r in sorted(readings.items()):
        t.add_row(str(i), f"{r['vrms']:.1f}", f"{r['irms']:.2f}", f"{r['power_w']:.0f}",
                  f"{r['apparent_va']:.0f}", f"{r['pf']:.3f}", f"{r['freq_hz']:.2f}",
                  str(r["energy_import_wh"]), str(r["energy_export_wh"]),
                  time.strftime("%H:%M:%S", time.gmtime(r["interval"]["start"])))
    return t


def run_demo(meters: int, base: Path | None, keep: bool, console: Console,
             rounds: int = 3) -> None:
    base = (base or fleet.default_dir()).resolve()
    console.print(f"[bold]Starting {meters} virtual meters[/] in {base}")
    t0 = time.monotonic()
    recs = fleet.start(meters, base)
    console.print(f"  up in {time.monotonic() - t0:.1f} s")
    keystore = Keystore(base / "keystore.json")
    try:
        ports = {}
        for r in recs:
            rep = flash(r["port"])
            what = (f"wrote {len(rep.written)} files, {rep.bytes_sent} B" if rep.written
                    else f"up to date ({len(rep.unchanged)} files)")
            console.print(f"  flashed meter {r['id']} on {r['port']}: {what}, as {rep.mode}")
            console.print(f"    {rep.board.describe()}")
        for r in recs:
            p = provision(r["port"], keystore, force=True, interval_s=INTERVAL_S)
            ports[r["id"]] = r["port"]
            console.print(f"  provisioned meter {r['id']}: id {p.meter_id}, "
                          f"{'new key' if p.new_key else 'key kept'}, clock set")
        console.print(f"  keystore: {keystore.path}")
        time.sleep(1.2)  # a first complete second measured
        links = {i: open_link(port, keystore) for i, port in ports.items()}
        try:
            for k in range(rounds):
                if k == rounds - 1:
                    fleet.set_wave(0, {"vrms": 230.0, "irms": 20.0, "pf": 0.9}, base)
                    console.print("[bold]meter 0: load switched to 20 A at PF 0.9[/]")
                    time.sleep(2.1)
                readings = {i: link.request(wire.K_READ) for i, link in links.items()}
                console.print(_reading_table(
                    readings, f"Head-end read {k + 1}/{rounds} (authenticated, encrypted; "
                    "virtual board)"))
                if k < rounds - 2:
                    time.sleep(1.0)
            time.sleep(INTERVAL_S)
            prof = read_profile(links[0])
            t = Table("t_end", "import mWh", "export mWh", "import Wh", "export Wh",
                      title="meter 0: load profile (closed intervals)")
            for rec in prof[-5:]:
                t.add_row(time.strftime("%H:%M:%S", time.gmtime(rec["t_end"])),
                          str(rec["import_mwh"]), str(rec["export_mwh"]),
                          str(rec["import_wh"]), str(rec["export_wh"]))
            console.print(t)
            st = links[0].request(wire.K_STATS)
            shares = ", ".join(f"{n} {v['cpu_pct']}%" for n, v in st["tasks"].items())
            console.print(f"meter 0 kernel, last 1-s tick: busy {st['cpu_pct']}% ({shares}); "
                          f"metrology worst latency "
                          f"{st['tasks']['metrology']['late_worst_us']} us (virtual board)")
        finally:
            for link in links.values():
                link.close()
    finally:
        if keep:
            console.print(f"meters left running; stop them with: meterctl sim stop --dir {base}")
        else:
            fleet.stop(base)
            console.print("meters stopped")
