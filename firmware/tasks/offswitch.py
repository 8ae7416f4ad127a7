# The off-switch: its driver and its own security module, on the second core (seed 002
# §4.5: "an additional processor ... for the off-switch, the most critical component").
# docs/OFFSWITCH.md has the whole story; in short:
#
# - Core runs on core 1 (_thread: core 1 on an RP2040, a VM thread on the virtual board).
#   It alone holds the relay, the local button and the tamper input, its own key
#   (/data/os_keys.json, made by the host at provisioning, independent of the WAN key) and
#   its own monotonic counter (persisted in /data/os_state.json with the relay, armed and
#   locked states).
# - Only commands authenticated end to end move the relay: HMAC-SHA256 under the
#   off-switch key over (command, meter id, counter) (lib/offswitch_auth.py). cs_security
#   has checked the WAN frame around it; this module checks again with its own key, so a
#   compromised main core can forward commands but never make one.
# - A remote reconnect only arms: the relay closes when the local button is pressed within
#   the arm window. Switching is rate limited (N per hour, a minimum spacing). Tamper opens
#   the relay and latches "locked" until an authenticated UNLOCK. The credit task may only
#   ask for a local disconnect at zero credit.
# - State changes are persisted before the relay pin moves; at boot the pin is driven only
#   if it differs from the last commanded state (a latching relay, as on the virtual board,
#   is never touched).
#
# Why a Link and not the kernel's mailboxes: the kernel, its mailboxes and the rings are
# single-threaded by design (no locks, no allocation on routing). The two cores share
# exactly one object, a Link: two short queues behind one _thread lock, holding only
# immutable tuples. On the main core a proxy task (registered in the kernel as "offswitch",
# so the flow policy still governs every message) forwards "switch", "switch_status" and
# "credit_disconnect" into the Link, and forwards what comes back: answers ("switch_done"),
# the relay state (to han and credit), and the off-switch's log lines, which the proxy
# writes to the off-switch log (the rings belong to the kernel, on the main core).
import time
from micropython import const

import _thread
import lazy
import offswitch_auth as osa
import store

KEYS = "/data/os_keys.json"
STATE = "/data/os_state.json"
_POLL_MS = const(10)
_HOUR_MS = const(3600000)
DEBOUNCE = const(2)  # polls the button must read pressed: a press is a rising edge + 20 ms
MAX_PER_HOUR = const(6)  # defaults; the factory may set others in os_keys.json
MIN_SPACING_S = const(10)
ARM_WINDOW_S = const(120)
_REFUSALS_LOGGED = const(32)  # per hour: a flood of refusals never evicts the switch records
_STACK = const(8192)  # core 1's stack, bytes
_ANSWER_MS = const(3000)  # the proxy answers FAILED for core 1 after this long
IN = const(0)  # Link queues: main core -> core 1
OUT = const(1)  # core 1 -> main core
_E_FAILED = const(7)  # WAN error code (PROTOCOL.md) for an answer the off-switch cannot give


class Link:
    """The only object shared by the two cores: two bounded queues (IN, OUT) of immutable
    tuples, each access under one lock held for one list operation."""

    def __init__(self, cap_in=4, cap_out=32):
        self._lock = _thread.allocate_lock()
        self._q = ([], [])
        self._cap = (cap_in, cap_out)
        self.dropped = 0  # OUT items lost to a full queue (counted by core 1 only)
        self.running = True

    def put(self, i, item):
        q = self._q[i]
        with self._lock:
            if len(q) < self._cap[i]:
                q.append(item)
                return True
        if i == OUT:
            self.dropped += 1
        return False

    def get(self, i):
        q = self._q[i]
        with self._lock:
            return q.pop(0) if q else None


class Core:
    """The off-switch driver and security module. poll() is one pass (inputs, the arm
    window, one command); run() loops it on core 1."""

    def __init__(self, hw, link, ticks_ms=None, keys_path=KEYS, state_path=STATE):
        # Its keys and state, read from flash once at boot (on the main core, before core 1
        # starts): tasks/offswitch_boot.py, in RAM only while it runs.
        lazy.call("tasks.offswitch_boot", "init", self, hw, link, ticks_ms, keys_path,
                  state_path)
        # the board's sleep (on the virtual board one select, not the unix port's polling)
        self._sleep_ms = hw.get("sleep_ms", time.sleep_ms)

    # -- time, state, log ---------------------------------------------------------
    def _now(self):
        t = self._ticks()
        self._clock += time.ticks_diff(t, self._t)
        self._t = t
        return self._clock

    def _commit(self):
        # Persist first, then move the pin: after a power cut in between, the boot drives
        # the pin to the state that was commanded. Raises OSError if the flash fails.
        store.save(self._path, {
            "relay": self.relay, "armed": self.armed, "locked": self.locked, "ctr": self.ctr,
            "deadline": self.deadline, "clock": self._clock, "ops": self._ops,
            "kid": self._kid})
        if self._relay.value() != self.relay:
            self._relay.value(self.relay)
        self._publish()

    def _publish(self):
        self._link.put(OUT, ("state", (self.relay, self.armed, self.locked)))

    def _log(self, text):
        self._link.put(OUT, ("log", text))

    def _ref_hour(self, now):
        if now - self._ref_win >= _HOUR_MS:
            if self._ref_sup:
                self._log("%d more refusals (log cap)" % self._ref_sup)
            self._ref_win, self._ref_n, self._ref_sup = now, 0, 0

    def _refused(self, text, now):
        # Every refusal is logged, up to _REFUSALS_LOGGED an hour; past that they are
        # counted and the count logged when the hour ends (OFFSWITCH.md "Logs").
        self._ref_hour(now)
        if self._ref_n < _REFUSALS_LOGGED:
            self._ref_n += 1
            self._log(text)
        else:
            self._ref_sup += 1

    # -- one pass ---------------------------------------------------------------------
    def poll(self):
        now = self._now()
        if self._ref_sup:
            self._ref_hour(now)
        if self._tamper.value():
            if not self._tamper_in:
                self._on_tamper()
        elif self._tamper_in:
            self._tamper_in = 0
            self._log("tamper input cleared")
            self._publish()
        if self._button.value():
            self._btn += 1
            if self._btn == DEBOUNCE and self.armed:
                # A press confirms an armed reconnect; alone it never closes the relay.
                self._switch(1, "button: reconnect confirmed, relay closed")
        else:
            self._btn = 0
        if self.armed and now - self.deadline > 0:
            self._switch(0, "arm window over: relay stays open")
        item = self._link.get(IN)
        if item is not None:
            kind, payload = item
            if kind == "switch":
                self._command(payload[0], payload[1], now)
            elif kind == "switch_status":
                nonce = payload[1]
                ok = len(nonce) == osa.NONCE_LEN
                self._answer(payload[0], osa.OP_STATUS, (osa.R_OK if self._keys else
                             osa.R_NO_KEY) if ok else osa.R_MALFORMED, 0, nonce if ok else None)
            elif kind == "credit_disconnect":
                # The credit task's only power: a local disconnect at zero credit.
                if self.relay or self.armed:
                    limit = self._rate(now)
                    if limit:
                        self._refused("credit disconnect refused: " + limit, now)
                    else:
                        self._ops.append(now)
                        self._switch(0, "credit: local disconnect, relay opened")

    def run(self):
        while self._link.running:
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 - the off-switch must keep running
                self._log("error: %s" % type(e).__name__)
                self._sleep_ms(100)
            self._sleep_ms(_POLL_MS)

    def _switch(self, relay, text):
        # A local change (button, window, credit): relay to `relay`, disarmed.
        old = self.relay
        self.relay, self.armed = relay, 0
        try:
            self._commit()
        except OSError:
            self.relay = old
            text = "persist failed: relay stays %d" % old
        self._log(text)

    def _on_tamper(self):
        # Acted on at the edge; while the input stays active nothing can close the relay
        # (ON is refused while locked, and UNLOCK while the tamper input is active).
        self._tamper_in = 1
        text = ("TAMPER: relay opened, locked" if self.relay else
                "TAMPER: locked (relay was open)" if not self.locked else
                "TAMPER: again (already locked)")
        self.relay, self.armed, self.locked = 0, 0, 1
        try:
            self._commit()
        except OSError:
            self._relay.value(0)  # the relay opens whatever the flash does
        self._log(text)

    # -- commands from the central system --------------------------------------------------
    def _answer(self, ref, op, result, ctr, nonce=None):
        keys = self._keys or osa.derive(osa.NO_KEY, self.meter_id)
        state = (self.relay * osa.S_RELAY | self.armed * osa.S_ARMED
                 | self.locked * osa.S_LOCKED | self._tamper_in * osa.S_TAMPER)
        data = osa.reply(keys, self.meter_id, op, result, state, ctr, self.ctr, nonce)
        self._link.put(OUT, ("done", (ref, 0, data)))

    def _rate(self, now):
        ops = [t for t in self._ops if now - t < _HOUR_MS]
        self._ops = ops
        if len(ops) >= self._max_hour:
            return "rate limit: %d/h" % self._max_hour
        if ops and now - ops[-1] < self._spacing:
            return "rate limit: spacing"
        return None

    def _command(self, ref, data, now):
        if self._keys is None:
            self._refused("command refused: no key", now)
            self._answer(ref, 0, osa.R_NO_KEY, 0)
            return
        res, op, ctr, meter = osa.open_command(self._keys, self.meter_id, data)
        name = osa.OP_NAMES[op] if 0 < op < 4 else "op%d" % op
        if res == osa.R_OK and ctr <= self.ctr:
            res = osa.R_REPLAY
        if res != osa.R_OK:
            why = "for meter %d" % meter if res == osa.R_WRONG_METER else osa.RESULT_NAMES[res]
            self._refused("%s #%d refused: %s" % (name, ctr, why), now)
            self._answer(ref, op, res, ctr)
            return
        self.ctr = ctr  # authentic: consumed, whatever the outcome below
        res, text = osa.R_OK, None
        before = (self.relay, self.armed, self.locked)
        if op == osa.OP_OFF or op == osa.OP_ON:
            limit = self._rate(now)
            if op == osa.OP_ON and self.locked:
                res, text = osa.R_LOCKED, "refused: locked"
            elif limit:
                res, text = osa.R_RATE_LIMIT, "refused: " + limit
            else:
                self._ops.append(now)
                if op == osa.OP_OFF:
                    text = "relay opened" if self.relay else "already open"
                    self.relay, self.armed = 0, 0
                elif self.relay:
                    text = "already closed"
                else:
                    self.armed, self.deadline = 1, now + self._window
                    text = "armed %ds: press button" % (self._window // 1000)
        elif op == osa.OP_UNLOCK:
            if self._tamper_in:
                res, text = osa.R_TAMPER, "refused: tamper active"
            else:
                text = "unlocked" if self.locked else "not locked"
                self.locked = 0
        else:
            res, text = osa.R_UNKNOWN_OP, "refused: unknown op"
        try:
            self._commit()
        except OSError:
            # Not persisted: nothing moves (the counter is still consumed in RAM).
            self.relay, self.armed, self.locked = before
            res, text = osa.R_BUSY, "refused: persist failed"
        line = "%s #%d: %s" % (name, ctr, text)
        if res == osa.R_OK:
            self._log(line)
        else:
            self._refused(line, now)
        self._answer(ref, op, res, ctr)


class OffSwitch:
    """The main core's side (the kernel task "offswitch"): forwards messages into the Link
    and back. It holds no pin and no key."""

    def __init__(self, port, hw):
        self._port = port
        self._link = hw["link"]
        self._lost = 0
        self._waiting = {}  # ref -> ticks_ms when forwarded

    def step(self):
        link, port = self._link, self._port
        for _ in range(8):
            item = link.get(OUT)
            if item is None:
                break
            kind, payload = item
            if kind == "log":
                port.log(payload)
            elif kind == "done":
                if self._waiting.pop(payload[0], None) is not None:
                    port.send("cs_security", "switch_done", payload)
            elif kind == "state":
                port.send("han", "relay_state", payload)
                port.send("credit", "relay_state", payload)
        if link.dropped != self._lost:
            port.log("link: %d messages lost" % (link.dropped - self._lost))
            self._lost = link.dropped
        if self._waiting:
            # A core 1 that stopped answering must not leave the head-end waiting forever.
            now = time.ticks_ms()
            for ref in list(self._waiting):
                if time.ticks_diff(now, self._waiting[ref]) > _ANSWER_MS:
                    del self._waiting[ref]
                    port.log("core 1 did not answer #%d" % ref)
                    port.send("cs_security", "switch_done",
                              (ref, _E_FAILED, "off-switch not answering"))

    def handle(self, sender, kind, payload):
        if kind in ("switch", "switch_status", "credit_disconnect"):
            if not self._link.put(IN, (kind, payload)):
                self._port.log("busy: %s from %s dropped" % (kind, sender))
                if kind != "credit_disconnect":
                    self._port.send(sender, "switch_done", (payload[0], _E_FAILED,
                                                            "off-switch busy"))
            elif kind != "credit_disconnect":
                self._waiting[payload[0]] = time.ticks_ms()


def start(core):
    """Run core on the second core: core 1 on an RP2040, a VM thread on the virtual board."""
    # The deepest path (a command persisted: store.save under HMAC checks) takes ~3.5 KB of C
    # stack on the x86-64 VM; rp2's default for core 1 is 4 KB (3.5 usable), so ask for 8 KB
    # (on rp2 it comes from the heap).
    _thread.stack_size(_STACK)
    _thread.start_new_thread(core.run, ())
