"""``meterctl sim relay`` / ``sim press``: the off-switch's hardware on a virtual meter.

The relay is an output pin the host reads (the supervisor latches it across VM restarts, as a
latching relay keeps its contacts without power); the button and the tamper switch are inputs
the host drives. Armed and locked are the off-switch's own state: the host reads them where
the board keeps them, the off-switch's record in the meter's flash (written before the relay
pin moves), with the firmware's own ``store`` reader.
"""

from __future__ import annotations

import contextlib
import importlib.util
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from host_tools.flash.build import FIRMWARE_DIR
from host_tools.sim import flashimg, fleet

OS_STATE = "data/os_state.json"  # in the meter's flash (fs/)
PRESS_S = 0.2
SETTLE_S = 1.0  # the longest a press may take to move the relay on a busy host


@cache
def _store() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_fw_store", FIRMWARE_DIR / "lib" / "store.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    with _firmware_lib():
        spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def _firmware_lib() -> Iterator[None]:
    # the firmware's store imports its helpers (lazy, store_read) by name, as on the board
    lib = str(FIRMWARE_DIR / "lib")
    sys.path.insert(0, lib)
    try:
        yield
    finally:
        sys.path.remove(lib)


def offswitch_record(mdir: Path) -> dict[str, Any] | None:
    """The off-switch's persisted state in a meter's flash, or None before its first save.
    On a flash image (a board profile) the record's copies (the file, .tmp, .bak) are read
    out of the image first, with the board's own filesystem code (flashimg.py)."""
    if flashimg.geometry(mdir) is None:
        return _record_at(str(mdir / "fs" / OS_STATE))
    names = [OS_STATE + ext for ext in ("", ".tmp", ".bak")]
    files = flashimg.read_files(mdir, names)
    with tempfile.TemporaryDirectory(prefix="os-state-") as tmp:
        for name, data in files.items():
            (Path(tmp) / Path(name).name).write_bytes(data)
        return _record_at(str(Path(tmp) / Path(OS_STATE).name))


def _record_at(path: str) -> dict[str, Any] | None:
    with _firmware_lib():
        raw: bytes | None = _store().load_bytes(path, None)
        if raw is None:  # a record from before the sealed format (JSON)
            old: dict[str, Any] | None = _store().load(path, None)
            return old
    # the sealed record's layout: firmware/lib/offswitch_auth.py (STATE_*); its MAC is core
    # 1's to check, the host only reads it
    if len(raw) != 48 or raw[0] != 2:
        return None
    relay, armed, locked, ctr = struct.unpack_from(">BBBI", raw, 1)
    return {"relay": relay, "armed": armed, "locked": locked, "ctr": ctr}


def relay(index: int, base: Path | None = None) -> dict[str, Any]:
    """The relay pin as the board drives it, with the off-switch's armed/locked state."""
    st = fleet.meter_status(index, base)
    mdir = Path(st["dir"])
    rec = offswitch_record(mdir) or {}
    pins = st["pins"]
    return {"id": st["id"], "relay": "closed" if pins.get("relay") else "open",
            "pin": int(pins.get("relay", 0)), "armed": bool(rec.get("armed")),
            "locked": bool(rec.get("locked")), "button": int(pins.get("button", 0)),
            "tamper": int(pins.get("tamper", 0)), "offswitch_ctr": rec.get("ctr"),
            "relay_changes": st.get("relay_changes")}


def press(index: int, pin: str, base: Path | None = None, hold_s: float = PRESS_S,
          latch: bool = False) -> dict[str, Any]:
    """Press an input: set it to 1, then back to 0 after ``hold_s`` (``latch``: leave it at 1,
    e.g. a tamper switch whose cover stays open; `sim pin NAME 0` releases it)."""
    if pin not in fleet.INPUT_PINS:
        raise fleet.SimError(f"{pin!r} is not an input the host can press "
                             f"(inputs: {', '.join(fleet.INPUT_PINS)})")
    before = relay(index, base)["relay_changes"]
    fleet.set_inputs(index, {pin: 1}, base)
    if not latch:
        time.sleep(hold_s)
        fleet.set_inputs(index, {pin: 0}, base)
    # The off-switch polls its inputs every 10 ms; on a busy host its answer, if the press
    # moves the relay at all, can take longer: wait for the relay, up to SETTLE_S.
    deadline = time.monotonic() + SETTLE_S
    time.sleep(0.1)
    st = relay(index, base)
    while st["relay_changes"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
        st = relay(index, base)
    return st
