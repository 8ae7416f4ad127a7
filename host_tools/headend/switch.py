"""The head-end's side of the off-switch, prepaid credit and the HAN port (docs/OFFSWITCH.md).

- The off-switch has its own key, independent of the WAN master key: :func:`install_offswitch`
  makes it at provisioning (keystore first, then the board's ``/data/os_keys.json``).
- :func:`switch` signs OFF / ON / UNLOCK with that key and the off-switch's own counter and
  sends it inside an authenticated WAN frame (kind SWITCH); the answer is signed by the
  off-switch itself, so the head-end knows the second core acted, not just the main core.
- :func:`topup`, :func:`set_tariff`, :func:`set_prepaid`, :func:`credit` drive the credit task
  over the ordinary authenticated WAN channel.
- :func:`read_han` reads DSMR 5 P1 telegrams from a HAN port with the PyPI ``dsmr-parser``.

The codec here is written apart from ``firmware/lib/offswitch_auth.py`` (stdlib ``hmac``,
``cryptography`` HKDF) so that tests can cross-check the two.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import hmac
import os
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import serial
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from host_tools.headend import wire
from host_tools.headend.client import LinkError, MeterLink
from host_tools.headend.keystore import Keystore
from host_tools.transport.serial import Board, resolve_port

OS_KEYS_FILE = "/data/os_keys.json"
HAN_FILE = "/data/han.json"

VER = 1
CMD_LEN = 30
REPLY_LEN = 44
NONCE_LEN = 8
MAC_LEN = 16
OP_STATUS, OP_OFF, OP_ON, OP_UNLOCK = 0, 1, 2, 3
OPS = {"off": OP_OFF, "on": OP_ON, "unlock": OP_UNLOCK}
OP_NAMES = {OP_STATUS: "status", OP_OFF: "off", OP_ON: "on", OP_UNLOCK: "unlock"}
R_OK, R_REPLAY, R_NO_KEY = 0, 4, 9
RESULT_NAMES = ("ok", "malformed", "wrong meter", "bad MAC", "replay", "rate limit", "locked",
                "tamper active", "unknown op", "no key", "busy")
S_RELAY, S_ARMED, S_LOCKED, S_TAMPER = 1, 2, 4, 8
MC_PER_UNIT = 100_000  # money on the wire: milli-cents (mc) of the currency unit

_CMD = struct.Struct(">BBQI")
_REP = struct.Struct(">BBBBQII")


class SwitchError(LinkError):
    """The off-switch refused, or answered something we must not accept."""


def _hkdf(key: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)


@dataclass(frozen=True)
class OsKeys:
    """The off-switch's working keys for one meter."""

    meter_id: int
    k_cmd: bytes = field(repr=False)
    k_rep: bytes = field(repr=False)

    @classmethod
    def derive(cls, meter_id: int, key: bytes) -> OsKeys:
        if len(key) != 32:
            raise ValueError("off-switch key must be 32 bytes")
        salt = meter_id.to_bytes(8, "big")
        return cls(meter_id, _hkdf(key, salt, b"offswitch cmd"),
                   _hkdf(key, salt, b"offswitch reply"))


def command(keys: OsKeys, op: int, ctr: int) -> bytes:
    """A signed off-switch command: ver | op | meter | ctr | HMAC-SHA256(k_cmd, ...)[:16]."""
    if not 0 < ctr <= 0xFFFF_FFFF:
        raise ValueError("off-switch counter must be 1..2^32-1")
    head = _CMD.pack(VER, op, keys.meter_id, ctr)
    return head + hmac.new(keys.k_cmd, head, hashlib.sha256).digest()[:MAC_LEN]


@dataclass(frozen=True)
class Reply:
    """The off-switch's signed answer (verified)."""

    op: int
    result: int
    state: int
    ctr: int
    last: int
    nonce: bytes

    @property
    def ok(self) -> bool:
        return self.result == R_OK

    @property
    def result_name(self) -> str:
        return RESULT_NAMES[self.result] if self.result < len(RESULT_NAMES) else str(self.result)

    @property
    def relay(self) -> int:
        return 1 if self.state & S_RELAY else 0

    @property
    def armed(self) -> bool:
        return bool(self.state & S_ARMED)

    @property
    def locked(self) -> bool:
        return bool(self.state & S_LOCKED)

    @property
    def tamper(self) -> bool:
        return bool(self.state & S_TAMPER)

    def to_json(self) -> dict[str, Any]:
        return {"op": OP_NAMES.get(self.op, self.op), "result": self.result_name,
                "relay": "closed" if self.relay else "open", "armed": self.armed,
                "locked": self.locked, "tamper": self.tamper, "ctr": self.ctr,
                "offswitch_ctr": self.last}


def open_reply(keys: OsKeys, data: bytes) -> Reply:
    """Verify and decode an off-switch reply; raises SwitchError if it is not authentic."""
    if len(data) != REPLY_LEN:
        raise SwitchError(f"off-switch reply of {len(data)} bytes, expected {REPLY_LEN}")
    mac = hmac.new(keys.k_rep, data[:28], hashlib.sha256).digest()[:MAC_LEN]
    if not hmac.compare_digest(mac, data[28:]):
        raise SwitchError("off-switch reply: bad MAC (not signed by this meter's off-switch)")
    ver, op, result, state, meter, ctr, last = _REP.unpack_from(data)
    if ver != VER or meter != keys.meter_id:
        raise SwitchError(f"off-switch reply for meter {meter}, version {ver}")
    return Reply(op, result, state, ctr, last, bytes(data[20:28]))


def _os_keys(link: MeterLink) -> OsKeys:
    entry = link.keystore.get(link.entry.meter_id)
    if entry is None or not entry.os_key:
        raise SwitchError(f"meter {link.entry.meter_id} has no off-switch key in "
                          f"{link.keystore.path}; run `meterctl provision` again")
    return OsKeys.derive(entry.meter_id, entry.os_key)


def send_command(link: MeterLink, keys: OsKeys, op: int, ctr: int) -> Reply:
    """One signed command with counter ``ctr`` (tests use it for forged and replayed ones)."""
    return send_token(link, keys, command(keys, op, ctr))


def send_token(link: MeterLink, keys: OsKeys, token: bytes) -> Reply:
    """Any bytes as the SWITCH payload; the answer verified with the off-switch key."""
    return open_reply(keys, link.request_raw(wire.K_SWITCH, token))


def switch(link: MeterLink, op: str) -> Reply:
    """OFF (open the relay), ON (arm: the local button closes it) or UNLOCK (clear a tamper
    lock). Returns the off-switch's signed answer; raises SwitchError when it refused."""
    code = OPS[op]
    keys = _os_keys(link)
    ctr = link.keystore.next_os_ctr(keys.meter_id)
    r = send_command(link, keys, code, ctr)
    if r.result == R_REPLAY and r.ctr == ctr:
        # The keystore is behind the off-switch (another head-end copy, a restored backup):
        # continue above the counter the off-switch says it has accepted.
        ctr = link.keystore.next_os_ctr(keys.meter_id, r.last)
        r = send_command(link, keys, code, ctr)
    if r.ctr != ctr or r.op != code:
        raise SwitchError(f"off-switch answered counter {r.ctr} op {r.op}; sent {ctr} op {code}")
    if not r.ok:
        raise SwitchError(f"meter {keys.meter_id}: off-switch refused {op}: {r.result_name} "
                          f"(relay {'closed' if r.relay else 'open'}"
                          f"{', armed' if r.armed else ''}{', locked' if r.locked else ''})")
    return r


def status(link: MeterLink) -> Reply:
    """The relay, armed, locked and tamper states, signed by the off-switch over a fresh
    nonce (no counter used, nothing logged)."""
    keys = _os_keys(link)
    nonce = os.urandom(NONCE_LEN)
    r = open_reply(keys, link.request_raw(wire.K_SWITCH_STATUS, nonce))
    if r.op != OP_STATUS or r.nonce != nonce:
        raise SwitchError("off-switch status answer does not echo our nonce (a replay?)")
    return r


# -- prepaid credit -------------------------------------------------------------------------
def to_mc(amount: float) -> int:
    """A currency amount (e.g. 12.50) in milli-cents, as the wire carries money."""
    return round(amount * MC_PER_UNIT)


def credit(link: MeterLink) -> dict[str, Any]:
    r: dict[str, Any] = link.request(wire.K_CREDIT)
    return r


def topup(link: MeterLink, amount_mc: int) -> dict[str, Any]:
    r: dict[str, Any] = link.request(wire.K_TOPUP, {"amount_mc": int(amount_mc)})
    return r


def set_prepaid(link: MeterLink, on: bool) -> dict[str, Any]:
    r: dict[str, Any] = link.request(wire.K_PREPAID, {"on": bool(on)})
    return r


def set_tariff(link: MeterLink, t1_mc_kwh: int, t2_mc_kwh: int, t2_from_h: int = 7,
               t2_to_h: int = 23, tz_s: int = 3600, eu_dst: bool = True,
               weekend_t1: bool = True) -> dict[str, Any]:
    """Time-of-use tariffs: T2 (normal) on weekdays from t2_from_h to t2_to_h local time, T1
    (low) otherwise (and all weekend with weekend_t1). Prices in mc per kWh."""
    r: dict[str, Any] = link.request(wire.K_TARIFF, {
        "t1_mc_kwh": int(t1_mc_kwh), "t2_mc_kwh": int(t2_mc_kwh), "t2_from_h": int(t2_from_h),
        "t2_to_h": int(t2_to_h), "tz_s": int(tz_s), "eu_dst": bool(eu_dst),
        "weekend_t1": bool(weekend_t1)})
    return r


# -- provisioning (called by provision.py over the REPL) ------------------------------------
@dataclass(frozen=True)
class Limits:
    """The off-switch's factory settings (written with its key)."""

    max_per_hour: int = 6
    min_spacing_s: float = 10
    arm_window_s: float = 120


def os_fingerprint(key: bytes) -> str:
    return hashlib.sha256(b"meterctl os fingerprint" + key).hexdigest()[:16]


_READ_OS = (
    "import store, hashlib, binascii\n"
    f"k = store.load({OS_KEYS_FILE!r}, None)\n"
    "if k is None:\n"
    "    print(repr(None))\n"
    "else:\n"
    "    h = hashlib.sha256(b'meterctl os fingerprint' + bytes.fromhex(k['key']))\n"
    "    print(repr((k['meter'], binascii.hexlify(h.digest()).decode()[:16])))\n"
)


def install_offswitch(b: Board, keystore: Keystore, meter_id: int, new_identity: bool,
                      limits: Limits | None = None,
                      say: Callable[[str], None] = lambda s: None) -> bool:
    """Give the board's off-switch its own key (and the HAN its equipment id); returns True
    when a new key was made. Keeps a key the keystore and board share, unless the meter got
    a new identity. The keystore is written before the board."""
    entry = keystore.get(meter_id)
    if entry is None:
        raise SwitchError(f"meter {meter_id} is not in {keystore.path}")
    found = ast.literal_eval(b.exec(_READ_OS, "reading the off-switch key").decode().strip())
    same = (found is not None and int(found[0]) == meter_id and bool(entry.os_key)
            and found[1] == os_fingerprint(entry.os_key))
    new = new_identity or not same
    if new:
        entry = dataclasses.replace(entry, os_key=os.urandom(32), os_ctr=0)
        keystore.put(entry)  # before the board: never a board key that nobody holds
    lim = limits or Limits()
    if new or limits is not None:
        cfg = {"meter": meter_id, "key": entry.os_key.hex(), "max_per_hour": lim.max_per_hour,
               "min_spacing_s": lim.min_spacing_s, "arm_window_s": lim.arm_window_s}
        b.exec(f"import store\nstore.save({OS_KEYS_FILE!r}, {cfg!r})\n",
               "installing the off-switch key")
    han = {"equipment": f"HASM{meter_id}", "tz_s": 3600, "eu_dst": True}
    b.exec(f"import store\nif store.load({HAN_FILE!r}, None) != {han!r}:\n"
           f"    store.save({HAN_FILE!r}, {han!r})\n", "configuring the HAN port")
    say(f"meter {meter_id}: off-switch {'new key installed' if new else 'key kept'}")
    return new


# -- the HAN port -------------------------------------------------------------------------
def p1_spec() -> dict[str, Any]:
    """dsmr-parser's DSMR 5 (V5) specification, plus the breaker state (0-0:96.3.10), which
    V5 leaves out (its Belgian variant has it)."""
    from dsmr_parser import obis_references as obis
    from dsmr_parser import telegram_specifications
    from dsmr_parser.parsers import CosemParser, ValueParser

    spec = dict(telegram_specifications.V5)
    spec["objects"] = [*spec["objects"], {
        "obis_reference": obis.ACTUAL_SWITCH_POSITION,
        "value_parser": CosemParser(ValueParser(int)),
        "value_name": "ACTUAL_SWITCH_POSITION"}]
    return spec


def han_telegrams(port: str, timeout: float = 10.0, validate: bool = True,
                  raw: list[str] | None = None) -> Iterator[Any]:
    """Parsed DSMR 5 telegrams (dsmr_parser Telegram objects, checksums validated) as they
    arrive on a HAN port, until ``timeout`` seconds pass without one. Reads only: what a P1
    reader does. ``raw``: each telegram's text is appended there too."""
    from dsmr_parser.clients.telegram_buffer import TelegramBuffer
    from dsmr_parser.parsers import TelegramParser

    parser = TelegramParser(p1_spec(), apply_checksum_validation=validate)
    buf = TelegramBuffer()
    port = resolve_port(port)
    try:
        ser = serial.Serial(port, 115200, timeout=0.2)
    except (serial.SerialException, OSError) as e:
        raise SwitchError(f"{port}: cannot open ({e})") from None
    with ser:
        last = time.monotonic()
        while time.monotonic() - last < timeout:
            data = ser.read(4096)
            if not data:
                continue
            buf.append(data.decode("ascii", errors="replace"))
            for text in buf.get_all():
                last = time.monotonic()
                if raw is not None:
                    raw.append(text)
                yield parser.parse(text)


def read_han(port: str, n: int, timeout: float = 10.0,
             raw: list[str] | None = None) -> list[Any]:
    """The next ``n`` telegrams from a HAN port, parsed and checksum-validated."""
    out = []
    for t in han_telegrams(port, timeout, raw=raw):
        out.append(t)
        if len(out) >= n:
            break
    if len(out) < n:
        raise SwitchError(f"{port}: {len(out)} of {n} telegrams within {timeout:g} s")
    return out
