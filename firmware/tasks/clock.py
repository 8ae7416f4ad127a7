# Clock: owns time. It reads the RTC, tells metrology each second which
# load-profile interval is open, and sets the RTC only on an authenticated
# command (routed here from cs_security by the policy). A set that moves
# time back by more than MAX_BACK_S is refused; every set is logged.
import json
from micropython import const

import store

STATE = "/data/clock.json"
MAX_BACK_S = const(300)
EARLIEST = const(1704067200)  # 2024-01-01: an RTC below this was never set
SAVE_EVERY_S = const(60)
DEFAULT_INTERVAL_S = const(900)


class Clock:
    def __init__(self, port, hw):
        self._port = port
        self._rtc = hw["rtc"]
        st = store.load(STATE, {})
        self.interval_s = st.get("interval_s", DEFAULT_INTERVAL_S)
        self._saved_t = st.get("t", 0)
        now = self._rtc.get()
        if now < self._saved_t:
            # Time never runs backwards across a power cut: resume from the
            # last time saved, until the head-end sets it.
            self._rtc.set(self._saved_t)
            port.log("clock: rtc %d behind saved %d; resumed from saved" % (now, self._saved_t))
        self._last = -1

    def now(self):
        return self._rtc.get()

    def step(self):
        t = self._rtc.get()
        if t == self._last:
            return
        self._last = t
        L = self.interval_s
        start = t - t % L
        self._port.send("metrology", "tick", (t, start // L, start, L))
        if t - self._saved_t >= SAVE_EVERY_S or t < self._saved_t:
            self._save(t)

    def _save(self, t):
        self._saved_t = t
        store.save(STATE, {"t": t, "interval_s": self.interval_s})

    def handle(self, sender, kind, payload):
        if kind != "time_set":
            return
        ref, t_new = payload
        old = self._rtc.get()
        if t_new < EARLIEST or old - t_new > MAX_BACK_S:
            self._port.log("clock: time set %d refused (now %d)" % (t_new, old))
            self._port.send(sender, "time_set_done", (ref, 6, "time moves back too far"))
            return
        self._rtc.set(t_new)
        self._last = -1
        self._save(t_new)
        self._port.log("clock: time set %d (was %d)" % (t_new, old))
        self._port.send(sender, "time_set_done", (ref, 0, json.dumps({"t": t_new, "old": old})))
