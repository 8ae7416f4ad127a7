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


try:
    import _thread
except ImportError:  # the official PYBV11 build: the off-switch runs cooperatively
    _thread = None  # type: ignore[assignment]

KEYS = "/data/os_keys.json"
STATE = "/data/os_state.json"
# The wire's constants of lib/offswitch_auth.py, as the compiler's own (underscored: no
# module global): that module is not in RAM while the meter runs (docs/hardware.md, "Memory");
# tests_host/test_offswitch.py checks that they match it.
_CMD_LEN = const(30)
_MAC_LEN = const(16)
_NONCE_LEN = const(8)
_OP_OFF = const(1)
_OP_ON = const(2)
_OP_STATUS = const(0)
_OP_UNLOCK = const(3)
_REPLY_LEN = const(44)
_R_BAD_MAC = const(3)
_R_BUSY = const(10)
_R_LOCKED = const(6)
_R_MALFORMED = const(1)
_R_NO_KEY = const(9)
_R_OK = const(0)
_R_RATE_LIMIT = const(5)
_R_REPLAY = const(4)
_R_TAMPER = const(7)
_R_UNKNOWN_OP = const(8)
_R_WRONG_METER = const(2)
_STATE_MAC_AT = const(32)
_STATE_VER = const(2)
_S_ARMED = const(2)
_S_LOCKED = const(4)
_S_RELAY = const(1)
_S_TAMPER = const(8)
_VER = const(1)
_POLL_MS = const(10)
_HOUR_MS = const(3600000)
_DEBOUNCE = const(2)  # polls the button must read pressed: a press is a rising edge + 20 ms
_REFUSALS_LOGGED = const(32)  # per hour: a flood of refusals never evicts the switch records
_STACK = const(8192)  # core 1's stack, bytes
_ANSWER_MS = const(3000)  # the proxy answers FAILED for core 1 after this long
_E_FAILED = const(7)  # WAN error code (PROTOCOL.md) for an answer the off-switch cannot give
# The off-switch's clock (ms powered) wraps here: with it every time and every difference
# stays a small int on a 32-bit port (31-bit small ints: a plain ms count would become a
# big int, an allocation, after 12 days). Windows are at most an hour, far below half of it.
_CLOCK_MASK = const(0x1FFFFFFF)
_CLOCK_HALF = const(0x10000000)

# Link request kinds (main core -> core 1)
_K_SWITCH = const(1)
_K_STATUS = const(2)
_K_CREDIT = const(3)
_KIND_NAMES = ("switch", "switch_status", "credit_disconnect")  # K_* - 1
_DATA = const(32)  # bytes a request slot holds (a command is 30)
_EV_SIZE = const(16)  # an event: code, a, b, c, ctr u32, 8 bytes (a meter id, a number)

# Log events (core 1 -> main core, which words them: tasks/offswitch_text.py, which has the
# same numbers, as offswitch_boot.py has the boot's)
_EV_BOOT = const(1)
_EV_NEW_KEY = const(2)
_EV_BOOT_PIN = const(3)
_EV_CAP = const(4)
_EV_TAMPER_CLEARED = const(5)
_EV_BUTTON = const(6)
_EV_WINDOW = const(7)
_EV_CREDIT_REFUSED = const(8)
_EV_CREDIT = const(9)
_EV_PERSIST_FAILED = const(10)
_EV_TAMPER = const(11)
_EV_NO_KEY = const(12)
_EV_REFUSED = const(13)
_EV_COMMAND = const(14)
_EV_ERROR = const(15)
_EV_BAD_RECORD = const(16)

# command outcomes (texts in offswitch_text.py); the refusals are the ones >= _T_LOCKED
_T_OPENED = const(0)
_T_ALREADY_OPEN = const(1)
_T_ALREADY_CLOSED = const(2)
_T_ARMED = const(3)
_T_UNLOCKED = const(4)
_T_NOT_LOCKED = const(5)
_T_LOCKED = const(6)
_T_RATE_HOUR = const(7)
_T_RATE_SPACING = const(8)
_T_TAMPER = const(9)
_T_UNKNOWN = const(10)
_T_PERSIST = const(11)

# what a persist request is for (Core._pend)
_P_COMMAND = const(1)
_P_LOCAL = const(2)
_P_TAMPER = const(3)

# the state record core 1 seals and core 0 stores (offswitch_auth.STATE_* has the layout)
_REC_LEN = const(48)

# The HMAC workspace (tasks/offswitch_mac.py makes it): SHA-256's round constants (0),
# schedule (256), chaining state (512) and block, then per key (command, reply, state record,
# the keyless meter's reply) its inner and outer midstates, the message and the MAC
# (the same numbers in tasks/offswitch_mac.py and offswitch_boot.py: private consts are not
# module attributes, which keeps this module's globals, RAM on every board, few;
# tests_host/test_offswitch.py checks that the copies agree)
_WS_BLK = const(544)  # the block being compressed, 64 bytes
_MID = const(608)  # per key: inner midstate (32 bytes), outer midstate (32 bytes)
_MSG = const(864)  # the message, up to 55 bytes
_OUT = const(928)  # the MAC, 32 bytes


def _put_ctr(b, o, hi, lo):
    # a u32 counter kept as two 16-bit halves (small ints on every port), big-endian. (Two
    # targets per statement at most: MicroPython builds a tuple for four.)
    b[o], b[o + 1] = hi >> 8, hi & 0xFF
    b[o + 2], b[o + 3] = lo >> 8, lo & 0xFF


def _mac(op, ws, which, n):
    # ws[_MSG:_MSG+n] (n <= 55) -> its HMAC-SHA256 under key `which` in ws[_OUT:_OUT+32], with the
    # viper function op (tasks/offswitch_mac.py). Allocates nothing.
    mid = _MID + 64 * which
    op(ws, 1, mid)  # H = the key's inner midstate
    op(ws, 3, n)  # the block: message, padding, length
    op(ws, 0, 0)
    op(ws, 4, _WS_BLK)  # the outer block: the inner digest ...
    ws[_WS_BLK + 32] = 0x80  # ... padded, 64 + 32 bytes long
    for i in range(_WS_BLK + 33, _WS_BLK + 62):
        ws[i] = 0
    ws[_WS_BLK + 62] = 3
    ws[_WS_BLK + 63] = 0
    op(ws, 1, mid + 32)  # H = the key's outer midstate
    op(ws, 0, 0)
    op(ws, 4, _OUT)


def clock_diff(a, b):
    """a - b on the off-switch's wrapping clock."""
    return ((a - b + _CLOCK_HALF) & _CLOCK_MASK) - _CLOCK_HALF


class _NoLock:
    # Where there is no _thread there is one core and one loop: nothing to exclude.
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# Link.n: its counters, one list (fewer attributes: a smaller instance dict)
_IN_HEAD = const(0)
_IN_N = const(1)
_DONE_HEAD = const(2)
_DONE_N = const(3)
_EV_HEAD = const(4)
_EV_N = const(5)
N_DROPPED = const(6)  # events and answers lost to full slots (counted by core 1 only)
N_STATE_SEQ = const(7)  # bumped at each change of `state`
_REQ = const(8)  # persist handshake: core 1 bumps REQ, the main core makes ACK = REQ
_ACK = const(9)
N_REQ_RELAY = const(10)  # the relay level the record being stored commands
_OK = const(11)  # the last store: 1 stored, 0 failed


class Link:
    """The only object the two cores share, made whole on the main core before core 1
    starts: fixed slots for requests, answers, log events and the state, and the persist
    handshake. Each access holds one lock for a few slot updates. Core 1's side is in Core
    (it allocates nothing), the main core's here."""

    def __init__(self, cap_in=4, cap_done=4, cap_ev=16):
        self._lock = _thread.allocate_lock() if _thread else _NoLock()
        # its slots, made once on the main core (tasks/offswitch_boot.py link: that code is in
        # RAM only while it runs)
        import lazy

        lazy.call("tasks.offswitch_boot", "link", self, cap_in, cap_done, cap_ev)

    # -- the main core's side (may allocate) --------------------------------------------------
    def put_in(self, kind, ident, data):
        n = self.n
        with self._lock:
            cap = len(self.inq[0])
            if n[_IN_N] >= cap:
                return False
            s = (n[_IN_HEAD] + n[_IN_N]) % cap
        k = len(data) if data else 0
        self.inq[0][s], self.inq[1][s], self.inq[2][s] = kind, ident, k
        if k:
            k = min(k, _DATA)
            self.in_data[s * _DATA:s * _DATA + k] = data[:k]
        with self._lock:
            n[_IN_N] += 1
        return True

    def take_done(self):
        """(id, reply bytes) or None."""
        n = self.n
        with self._lock:
            if not n[_DONE_N]:
                return None
            s = n[_DONE_HEAD]
        r = (self.done_id[s], bytes(self.done_data[s * _REPLY_LEN:(s + 1) * _REPLY_LEN]))
        with self._lock:
            n[_DONE_HEAD] = (s + 1) % len(self.done_id)
            n[_DONE_N] -= 1
        return r

    def take_event(self):
        """(bytes of the event, the exception type for _EV_ERROR) or None."""
        n = self.n
        with self._lock:
            if not n[_EV_N]:
                return None
            s = n[_EV_HEAD]
        e = bytes(self.ev[s * _EV_SIZE:(s + 1) * _EV_SIZE])
        with self._lock:
            n[_EV_HEAD] = (s + 1) % (len(self.ev) // _EV_SIZE)
            n[_EV_N] -= 1
        return e, self.err if e[0] == _EV_ERROR else None

    def persist_wanted(self):
        return self.n[_REQ] != self.n[_ACK]

    def persisted(self, ok):
        with self._lock:
            self.n[_OK] = 1 if ok else 0
            self.n[_ACK] = self.n[_REQ]


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
        # the requests' code (tasks/offswitch_cmd.py): kept where core 1 runs it; else loaded
        # for each request (_request)
        self._cmd = None
        if _thread:
            from tasks import offswitch_cmd

            self._cmd = offswitch_cmd

    @property
    def ctr(self):
        return self._ctr_hi << 16 | self._ctr_lo

    # -- time, state, log ---------------------------------------------------------
    def _now(self):
        t = self._ticks()
        self._clock = (self._clock + time.ticks_diff(t, self._t)) & _CLOCK_MASK
        self._t = t
        return self._clock

    def _log(self, code, a=0, b=0, c=0, hi=0, lo=0, n=0, meter_at=-1):
        # A log event into a free slot: code, a, b, c, a counter (hi, lo 16-bit halves), a
        # number n (< 2**24) or the 8 bytes of in_data at meter_at (a meter id). Filled under
        # the lock; a full ring counts it as dropped.
        link = self._link
        ev, k = link.ev, link.n
        with link._lock:
            cap = len(ev) // _EV_SIZE
            if k[_EV_N] >= cap:
                k[N_DROPPED] += 1
                return
            o = (k[_EV_HEAD] + k[_EV_N]) % cap * _EV_SIZE
            ev[o] = code
            ev[o + 1], ev[o + 2], ev[o + 3] = a, b, c
            _put_ctr(ev, o + 4, hi, lo)
            if meter_at >= 0:
                d = link.in_data
                for i in range(8):
                    ev[o + 8 + i] = d[meter_at + i]
            else:
                for i in range(o + 8, o + 13):
                    ev[i] = 0
                ev[o + 13], ev[o + 14], ev[o + 15] = n >> 16, (n >> 8) & 0xFF, n & 0xFF
            k[_EV_N] += 1

    def _publish(self):
        st, n = self._link.state, self._link.n
        st[0], st[1], st[2] = self.relay, self.armed, self.locked
        n[N_STATE_SEQ] = (n[N_STATE_SEQ] + 1) & 0xFFFF

    def _ref_hour(self, now):
        if clock_diff(now, self._ref_win) >= _HOUR_MS:
            if self._ref_sup:
                self._log(_EV_CAP, n=self._ref_sup)
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
        rec, ws, m = self._link.record, self._ws, _MSG
        ws[m] = _STATE_VER
        ws[m + 1], ws[m + 2], ws[m + 3] = self.relay, self.armed, self.locked
        hi, lo = self._ctr_hi, self._ctr_lo
        _put_ctr(ws, m + 4, hi, lo)
        _put_ctr(ws, m + 8, self.deadline >> 16, self.deadline & 0xFFFF)
        _put_ctr(ws, m + 12, self._clock >> 16, self._clock & 0xFFFF)
        ws[m + 16] = self._nops
        ws[m + 17] = ws[m + 18] = ws[m + 19] = 0
        t = self._ops[self._nops - 1] if self._nops else 0  # the last switching time
        _put_ctr(ws, m + 20, t >> 16, t & 0xFFFF)
        kid = self._kid
        for i in range(8):
            ws[m + 24 + i] = kid[i]
        _mac(self._op, self._ws, 2, _STATE_MAC_AT)
        out = _OUT
        for i in range(_STATE_MAC_AT):
            rec[i] = ws[m + i]
        for i in range(_MAC_LEN):
            rec[_STATE_MAC_AT + i] = ws[out + i]
        self._pend = pend
        link = self._link
        k = link.n
        with link._lock:
            k[N_REQ_RELAY] = self.relay
            k[_REQ] = (k[_REQ] + 1) & 0xFFFF

    def _settle(self, now):
        # A pending persist: when the main core answered, move the pin (stored) or undo
        # (failed), then log and answer.
        link = self._link
        k = link.n
        with link._lock:
            if k[_REQ] != k[_ACK]:
                return  # not stored yet
            ok = k[_OK] == 1
        pend, self._pend = self._pend, 0
        p = self._p
        if pend == _P_TAMPER:
            # the relay opened already; a failed store leaves it open all the same (and the
            # lock in RAM): the next change stores it
            if not ok:
                self._log(_EV_PERSIST_FAILED, 0)
        elif ok:
            if self._relay.value() != self.relay:
                self._relay.value(self.relay)
        elif not self._tampered:
            b = self._b
            self.relay, self.armed, self.locked = b[0], b[1], b[2]
        if ok or not self._tampered:
            self._publish()
        if pend == _P_LOCAL:
            if ok:
                self._log(p[3])
            else:
                self._log(_EV_PERSIST_FAILED, self.relay)
        elif pend == _P_COMMAND:
            text = p[3] if ok else _T_PERSIST
            res = p[2] if ok else _R_BUSY
            hi, lo = p[5], p[6]
            if res == _R_OK or self._may_log_refusal(now):
                self._log(_EV_COMMAND, p[1], text, 0, hi, lo, p[4])
            self._answer(p[0], p[1], res, hi, lo, -1)
        if self._tampered and not (ok and pend == _P_TAMPER):
            # the tamper state is not stored yet
            self._tampered = 0
            self._b[0], self._b[1], self._b[2] = self.relay, self.armed, self.locked
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
            self._log(_EV_TAMPER_CLEARED)
            self._publish()
        if self._pend:
            self._settle(now)
            if self._pend:
                return  # nothing else moves until the record is on flash
        if self._button.value():
            self._btn += 1
            if self._btn == _DEBOUNCE and self.armed:
                # A press confirms an armed reconnect; alone it never closes the relay.
                self._switch(1, _EV_BUTTON)
                return
        else:
            self._btn = 0
        if self.armed and clock_diff(now, self.deadline) > 0:
            self._switch(0, _EV_WINDOW)
            return
        link = self._link
        k = link.n
        with link._lock:
            s = k[_IN_HEAD] if k[_IN_N] else -1
        if s >= 0:
            self._request(s, now)
            with link._lock:
                k[_IN_HEAD] = (s + 1) % len(link.inq[0])
                k[_IN_N] -= 1

    def _request(self, s, now):
        # A request from the main core (a command, a status, credit's disconnect): rare, its
        # code in tasks/offswitch_cmd.py. Core 1 imports nothing, so there it was imported at
        # boot and is kept; without _thread it is in RAM only while it runs (docs/hardware.md
        # "Memory"). It changes nothing before its code is there: a failed import leaves the
        # request in its slot for the next pass.
        cmd = self._cmd
        if cmd is None:
            import lazy

            lazy.call("tasks.offswitch_cmd", "request", self, s, now)
        else:
            cmd.request(self, s, now)
    def run(self):
        while self._link.running:
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 - the off-switch must keep running
                self._link.err = type(e)
                self._log(_EV_ERROR)
                self._sleep_ms(100)
            self._sleep_ms(_POLL_MS)

    def _switch(self, relay, text):
        # A local change (button, window, credit): relay to `relay`, disarmed, once stored.
        self._b[0], self._b[1], self._b[2] = self.relay, self.armed, self.locked
        self.relay, self.armed = relay, 0
        self._p[3] = text
        self._persist(_P_LOCAL)

    def _on_tamper(self):
        # Acted on at the edge, and at once: the relay opens before the record is stored
        # (docs/OFFSWITCH.md "Tamper": a hung or hostile main core cannot hold it closed).
        # While the input stays active nothing can close the relay (ON is refused while
        # locked, and UNLOCK while the tamper input is active).
        self._tamper_in = 1
        pin = self._relay.value()  # (a pending command may have changed self.relay already)
        self._log(_EV_TAMPER, 0 if pin else 1 if not self.locked else 2)
        self.relay, self.armed, self.locked = 0, 0, 1
        if pin:
            self._relay.value(0)
        self._publish()
        if self._pend:
            self._tampered = 1  # stored after the pending record
        else:
            self._b[0], self._b[1], self._b[2] = self.relay, self.armed, self.locked
            self._persist(_P_TAMPER)

    # -- commands from the central system --------------------------------------------------
    def _answer(self, ident, op, result, hi, lo, nonce_at):
        # The signed answer into a free answer slot: ver op result state meter ctr last nonce.
        link = self._link
        k = link.n
        with link._lock:
            cap = len(link.done_id)
            if k[_DONE_N] >= cap:
                k[N_DROPPED] += 1
                return
            s = (k[_DONE_HEAD] + k[_DONE_N]) % cap
        ws, m = self._ws, _MSG
        ws[m], ws[m + 1], ws[m + 2] = _VER, op, result
        ws[m + 3] = (self.relay * _S_RELAY | self.armed * _S_ARMED
                     | self.locked * _S_LOCKED | self._tamper_in * _S_TAMPER)
        mid = self._meter
        for i in range(8):
            ws[m + 4 + i] = mid[i]
        _put_ctr(ws, m + 12, hi, lo)
        hi, lo = self._ctr_hi, self._ctr_lo
        _put_ctr(ws, m + 16, hi, lo)
        d = link.in_data
        for i in range(_NONCE_LEN):
            ws[m + 20 + i] = d[nonce_at + i] if nonce_at >= 0 else 0
        _mac(self._op, self._ws, 1 if self._keyed else 3, 28)
        out, o = link.done_data, s * _REPLY_LEN
        for i in range(28):
            out[o + i] = ws[m + i]
        for i in range(_MAC_LEN):
            out[o + 28 + i] = ws[_OUT + i]
        link.done_id[s] = ident
        with link._lock:
            k[_DONE_N] += 1



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
            # Core 1's record, exactly as handed (sealed with its state key), then the relay's
            # boot state; acknowledged only once both are on flash.
            import store

            try:
                store.save_bytes(self._path, bytes(link.record))
                if self._boot is not None:
                    self._boot.save(link.n[N_REQ_RELAY])
                ok = True
            except OSError:
                ok = False
            link.persisted(ok)
        self.log_events()
        for _ in range(4):
            d = link.take_done()
            if d is None:
                break
            w = self._waiting.pop(d[0], None)
            if w is not None:
                port.send("cs_security", "switch_done", (w[0], 0, d[1]))
        if link.n[N_STATE_SEQ] != self._seq:
            self._seq = link.n[N_STATE_SEQ]
            st = tuple(link.state)
            port.send("han", "relay_state", st)
            port.send("credit", "relay_state", st)
        lost = link.n[N_DROPPED]
        if lost != self._lost:
            port.log("link: %d messages lost" % (lost - self._lost))
            self._lost = lost
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

    def log_events(self):
        # up to 8 of core 1's log events, in words, into the off-switch log
        evs = []
        for _ in range(8):
            ev = self._link.take_event()
            if ev is None:
                break
            evs.append(ev)
        if evs:
            import lazy

            # the events in words; the wording's code is in RAM for this call only
            for text in lazy.call("tasks.offswitch_text", "words_all", evs):
                self._port.log(text)

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
    proxy = k.add("offswitch", OffSwitch, {"link": link, "poll": core.poll if coop else None,
                                           "state": state_path, "relay_boot": relay_boot},
                  capacity=4, period_ms=_POLL_MS if coop else 20)
    if coop:
        k.log("offswitch", "no _thread: runs in the main loop (cooperative)")
    # The boot's events logged now, while the meter is being made (on a 100-KB Pyboard heap
    # the wording's code finds room then; at the first step it meets the running tasks')
    proxy.log_events()
    if coop:
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
