"""`meterctl watch` and `meterctl devs`: one frame of live readings per meter, and the boards
(USB and virtual) this host can reach. The CLI's Live loop only redraws what frame() returns."""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from host_tools.headend import switch, wire
from host_tools.headend.client import LinkError, MeterError, open_link
from host_tools.headend.keystore import Keystore, KeystoreError
from host_tools.sim import fleet
from host_tools.transport.serial import BoardError

# USB vendor ids (USB-IF assignments) of boards that run MicroPython; the first two are the
# ones `meterctl flash --port auto` takes (transport.serial.BOARD_VIDS).
KNOWN_VIDS = {0x2E8A: "Raspberry Pi", 0xF055: "MicroPython (pyboard)",
              0x0483: "STMicroelectronics", 0x303A: "Espressif", 0x239A: "Adafruit"}
MICROPYTHON_VIDS = (0x2E8A, 0xF055)
WIDTH = 80  # the view fits a classic terminal
# a round's states (headend/lopa/state.py), short enough for the column
ROUND_STATES = {"collecting": "busy", "recovering": "recov", "done": "ok", "failed": "fail"}


@dataclass(frozen=True)
class Target:
    port: str
    meter_id: int | None  # None: the one provisioned on the port


def short_id(meter_id: int | None) -> str:
    """The last 6 digits: full 63-bit ids do not fit 80 columns (--json has them whole)."""
    if meter_id is None:
        return "?"
    s = str(meter_id)
    return s if len(s) <= 7 else "…" + s[-6:]


def last_round(db: Path | None, meter_id: int) -> dict[str, Any] | None:
    """The newest LoPA round of a group the meter belongs to, from the head-end database
    (opened read-only: watching never creates or changes it)."""
    if db is None:
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None
    try:
        row = con.execute(
            "SELECT r.t, r.length, r.state, r.aggregate FROM rounds r JOIN members m "
            "ON r.gid = m.gid WHERE m.meter_id = ? ORDER BY r.t DESC LIMIT 1",
            (meter_id,)).fetchone()
    except sqlite3.Error:
        return None
    finally:
        con.close()
    if row is None:
        return None
    # a round's t is the interval's index since the epoch (headend.py _interval_from)
    t, length = int(row[0]), int(row[1])
    return {"t": t, "length": length, "t_end": (t + 1) * length, "state": str(row[2]),
            "aggregate": row[3]}


def read_row(target: Target, keystore: Keystore, db: Path | None,
             timeout: float) -> dict[str, Any]:
    """One meter's readings: READ, the off-switch's signed status, the credit state."""
    row: dict[str, Any] = {"port": target.port, "meter_id": target.meter_id}
    try:
        with open_link(target.port, keystore, target.meter_id, timeout) as link:
            row["meter_id"] = link.entry.meter_id
            r = link.request(wire.K_READ)
            for k in ("vrms", "irms", "power_w", "pf", "energy_import_wh",
                      "energy_export_wh", "clock"):
                row[k] = r.get(k)
            st = switch.status(link)
            row["relay"] = st.to_json()["relay"]
            row["locked"] = st.locked
            c = switch.credit(link)
            row["prepaid"] = bool(c.get("prepaid"))
            row["balance_mc"] = c.get("balance_mc") if row["prepaid"] else None
    except (LinkError, MeterError, KeystoreError, BoardError, OSError) as e:
        row["error"] = str(e)
    if row.get("meter_id") is not None:
        row["lopa"] = last_round(db, int(row["meter_id"]))
    return row


def frame(targets: list[Target], keystore: Keystore, db: Path | None,
          timeout: float = 3.0) -> list[dict[str, Any]]:
    """One frame: a row per target, in order; a meter that does not answer gets an error row
    (the view goes on)."""
    return [read_row(t, keystore, db, timeout) for t in targets]


def _num(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _lopa_cell(lr: dict[str, Any] | None) -> str:
    if not lr:
        return "-"
    when = dt.datetime.fromtimestamp(lr["t_end"], dt.UTC).strftime("%H:%M")
    return f"{when} {ROUND_STATES.get(lr['state'], lr['state'])}"


def row_cells(row: dict[str, Any]) -> list[str]:
    """The row's cells; a meter that did not answer shows dashes (its error is printed under
    the table)."""
    if "error" in row:
        return [short_id(row.get("meter_id"))] + ["-"] * 9
    relay = "locked" if row.get("locked") else str(row["relay"])
    credit = (f"{row['balance_mc'] / 100_000:.2f}" if row.get("prepaid") else "-")
    return [short_id(row["meter_id"]), _num(row["vrms"], ".1f"), _num(row["irms"], ".3f"),
            _num(row["power_w"], ".0f"), _num(row["pf"], ".2f"),
            _num(None if row["energy_import_wh"] is None else row["energy_import_wh"] / 1000,
                 ".3f"),
            _num(None if row["energy_export_wh"] is None else row["energy_export_wh"] / 1000,
                 ".3f"),
            relay, credit, _lopa_cell(row.get("lopa"))]


def frame_table(rows: list[dict[str, Any]], caption: str = "") -> Group:
    """The frame as the terminal shows it: a table (the values never cut: only the last
    column gives way) and, under it, one line per meter that did not answer."""
    t = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0))
    for name, justify in (("meter", "left"), ("V", "right"), ("A", "right"), ("W", "right"),
                          ("PF", "right"), ("imp kWh", "right"), ("exp kWh", "right"),
                          ("relay", "left"), ("credit", "right")):
        t.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    # the end of the last round's interval, and how the round went
    t.add_column("LoPA UTC", overflow="ellipsis", no_wrap=True)
    notes: list[Text] = []
    for row in rows:
        t.add_row(*row_cells(row))
        if "error" in row:
            notes.append(Text(f"{row['port']}: {row['error']}"[:WIDTH], style="red",
                              no_wrap=True, overflow="ellipsis"))
    if caption:
        notes.append(Text(caption[:WIDTH], style="dim"))
    return Group(t, *notes)


def json_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row for --json: the meter id as a string (63-bit ids do not survive a JSON double)."""
    out = dict(row)
    if out.get("meter_id") is not None:
        out["meter_id"] = str(out["meter_id"])
    return out


# -- devs ---------------------------------------------------------------------------------
def usb_boards() -> list[dict[str, Any]]:
    """Every USB serial port, as `mpremote devs` lists them (pyserial's list_ports), with the
    boards whose VID is MicroPython's marked."""
    import serial.tools.list_ports

    out = []
    for p in sorted(serial.tools.list_ports.comports(), key=lambda p: p.device):
        if p.vid is None:
            continue  # a plain UART or a pty: nothing identifies a board on it
        out.append({"port": p.device, "vid_pid": f"{p.vid:04X}:{(p.pid or 0):04X}",
                    "serial": p.serial_number, "manufacturer": p.manufacturer,
                    "product": p.product, "vendor": KNOWN_VIDS.get(p.vid),
                    "micropython": p.vid in MICROPYTHON_VIDS})
    return out


def virtual_meters(base: Path | None, keystore: Path | None) -> list[dict[str, Any]]:
    """The fleet's meters: port, profile, VM state and, if a keystore knows the port, the
    meter id (the fleet's own keystore.json first, then ``keystore``)."""
    base = (base or fleet.default_dir()).resolve()
    if not base.is_dir():
        return []
    ids: dict[str, int] = {}
    stores = [base / "keystore.json"] if (base / "keystore.json").exists() else []
    if keystore is not None:
        stores.append(keystore)
    for path in reversed(stores):  # the fleet's own wins
        try:
            ids.update({e.port: e.meter_id for e in Keystore(path).meters() if e.port})
        except KeystoreError:
            continue
    out = []
    for st in fleet.status(base):
        port = st.get("port")
        mid = ids.get(str(port)) if port else None
        out.append({"index": st.get("id"), "port": port, "han": st.get("han"),
                    "profile": st.get("profile"), "vm": st.get("vm", "?"),
                    "meter_id": None if mid is None else str(mid), "dir": st.get("dir")})
    return out


def devs_lines(usb: list[dict[str, Any]], virtual: list[dict[str, Any]],
               base: Path) -> list[str]:
    """Plain lines, one per device, as `mpremote devs` prints them (never wrapped, so a
    serial number can be copied whole)."""
    lines = []
    for d in usb:
        maker = " ".join(x for x in (d["manufacturer"], d["product"]) if x) or "-"
        kind = ("MicroPython board, " if d["micropython"] else "") + (d["vendor"] or "")
        lines.append(f"{d['port']} {d['vid_pid']} {d['serial'] or '-'} {maker}"
                     + (f" [{kind.rstrip(', ')}]" if kind else ""))
    if not usb:
        lines.append("no USB serial devices")
    for v in virtual:
        lines.append(f"{v['port'] or '-'} virtual meter {v['index']}, profile "
                     f"{v['profile'] or '-'}, vm {v['vm']}, meter id {v['meter_id'] or '?'}")
    if not virtual:
        lines.append(f"no virtual meters in {base}")
    return lines
