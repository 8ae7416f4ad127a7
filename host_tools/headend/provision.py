"""``meterctl provision``: give a flashed meter its identity and WAN keys, and set its clock.

A factory step over the REPL (the board is on the bench, not yet sealed):

1. read the meter id and a fingerprint of the key already on the board, if any;
2. if the board already holds the key the keystore holds for it: keep it (idempotent);
   if it holds a key the keystore does not know: refuse without ``--force``;
3. otherwise make a new meter id and 32-byte master key on the host, save them in the
   keystore FIRST (so a failure later never leaves a board with a key nobody holds), then
   write them to the board with the firmware's own atomic store, and reset its WAN counters;
   the off-switch gets its own key the same way (``switch.install_offswitch``);
4. soft-reset into the firmware and set the clock with an authenticated TIME_SET, which also
   proves the channel end to end.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import math
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from host_tools.headend import wire
from host_tools.headend.client import MeterLink
from host_tools.headend.keystore import Keystore, MeterEntry
from host_tools.headend.switch import Limits, install_offswitch
from host_tools.transport.serial import Board, BoardError, resolve_port

KEYS_FILE = "/data/cs_keys.json"
COUNTERS_FILE = "/data/cs_ctr.json"
CLOCK_FILE = "/data/clock.json"


class ProvisionError(Exception):
    """Provisioning refused or failed; the message says why and what to do."""


@dataclass
class Provisioned:
    meter_id: int
    port: str
    new_key: bool
    clock: int
    interval_s: int | None

    def to_json(self) -> dict[str, object]:
        return {"meter": str(self.meter_id), "port": self.port, "new_key": self.new_key,
                "clock": self.clock, "interval_s": self.interval_s}


def fingerprint(master: bytes) -> str:
    return hashlib.sha256(b"meterctl key fingerprint" + master).hexdigest()[:16]


_READ_KEYS = (
    "import sys\n"
    "try:\n"
    "    import store\n"
    "except ImportError:\n"
    "    print(repr('noflash'))\n"
    "else:\n"
    "    import hashlib, binascii\n"
    f"    k = store.load({KEYS_FILE!r}, None)\n"
    "    if k is None:\n"
    "        print(repr(None))\n"
    "    else:\n"
    "        h = hashlib.sha256(b'meterctl key fingerprint' + bytes.fromhex(k['master']))\n"
    "        print(repr((k['meter'], binascii.hexlify(h.digest()).decode()[:16])))\n"
)


def _write_code(meter_id: int | None, master: bytes | None, interval_s: int | None) -> str:
    lines = ["import store", "import os",
             "try:\n    os.mkdir('/data')\nexcept OSError:\n    pass"]
    if meter_id is not None and master is not None:
        lines += [f"store.save({KEYS_FILE!r}, {{'meter': {meter_id}, 'master': {master.hex()!r}}})",
                  f"store.remove({COUNTERS_FILE!r})"]
    if interval_s is not None:
        lines += [f"c = store.load({CLOCK_FILE!r}, {{}})", f"c['interval_s'] = {interval_s}",
                  f"store.save({CLOCK_FILE!r}, c)"]
    return "\n".join(lines) + "\n"


def _install(b: Board, port: str, keystore: Keystore, force: bool, interval_s: int | None,
             say: Callable[[str], None]) -> tuple[MeterEntry, bool]:
    found = ast.literal_eval(b.exec(_READ_KEYS, "reading the meter's keys").decode().strip())
    if found == "noflash":
        raise ProvisionError(f"{port}: no meter firmware on the board; run "
                             f"`meterctl flash --port {port}` first")
    if found is not None:
        board_id, board_fp = found
        entry = keystore.get(int(board_id))
        if entry is not None and fingerprint(entry.master) == board_fp:
            say(f"meter {board_id} already provisioned; keeping its key")
            entry.port = port
            keystore.put(entry)
            if interval_s is not None:
                b.exec(_write_code(None, None, interval_s), "setting the interval")
            return entry, False
        if not force:
            why = ("the keystore has a different key for it" if entry else
                   f"the keystore {keystore.path} does not hold its key")
            raise ProvisionError(f"{port}: the board already has keys for meter {board_id} "
                                 f"and {why}; use --force to replace them")
    known = {e.meter_id for e in keystore.meters()}
    meter_id = secrets.randbits(63) or 1
    while meter_id in known:
        meter_id = secrets.randbits(63) or 1
    master = os.urandom(32)
    entry = MeterEntry(meter_id, master, port=port,
                       provisioned=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    keystore.put(entry)  # before the board: never a board key that nobody holds
    b.exec(_write_code(meter_id, master, interval_s), "installing the keys")
    say(f"meter {meter_id}: new key installed")
    return entry, True


def meter_time_now() -> int:
    """The time to set a meter's RTC (whole seconds) to: host time rounded up, so that the
    meter starts at most the request's latency behind the host, not a second more. A meter
    behind the host has not yet closed the interval the head-end asks for."""
    return math.ceil(time.time())


def provision(port: str, keystore: Keystore, *, force: bool = False,
              interval_s: int | None = None, set_time: bool = True, timeout: float = 10.0,
              say: Callable[[str], None] = lambda s: None,
              offswitch_limits: Limits | None = None) -> Provisioned:
    port = resolve_port(port)
    if interval_s is not None and not 1 <= interval_s <= 86400:
        raise ProvisionError("--interval must be 1..86400 seconds")
    with Board(port, timeout=timeout) as b:
        b.enter_raw()
        try:
            entry, new_key = _install(b, port, keystore, force, interval_s, say)
            # The off-switch's own key (OFFSWITCH.md): new with a new identity, else kept.
            install_offswitch(b, keystore, entry.meter_id, new_key, offswitch_limits, say)
            # The counter the meter reserved: after the soft reset it counts every command
            # counter up to it as used, and our next one would be refused (and logged) as a
            # replay (issue 20: a re-run of provision wrote a false alarm each time).
            # an int from before roles (the operator's), else one per role (cs_security.py)
            reserved = 0 if new_key else (b.eval(
                f"__import__('store').load({COUNTERS_FILE!r}, {{'down': 0}})['down']",
                "reading the meter's command counter"))
        except BaseException:
            # Refused or failed: the meter still goes back to running its firmware.
            with contextlib.suppress(BoardError):
                b.soft_reset_to_main()
            raise
        b.soft_reset_to_main()
    if reserved:
        keystore.resync_down(entry.meter_id, reserved)
    clock = 0
    if set_time:
        time.sleep(0.3)  # let main.py start its tasks
        with MeterLink(port, entry, keystore, timeout=timeout) as link:
            ans = link.request(wire.K_TIME_SET, {"t": meter_time_now()})
            clock = int(ans["t"])
        say(f"meter {entry.meter_id}: clock set to {clock}")
    return Provisioned(entry.meter_id, port, new_key, clock, interval_s)
