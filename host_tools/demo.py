"""The main job on virtual meters, as `make run` shows it.

Today: start a fleet, flash each meter, show what each board is and that its
main.py runs (its heartbeat LED blinks), then stop the fleet.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from host_tools.flash.deploy import flash
from host_tools.sim import fleet


def run_demo(meters: int, base: Path | None, keep: bool, console: Console) -> None:
    base = (base or fleet.default_dir()).resolve()
    console.print(f"[bold]Starting {meters} virtual meters[/] in {base}")
    t0 = time.monotonic()
    recs = fleet.start(meters, base)
    console.print(f"  up in {time.monotonic() - t0:.1f} s")
    try:
        infos = {}
        for r in recs:
            rep = flash(r["port"])
            infos[r["id"]] = rep
            what = (f"wrote {len(rep.written)} files, {rep.bytes_sent} B" if rep.written
                    else f"up to date ({len(rep.unchanged)} files)")
            console.print(f"  flashed meter {r['id']} on {r['port']}: {what}, as {rep.mode}")
        before = {st["id"]: st["led_toggles"] for st in fleet.status(base)}
        time.sleep(1.2)
        t = Table("meter", "port", "HAN", "sys.implementation", "main.py", "heartbeat LED",
                  title="Virtual meters")
        for st in fleet.status(base):
            blinks = st["led_toggles"] - before.get(st["id"], 0)
            t.add_row(str(st["id"]), st["port"], st["han"], infos[st["id"]].board.describe(),
                      st["files"].get("main.py", "not run"),
                      f"{blinks} toggles in 1.2 s" if blinks else "[red]not blinking[/]")
        console.print(t)
    finally:
        if keep:
            console.print(f"meters left running; stop them with: meterctl sim stop --dir {base}")
        else:
            fleet.stop(base)
            console.print("meters stopped")
