# The off-switch: its driver and its own security module, on the second core (seed 002
# §4.5: "an additional processor ... for the off-switch, the most critical component").
# docs/OFFSWITCH.md has the whole story; in short:
#
# - Core runs on core 1 (_thread: core 1 on an RP2040, a VM thread on the virtual board), or,
#   where the build has no _thread (the official PYBV11), one poll() per step of the main
#   loop (the same code). It alone holds the relay, the local button and the tamper input,
#   its own key (/data/os_keys.json, made by the host at provisioning, independent of the
#   WAN key) and its own monotonic counter.
# - Only commands authenticated end to end move the relay: HMAC-SHA256 under the
#   off-switch key over (command, meter id, counter) (lib/offswitch_auth.py). cs_security
#   has checked the WAN frame around it; this module checks again with its own key, so a
#   compromised main core can forward commands but never make one.
# - A remote reconnect only arms: the relay closes when the local button is pressed within
#   the arm window. Switching is rate limited (N per hour, a minimum spacing). Tamper opens
#   the relay and latches "locked" until an authenticated UNLOCK. The credit task may only
#   ask for a local disconnect at zero credit.
#
# Core 1 allocates nothing, imports nothing and touches no file once it runs: the rp2 port
# has no GIL and its VFS is not thread-safe, and core 0's gc.collect() runs while core 1
# goes on (docs/OFFSWITCH.md, "Core 1 allocates nothing"). Everything it uses is made by
# core 0 before the start: the Link's slots, the MAC workspace (tasks/offswitch_mac.py), the
# record it persists. Core 0 persists that record for it: core 1 fills the record (sealed
# with its own state key) and asks; the proxy on core 0 writes it, with the relay's boot
# state, and acknowledges; only then does the pin move. Tamper alone opens the relay first.
#
# Why a Link and not the kernel's mailboxes: the kernel, its mailboxes and the rings are
# single-threaded by design. The two cores share exactly one object, a Link: fixed slots
# behind one lock, each access one slot. On the main core a proxy task (registered in the
# kernel as "offswitch", so the flow policy still governs every message) forwards "switch",
# "switch_status" and "credit_disconnect" into the Link, and forwards what comes back:
# answers ("switch_done"), the relay state (to han and credit), and the off-switch's log
# events, which the proxy words and writes to the off-switch log.
import time
from micropython import const

import offswitch_auth as osa

try:
    import _thread
except ImportError:  # the official PYBV11 build: the off-switch runs cooperatively
    _thread = None  # type: ignore[assignment]

KEYS = "/data/os_keys.json"
STATE = "/data/os_state.json"
_POLL_MS = const(10)
_HOUR_MS = const(3600000)
DEBOUNCE = const(2)  # polls the button must read pressed: a press is a rising edge + 20 ms
MAX_PER_HOUR = const(6)  # defaults; the factory may set others in os_keys.json
MIN_SPACING_S = const(10)
ARM_WINDOW_S = const(120)
OPS_KEPT = const(64)  # switching operations remembered for the hourly limit
_REFUSALS_LOGGED = const(32)  # per hour: a flood of refusals never evicts the switch records
_STACK = const(8192)  # core 1's stack, bytes
_ANSWER_MS = const(3000)  # the proxy answers FAILED for core 1 after this long
_E_FAILED = const(7)  # WAN error code (PROTOCOL.md) for an answer the off-switch cannot give
# The off-switch's clock (ms powered) wraps here: with it every time and every difference
# stays a small int on a 32-bit port (31-bit small ints: a plain ms count would become a
# big int, an allocation, after 12 days). Windows are at most an hour, far below half of it.
CLOCK_MASK = const(0x1FFFFFFF)
_CLOCK_HALF = const(0x10000000)

# Link request kinds (main core -> core 1)
K_SWITCH = const(1)
K_STATUS = const(2)
K_CREDIT = const(3)
_KIND_NAMES = ("switch", "switch_status", "credit_disconnect")  # K_* - 1
_DATA = const(32)  # bytes a request slot holds (a command is 30)
EV_SIZE = const(16)  # an event: code, a, b, c, ctr u32, 8 bytes (a meter id, a number)

# Log events (core 1 -> main core, which words them: EVENTS in offswitch_text.py)
EV_BOOT = const(1)
EV_NEW_KEY = const(2)
EV_BOOT_PIN = const(3)
EV_CAP = const(4)
EV_TAMPER_CLEARED = const(5)
EV_BUTTON = const(6)
EV_WINDOW = const(7)
EV_CREDIT_REFUSED = const(8)
EV_CREDIT = const(9)
EV_PERSIST_FAILED = const(10)
EV_TAMPER = const(11)
EV_NO_KEY = const(12)
EV_REFUSED = const(13)
EV_COMMAND = const(14)
EV_ERROR = const(15)
EV_BAD_RECORD = const(16)

# command outcomes (texts in offswitch_text.py); the refusals are the ones >= T_LOCKED
T_OPENED = const(0)
T_ALREADY_OPEN = const(1)
T_ALREADY_CLOSED = const(2)
T_ARMED = const(3)
T_UNLOCKED = const(4)
T_NOT_LOCKED = const(5)
T_LOCKED = const(6)
T_RATE_HOUR = const(7)
T_RATE_SPACING = const(8)
T_TAMPER = const(9)
T_UNKNOWN = const(10)
T_PERSIST = const(11)

# what a persist request is for (Core._pend)
_P_COMMAND = const(1)
_P_LOCAL = const(2)
_P_TAMPER = const(3)

# the state record core 1 seals and core 0 stores (offswitch_auth.STATE_* has the layout)
REC_LEN = const(48)


def _put_ctr(b, o, hi, lo):
    # a u32 counter kept as two 16-bit halves (small ints on every port), big-endian. (Two
    # targets per statement at most: MicroPython builds a tuple for four.)
    b[o], b[o + 1] = hi >> 8, hi & 0xFF
    b[o + 2], b[o + 3] = lo >> 8, lo & 0xFF


def clock_diff(a, b):
    """a - b on the off-switch's wrapping clock."""
    return ((a - b + _CLOCK_HALF) & CLOCK_MASK) - _CLOCK_HALF


class _NoLock:
    # Where there is no _thread there is one core and one loop: nothing to exclude.
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Link:
    """The only object the two cores share, made whole on the main core before core 1
    starts: fixed slots for requests (IN), answers, log events and the state, and the persist
    handshake. Each access holds one lock for a few slot updates; nothing in it allocates on
    core 1's side."""

    def __init__(self, cap_in=4, cap_done=4, cap_ev=32):
        self._lock = _thread.allocate_lock() if _thread else _NoLock()
        # requests, main core -> core 1: kind, id (the proxy's small request number), length,
        # data
        self._in = [[0] * cap_in, [0] * cap_in, [0] * cap_in]
        self.in_data = bytearray(cap_in * _DATA)
        self._in_head = self._in_n = 0
        # answers, core 1 -> main core: id, the 44-byte signed reply
        self._done_id = [0] * cap_done
        self.done_data = bytearray(cap_done * osa.REPLY_LEN)
        self._done_head = self._done_n = 0
        # log events, core 1 -> main core (ev_obj: an exception's type, for EV_ERROR)
        self.ev = bytearray(cap_ev * EV_SIZE)
        self.ev_obj = [None] * cap_ev
        self._ev_head = self._ev_n = 0
        self.dropped = 0  # events and answers lost to full slots (counted by core 1 only)
        # the relay state (relay, armed, locked) and a change count
        self.state = [0, 0, 0]
        self.state_seq = 0
        # persist handshake: core 1 fills `record` and bumps `req`; the main core stores the
        # record and the relay's boot state `req_relay`, sets `ok` and makes `ack` = `req`
        self.record = bytearray(REC_LEN)
        self.req = self.ack = 0
        self.req_relay = 0
        self.ok = 1
        self.running = True

    # -- the main core's side (may allocate) --------------------------------------------------
    def put_in(self, kind, ident, data):
        with self._lock:
            cap = len(self._in[0])
            if self._in_n >= cap:
                return False
            s = (self._in_head + self._in_n) % cap
        n = len(data) if data else 0
        self._in[0][s], self._in[1][s], self._in[2][s] = kind, ident, n
        if n:
            k = min(n, _DATA)
            self.in_data[s * _DATA:s * _DATA + k] = data[:k]
        with self._lock:
            self._in_n += 1
        return True

    def take_done(self):
        """(id, reply bytes) or None."""
        with self._lock:
            if not self._done_n:
                return None
            s = self._done_head
        r = (self._done_id[s], bytes(self.done_data[s * osa.REPLY_LEN:(s + 1) * osa.REPLY_LEN]))
        with self._lock:
            self._done_head = (s + 1) % len(self._done_id)
            self._done_n -= 1
        return r

    def take_event(self):
        """(bytes of the event, object) or None."""
        with self._lock:
            if not self._ev_n:
                return None
            s = self._ev_head
        r = (bytes(self.ev[s * EV_SIZE:(s + 1) * EV_SIZE]), self.ev_obj[s])
        self.ev_obj[s] = None
        with self._lock:
            self._ev_head = (s + 1) % len(self.ev_obj)
            self._ev_n -= 1
        return r

    def persist_wanted(self):
        return self.req != self.ack

    def persisted(self, ok):
        with self._lock:
            self.ok = 1 if ok else 0
            self.ack = self.req

    # -- core 1's side (allocates nothing) ---------------------------------------------------
    def in_slot(self):
        """The oldest request's slot, or -1."""
        with self._lock:
            return self._in_head if self._in_n else -1

    def in_done(self):
        with self._lock:
            self._in_head = (self._in_head + 1) % len(self._in[0])
            self._in_n -= 1

    def done_slot(self):
        # a free answer slot (filled, then published with done_put), or -1
        with self._lock:
            cap = len(self._done_id)
            if self._done_n >= cap:
                self.dropped += 1
                return -1
            return (self._done_head + self._done_n) % cap

    def done_put(self, s, ident):
        self._done_id[s] = ident
        with self._lock:
            self._done_n += 1

    def ev_slot(self):
        with self._lock:
            cap = len(self.ev_obj)
            if self._ev_n >= cap:
                self.dropped += 1
                return -1
            return (self._ev_head + self._ev_n) % cap

    def ev_put(self):
        with self._lock:
            self._ev_n += 1

    def ask_persist(self, relay):
        with self._lock:
            self.req_relay = relay
            self.req = (self.req + 1) & 0xFFFF

    def answer(self):
        """None while a persist request is pending, else True (stored) or False (failed)."""
        with self._lock:
            if self.req != self.ack:
                return None
            return self.ok == 1


class Core:
    """The off-switch driver and security module. poll() is one pass (inputs, the arm
    window, a pending persist, one request); run() loops it on core 1. Everything is made
    here, on the main core: after it, poll() allocates nothing."""

    def __init__(self, hw, link, ticks_ms=None, keys_path=KEYS, state_path=STATE):
        # Its keys and state, read from flash once at boot (on the main core, before core 1
        # starts): tasks/offswitch_boot.py, in RAM only while it runs.
        import lazy

        lazy.call("tasks.offswitch_boot", "init", self, hw, link, ticks_ms, keys_path,
                  state_path)
        # the board's sleep (on the virtual board one select, not the unix port's polling)
        self._sleep_ms = hw.get("sleep_ms", time.sleep_ms)

    @property
    def ctr(self):
        return self._ctr_hi << 16 | self._ctr_lo

    # -- time, state, log ---------------------------------------------------------
    def _now(self):
        t = self._ticks()
        self._clock = (self._clock + time.ticks_diff(t, self._t)) & CLOCK_MASK
        self._t = t
        return self._clock

    def _ev(self, code, a=0, b=0, c=0, obj=None):
        link = self._link
        s = link.ev_slot()
        if s < 0:
            return -1
        o = s * EV_SIZE
        ev = link.ev
        ev[o] = code
        ev[o + 1], ev[o + 2], ev[o + 3] = a, b, c
        for i in range(o + 4, o + EV_SIZE):
            ev[i] = 0
        link.ev_obj[s] = obj
        return o

    def _log(self, code, a=0, b=0, c=0, obj=None):
        if self._ev(code, a, b, c, obj) >= 0:
            self._link.ev_put()

    def _log_ctr(self, code, a, b, hi, lo, n=0, c=0):
        # an event with a counter (hi, lo 16-bit halves) and a number n (< 2**24)
        o = self._ev(code, a, b, c)
        if o < 0:
            return
        ev = self._link.ev
        _put_ctr(ev, o + 4, hi, lo)
        ev[o + 13], ev[o + 14], ev[o + 15] = n >> 16, (n >> 8) & 0xFF, n & 0xFF
        self._link.ev_put()

    def _publish(self):
        st = self._link.state
        st[0], st[1], st[2] = self.relay, self.armed, self.locked
        self._link.state_seq = (self._link.state_seq + 1) & 0xFFFF

    def _ref_hour(self, now):
        if clock_diff(now, self._ref_win) >= _HOUR_MS:
            if self._ref_sup:
                self._log_ctr(EV_CAP, 0, 0, 0, 0, self._ref_sup)
            self._ref_win, self._ref_n, self._ref_sup = now, 0, 0

    def _may_log_refusal(self, now):
        # Every refusal is logged, up to _REFUSALS_LOGGED an hour; past that they are
        # counted and the count logged when the hour ends (OFFSWITCH.md "Logs").
        self._ref_hour(now)
        if self._ref_n < _REFUSALS_LOGGED:
            self._ref_n += 1
            return True
        self._ref_sup += 1
        return False

    # -- the persisted record ---------------------------------------------------------
    def _persist(self, pend):
        # Seal the state into the Link's record (offswitch_auth.STATE_*) and ask the main
        # core to store it; the pin moves in _settle(), once it says the record is on flash.
        rec, ws, m = self._link.record, self._mac.ws, self._msg
        ws[m] = osa.STATE_VER
        ws[m + 1], ws[m + 2], ws[m + 3] = self.relay, self.armed, self.locked
        hi, lo = self._ctr_hi, self._ctr_lo
        _put_ctr(ws, m + 4, hi, lo)
        self._put32(ws, m + 8, self.deadline)
        self._put32(ws, m + 12, self._clock)
        ws[m + 16] = self._nops
        ws[m + 17] = ws[m + 18] = ws[m + 19] = 0
        self._put32(ws, m + 20, self._ops[self._nops - 1] if self._nops else 0)
        kid = self._kid
        for i in range(8):
            ws[m + 24 + i] = kid[i]
        self._mac.mac(2, osa.STATE_MAC_AT)
        out = self._out
        for i in range(osa.STATE_MAC_AT):
            rec[i] = ws[m + i]
        for i in range(osa.MAC_LEN):
            rec[osa.STATE_MAC_AT + i] = ws[out + i]
        self._pend = pend
        self._link.ask_persist(self.relay)

    def _remember(self):
        # the state before a change, to undo it if the record cannot be stored (ints, not a
        # tuple: a tuple is an allocation)
        self._b_relay, self._b_armed, self._b_locked = self.relay, self.armed, self.locked

    @staticmethod
    def _put32(b, o, v):
        # v < 2**30 (the clock's values)
        b[o], b[o + 1] = v >> 24, (v >> 16) & 0xFF
        b[o + 2], b[o + 3] = (v >> 8) & 0xFF, v & 0xFF

    def _settle(self, now):
        # A pending persist: when the main core answered, move the pin (stored) or undo
        # (failed), then log and answer.
        ok = self._link.answer()
        if ok is None:
            return
        pend, self._pend = self._pend, 0
        if pend == _P_TAMPER:
            pass  # the relay opened already; a failed store leaves it open all the same
        elif ok:
            if self._relay.value() != self.relay:
                self._relay.value(self.relay)
        elif not self._tampered:
            self.relay, self.armed, self.locked = self._b_relay, self._b_armed, self._b_locked
        if ok or not self._tampered:
            self._publish()
        if pend == _P_LOCAL:
            if ok:
                self._log(self._p_text)
            else:
                self._log(EV_PERSIST_FAILED, self.relay)
        elif pend == _P_COMMAND:
            text = self._p_text if ok else T_PERSIST
            res = self._p_res if ok else osa.R_BUSY
            hi, lo = self._p_hi, self._p_lo
            if res == osa.R_OK:
                self._log_ctr(EV_COMMAND, self._p_op, text, hi, lo, self._p_n)
            elif self._may_log_refusal(now):
                self._log_ctr(EV_COMMAND, self._p_op, text, hi, lo, self._p_n)
            self._answer(self._p_id, self._p_op, res, hi, lo, -1)
        if self._tampered and not (ok and pend == _P_TAMPER):
            # the tamper state is not stored yet
            self._tampered = 0
            self._remember()
            self._persist(_P_TAMPER)
        else:
            self._tampered = 0

    # -- one pass ---------------------------------------------------------------------
    def poll(self):
        now = self._now()
        self._ref_hour(now)
        if self._tamper.value():
            if not self._tamper_in:
                self._on_tamper()
        elif self._tamper_in:
            self._tamper_in = 0
            self._log(EV_TAMPER_CLEARED)
            self._publish()
        if self._pend:
            self._settle(now)
            if self._pend:
                return  # nothing else moves until the record is on flash
        if self._button.value():
            self._btn += 1
            if self._btn == DEBOUNCE and self.armed:
                # A press confirms an armed reconnect; alone it never closes the relay.
                self._switch(1, EV_BUTTON)
                return
        else:
            self._btn = 0
        if self.armed and clock_diff(now, self.deadline) > 0:
            self._switch(0, EV_WINDOW)
            return
        s = self._link.in_slot()
        if s >= 0:
            self._request(s, now)
            self._link.in_done()

    def _request(self, s, now):
        link = self._link
        kind, ident, n = link._in[0][s], link._in[1][s], link._in[2][s]
        if kind == K_SWITCH:
            self._command(ident, s * _DATA, n, now)
        elif kind == K_STATUS:
            ok = n == osa.NONCE_LEN
            self._answer(ident, osa.OP_STATUS, (osa.R_OK if self._keyed else osa.R_NO_KEY)
                         if ok else osa.R_MALFORMED, 0, 0, s * _DATA if ok else -1)
        elif kind == K_CREDIT:
            # The credit task's only power: a local disconnect at zero credit.
            if self.relay or self.armed:
                limit = self._rate(now)
                if limit:
                    if self._may_log_refusal(now):
                        self._log_ctr(EV_CREDIT_REFUSED, limit, 0, 0, 0, self._max_hour)
                else:
                    self._add_op(now)
                    self._switch(0, EV_CREDIT)

    def run(self):
        while self._link.running:
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 - the off-switch must keep running
                self._log(EV_ERROR, obj=type(e))
                self._sleep_ms(100)
            self._sleep_ms(_POLL_MS)

    def _switch(self, relay, text):
        # A local change (button, window, credit): relay to `relay`, disarmed, once stored.
        self._remember()
        self.relay, self.armed = relay, 0
        self._p_text = text
        self._persist(_P_LOCAL)

    def _on_tamper(self):
        # Acted on at the edge, and at once: the relay opens before the record is stored
        # (docs/OFFSWITCH.md "Tamper": a hung or hostile main core cannot hold it closed).
        # While the input stays active nothing can close the relay (ON is refused while
        # locked, and UNLOCK while the tamper input is active).
        self._tamper_in = 1
        self._log(EV_TAMPER, 0 if self.relay else 1 if not self.locked else 2)
        self.relay, self.armed, self.locked = 0, 0, 1
        if self._relay.value():
            self._relay.value(0)
        self._publish()
        if self._pend:
            self._tampered = 1  # stored after the pending record
        else:
            self._remember()
            self._persist(_P_TAMPER)

    # -- commands from the central system --------------------------------------------------
    def _answer(self, ident, op, result, hi, lo, nonce_at):
        # The signed answer into a free answer slot: ver op result state meter ctr last nonce.
        link = self._link
        s = link.done_slot()
        if s < 0:
            return
        ws, m = self._mac.ws, self._msg
        ws[m], ws[m + 1], ws[m + 2] = osa.VER, op, result
        ws[m + 3] = (self.relay * osa.S_RELAY | self.armed * osa.S_ARMED
                     | self.locked * osa.S_LOCKED | self._tamper_in * osa.S_TAMPER)
        mid = self._meter
        for i in range(8):
            ws[m + 4 + i] = mid[i]
        _put_ctr(ws, m + 12, hi, lo)
        hi, lo = self._ctr_hi, self._ctr_lo
        _put_ctr(ws, m + 16, hi, lo)
        d = link.in_data
        for i in range(osa.NONCE_LEN):
            ws[m + 20 + i] = d[nonce_at + i] if nonce_at >= 0 else 0
        self._mac.mac(1 if self._keyed else 3, 28)
        out, o = link.done_data, s * osa.REPLY_LEN
        for i in range(28):
            out[o + i] = ws[m + i]
        for i in range(osa.MAC_LEN):
            out[o + 28 + i] = ws[self._out + i]
        link.done_put(s, ident)

    def _add_op(self, now):
        if self._nops == len(self._ops):
            for i in range(1, self._nops):
                self._ops[i - 1] = self._ops[i]
            self._nops -= 1
        self._ops[self._nops] = now
        self._nops += 1

    def _rate(self, now):
        # 0, or why a switching operation is refused now (T_RATE_*). Drops times over an hour
        # old in place.
        ops, k = self._ops, 0
        for i in range(self._nops):
            if clock_diff(now, ops[i]) < _HOUR_MS:
                ops[k] = ops[i]
                k += 1
        self._nops = k
        if k >= self._max_hour:
            return T_RATE_HOUR
        if k and clock_diff(now, ops[k - 1]) < self._spacing:
            return T_RATE_SPACING
        return 0

    def _command(self, ident, at, n, now):
        d = self._link.in_data
        hi = d[at + 10] << 8 | d[at + 11] if n == osa.CMD_LEN else 0
        lo = d[at + 12] << 8 | d[at + 13] if n == osa.CMD_LEN else 0
        op = d[at + 1] if n == osa.CMD_LEN else 0
        if not self._keyed:
            if self._may_log_refusal(now):
                self._log(EV_NO_KEY)
            self._answer(ident, 0, osa.R_NO_KEY, 0, 0, -1)
            return
        res = osa.R_OK
        if n != osa.CMD_LEN or d[at] != osa.VER:
            res = osa.R_MALFORMED
        else:
            mid = self._meter
            for i in range(8):
                if d[at + 2 + i] != mid[i]:
                    res = osa.R_WRONG_METER
        if res == osa.R_OK:
            ws, m = self._mac.ws, self._msg
            for i in range(14):
                ws[m + i] = d[at + i]
            self._mac.mac(0, 14)
            diff, out = 0, self._out
            for i in range(osa.MAC_LEN):  # constant time
                diff |= ws[out + i] ^ d[at + 14 + i]
            if diff:
                res = osa.R_BAD_MAC
            elif hi < self._ctr_hi or (hi == self._ctr_hi and lo <= self._ctr_lo):
                res = osa.R_REPLAY
        if res != osa.R_OK:
            if self._may_log_refusal(now):
                o = self._ev(EV_REFUSED, op, res, 1 if n == osa.CMD_LEN else 0)
                if o >= 0:
                    ev = self._link.ev
                    _put_ctr(ev, o + 4, hi, lo)
                    if res == osa.R_WRONG_METER:
                        for i in range(8):
                            ev[o + 8 + i] = d[at + 2 + i]
                    self._link.ev_put()
            self._answer(ident, op, res, hi, lo, -1)
            return
        self._ctr_hi, self._ctr_lo = hi, lo  # authentic: consumed, whatever the outcome below
        res, text, num = osa.R_OK, 0, 0
        self._remember()
        if op == osa.OP_OFF or op == osa.OP_ON:
            limit = self._rate(now)
            if op == osa.OP_ON and self.locked:
                res, text = osa.R_LOCKED, T_LOCKED
            elif limit:
                res, text, num = osa.R_RATE_LIMIT, limit, self._max_hour
            else:
                self._add_op(now)
                if op == osa.OP_OFF:
                    text = T_OPENED if self.relay else T_ALREADY_OPEN
                    self.relay, self.armed = 0, 0
                elif self.relay:
                    text = T_ALREADY_CLOSED
                else:
                    self.armed, self.deadline = 1, (now + self._window) & CLOCK_MASK
                    text, num = T_ARMED, self._window // 1000
        elif op == osa.OP_UNLOCK:
            if self._tamper_in:
                res, text = osa.R_TAMPER, T_TAMPER
            else:
                text = T_UNLOCKED if self.locked else T_NOT_LOCKED
                self.locked = 0
        else:
            res, text = osa.R_UNKNOWN_OP, T_UNKNOWN
        # Stored (the counter with it) before anything moves; answered once it is.
        self._p_id, self._p_op, self._p_res = ident, op, res
        self._p_text, self._p_n = text, num
        self._p_hi, self._p_lo = hi, lo
        self._persist(_P_COMMAND)


class OffSwitch:
    """The main core's side (the kernel task "offswitch"): forwards messages into the Link
    and back, words the log events, and stores core 1's record when it asks. It holds no pin
    and no key. hw: "link"; "poll" (the Core's one pass) where there is no core 1; "state"
    (the record's path) and "relay_boot" (the board's relay boot state, if it keeps one)."""

    def __init__(self, port, hw):
        self._port = port
        self._link = hw["link"]
        self._poll = hw.get("poll")
        self._path = hw.get("state", STATE)
        self._boot = hw.get("relay_boot")
        self._lost = 0
        self._seq = -1  # the state as it is now goes out at the first step
        self._ids = 0
        self._waiting = {}  # id -> (sender's ref, ticks_ms when forwarded)
        self._words = None

    def step(self):
        if self._poll is not None:
            self._poll()  # no core 1: the off-switch's pass runs here, between the tasks
        link, port = self._link, self._port
        if link.persist_wanted():
            self._store()
        evs = []
        for _ in range(8):
            ev = link.take_event()
            if ev is None:
                break
            evs.append(ev)
        if evs:
            for text in self.words(evs):
                port.log(text)
        for _ in range(4):
            d = link.take_done()
            if d is None:
                break
            w = self._waiting.pop(d[0], None)
            if w is not None:
                port.send("cs_security", "switch_done", (w[0], 0, d[1]))
        if link.state_seq != self._seq:
            self._seq = link.state_seq
            st = tuple(link.state)
            port.send("han", "relay_state", st)
            port.send("credit", "relay_state", st)
        if link.dropped != self._lost:
            port.log("link: %d messages lost" % (link.dropped - self._lost))
            self._lost = link.dropped
        if self._waiting:
            # A core 1 that stopped answering must not leave the head-end waiting forever.
            now = time.ticks_ms()
            for i in list(self._waiting):
                ref, t = self._waiting[i]
                if time.ticks_diff(now, t) > _ANSWER_MS:
                    del self._waiting[i]
                    port.log("core 1 did not answer #%d" % ref)
                    port.send("cs_security", "switch_done",
                              (ref, _E_FAILED, "off-switch not answering"))

    def _store(self):
        # Core 1's record, exactly as handed (sealed with its state key), then the relay's
        # boot state; acknowledged only once both are on flash.
        import store

        link = self._link
        try:
            store.save_bytes(self._path, bytes(link.record))
            if self._boot is not None:
                self._boot.save(link.req_relay)
            ok = True
        except OSError:
            ok = False
        link.persisted(ok)

    @staticmethod
    def words(evs):
        # the events (take_event()) in words; the wording's code is in RAM for this call only
        import lazy

        return lazy.call("tasks.offswitch_text", "words_all", evs)

    def handle(self, sender, kind, payload):
        if kind not in _KIND_NAMES:
            return
        k = _KIND_NAMES.index(kind) + 1
        ref, data = payload if kind != "credit_disconnect" else (0, None)
        self._ids = i = (self._ids + 1) & 0x3FFF
        if not self._link.put_in(k, i, data):
            self._port.log("busy: %s from %s dropped" % (kind, sender))
            if kind != "credit_disconnect":
                self._port.send(sender, "switch_done", (ref, _E_FAILED, "off-switch busy"))
        elif kind != "credit_disconnect":
            self._waiting[i] = (ref, time.ticks_ms())


def install(k, hw, relay_boot=None, keys_path=KEYS, state_path=STATE, ticks_ms=None):
    """Make the off-switch on kernel k: its Core (which reads its files and makes everything
    it will use, here on the main core), the proxy task "offswitch", and core 1 running the
    Core where `import _thread` works; where it does not (the official PYBV11 build) the
    proxy runs the Core's pass once per step (docs/OFFSWITCH.md, "Without _thread"). hw: the
    relay, button and tamper (policy.HARDWARE) and the board's sleep_ms. relay_boot: the
    board's RelayBoot, if it keeps one. Returns "core 1" or "cooperative"."""
    link = Link()
    core = Core(hw, link, ticks_ms, keys_path, state_path)
    coop = _thread is None
    k.add("offswitch", OffSwitch, {"link": link, "poll": core.poll if coop else None,
                                   "state": state_path, "relay_boot": relay_boot},
          capacity=4, period_ms=_POLL_MS if coop else 20)
    if coop:
        k.log("offswitch", "no _thread: runs in the main loop (cooperative)")
        return "cooperative"
    start(core)
    return "core 1"


def start(core):
    """Run core on the second core: core 1 on an RP2040, a VM thread on the virtual board."""
    # The deepest path (a command: its MAC and the answer's) takes well under 4 KB of C stack;
    # rp2's default for core 1 is 4 KB (3.5 usable): ask for 8 KB (on rp2 it comes from the
    # heap, made here on core 0).
    _thread.stack_size(_STACK)
    _thread.start_new_thread(core.run, ())
