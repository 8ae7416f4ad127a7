# The off-switch's boot (tasks/offswitch.py Core and Link): its keys, its persisted state and
# everything core 1 will use, read and made once on the main core before core 1 starts. In
# its own file so that its code is in RAM only while it runs (lib/lazy.py). Part of that
# module.
import binascii
import hashlib
import time

import lazy
import offswitch_auth as osa
import store
from micropython import const

from tasks.offswitch import _mac
from tasks.offswitch_mac import compile_op, workspace

# as in tasks/offswitch.py (tests_host/test_offswitch.py checks the copies agree)
_DEBOUNCE = const(2)
_CLOCK_MASK = const(0x1FFFFFFF)
_MSG = const(864)
_OUT = const(928)
_EV_BOOT = const(1)
_EV_NEW_KEY = const(2)
_EV_BOOT_PIN = const(3)
_EV_BAD_RECORD = const(16)
_REPLY_LEN = const(44)
_DATA = const(32)
_EV_SIZE = const(16)
_REC_LEN = const(48)
_OK = const(11)
# the factory limits' defaults (os_keys.json may set others)
_MAX_PER_HOUR = const(6)
_MIN_SPACING_S = const(10)
_ARM_WINDOW_S = const(120)
# switching times kept for the hourly limit: a factory limit above that is no hourly limit
_OPS_KEPT = const(64)


def _u32(b, o):
    return int.from_bytes(b[o:o + 4], "big")


def link(self, cap_in, cap_done, cap_ev):
    # offswitch.Link's slots (its lock is made there)
    # requests, main core -> core 1: kind, id (the proxy's small request number), length;
    # their data in in_data
    self.inq = ([0] * cap_in, [0] * cap_in, [0] * cap_in)
    self.in_data = bytearray(cap_in * _DATA)
    # answers, core 1 -> main core: id; the 44-byte signed reply in done_data
    self.done_id = [0] * cap_done
    self.done_data = bytearray(cap_done * _REPLY_LEN)
    # log events, core 1 -> main core
    self.ev = bytearray(cap_ev * _EV_SIZE)
    self.err = None  # the type of the last exception core 1's loop caught (_EV_ERROR)
    self.state = [0, 0, 0]  # relay, armed, locked
    self.record = bytearray(_REC_LEN)  # the sealed record core 1 asks to be stored
    self.n = [0] * 12
    self.n[_OK] = 1
    self.running = True


def init(core, hw, link, ticks_ms, keys_path, state_path):
    core._relay = hw["relay"]
    core._button = hw["button"]
    core._tamper = hw["tamper"]
    core._link = link
    core._ticks = ticks_ms or time.ticks_ms
    k = store.load(keys_path, None) or {}
    meter_id = int(k.get("meter", 0))
    core._meter = meter_id.to_bytes(8, "big")
    key = bytes.fromhex(k.get("key", ""))
    core._keyed = bool(key)
    keys = list(osa.derive_keys(key if key else osa.NO_KEY, meter_id))
    keys.append(osa.derive_keys(osa.NO_KEY, meter_id)[1])  # the keyless meter's replies
    op = hw.get("mac_op") or compile_op()
    core._op, core._ws = op, workspace(keys, op)
    kid = hashlib.sha256(b"os kid" + key).digest()[:8] if key else bytes(8)
    kid_hex = binascii.hexlify(kid).decode() if key else ""
    core._kid = kid
    max_hour = int(k.get("max_per_hour", _MAX_PER_HOUR))
    # the factory limits: per hour, spacing (ms), arm window (ms)
    core._lim = [max_hour, int(k.get("min_spacing_s", _MIN_SPACING_S) * 1000),
                 int(k.get("arm_window_s", _ARM_WINDOW_S) * 1000)]
    # clock times of the counted operations, at most _OPS_KEPT: a factory limit above that is
    # no hourly limit at all (the spacing still holds), as nobody switches a relay that often
    core._ops = [0] * min(max(1, max_hour), _OPS_KEPT)
    core._nops = 0
    pin = core._relay.value()
    # The off-switch's clock: milliseconds powered, persisted with the state and resumed from
    # it, so windows and rate limits survive a reset (time without power does not count:
    # that only makes the limits stricter).
    core._t = core._ticks()
    core._btn = _DEBOUNCE if core._button.value() else 0  # held at boot: not a press
    core._tamper_in = 0
    core._ref_n = core._ref_sup = core._ref_win = 0
    core._pend = core._tampered = 0
    core._b = [0, 0, 0]  # the state before a change (undone if it cannot be stored)
    core._p = [0] * 7  # a pending command: id, op, result, outcome, number, counter hi, lo
    core.relay, core.armed, core.locked, ctr = pin, 0, 0, 0
    core.deadline = core._clock = 0
    new_key = bad = False
    rec = store.load_bytes(state_path, None)
    st = None if rec is None else osa.state_fields(rec)
    if st is not None:
        if bytes(rec[24:32]) != kid:
            new_key = True  # a new key (re-provisioned): the old key's counter means nothing
            core.locked = st["locked"]  # only ever stricter; armed and the relay: as they are
        else:
            ws = core._ws
            ws[_MSG:_MSG + osa.STATE_MAC_AT] = rec[:osa.STATE_MAC_AT]
            _mac(op, ws, 2, osa.STATE_MAC_AT)
            if ws[_OUT:_OUT + osa.MAC_LEN] != rec[osa.STATE_MAC_AT:]:
                bad = True  # not sealed by this off-switch: trust nothing but "locked"
                core.locked = 1
            else:
                core.relay, core.armed, core.locked = st["relay"], st["armed"], st["locked"]
                ctr, core.deadline = st["ctr"], st["deadline"] & _CLOCK_MASK
                core._clock = st["clock"] & _CLOCK_MASK
                # the hour's operations, all counted at the last one's time: only stricter
                n = min(st["n_ops"], len(core._ops))
                for i in range(n):
                    core._ops[i] = st["last_op"] & _CLOCK_MASK
                core._nops = n
    elif rec is None:
        old = store.load(state_path, None)  # a record from before the sealed format (JSON)
        if old is not None:
            if old.get("kid", "") != kid_hex:
                new_key = True
            else:
                ctr = int(old.get("ctr", 0))
            core.relay = 1 if old["relay"] else 0
            core.armed = 1 if old.get("armed") else 0
            core.locked = 1 if old.get("locked") else 0
            core.deadline = int(old.get("deadline", 0)) & _CLOCK_MASK
            core._clock = int(old.get("clock", 0)) & _CLOCK_MASK
            for t in old.get("ops", ())[-len(core._ops):]:
                core._ops[core._nops] = int(t) & _CLOCK_MASK
                core._nops += 1
    core._ctr_hi, core._ctr_lo = ctr >> 16, ctr & 0xFFFF
    if new_key:
        core._log(_EV_NEW_KEY)
    if bad:
        core._log(_EV_BAD_RECORD)
    core._log(_EV_BOOT, core.relay, core.armed, core.locked, core._ctr_hi, core._ctr_lo)
    if pin != core.relay:
        # Only when the pin lost the commanded state (a relay that does not latch).
        core._relay.value(core.relay)
        core._log(_EV_BOOT_PIN, pin, core.relay)
    core._publish()
    lazy.drop("tasks.offswitch_mac")  # the boot's only: its function and workspace stay
    lazy.drop("offswitch_auth")  # the boot's and the wording's only (tasks/offswitch.py)
