# Clock: owns time. It reads the RTC, tells metrology each second which
# load-profile interval is open, and sets the RTC only on an authenticated
# command (routed here from cs_security by the policy). A set that moves
# time back by more than 300 s is refused; every set is logged (tasks/clock_set.py).
from micropython import const

import lazy
import store

STATE = "/data/clock.json"
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
        if kind == "time_set":  # an authenticated set: tasks/clock_set.py, for one call
            lazy.call("tasks.clock_set", "time_set", self, sender, payload)
