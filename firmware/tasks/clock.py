# Clock: owns time. It reads the RTC, tells metrology each second which
# load-profile interval is open, and sets the RTC only on an authenticated
# command (routed here from cs_security by the policy). A set that moves
# time back by more than 300 s is refused; every set is logged (tasks/clock_set.py).
#
# The last time is kept so that a power cut never takes the clock back behind it (a board
# without a battery-backed RTC, a Pico, restarts at its epoch). With battery-backed RAM
# (hw["nvram"]: a lib/nvrec.py Record) it goes there each second and to flash once a day and on
# each set; without, to flash every SAVE_EVERY_S (flash wear: docs/hardware.md). The flash copy
# holds the RAM record's seq when written ("g"): the boot takes the newer of the two, so a set
# back (up to 300 s) is never undone by an older, later time. The RAM record ("<I"): t.
from micropython import const

import lazy
import store

STATE = "/data/clock.json"
SAVE_EVERY_S = const(300)  # without nvram: a power cut resumes at most this far behind
_FLUSH_S = const(86400)  # with nvram: to flash once a day
DEFAULT_INTERVAL_S = const(900)


class Clock:
    def __init__(self, port, hw):
        self._port = port
        # the last time saved, read once at boot by code that is in RAM only while it runs
        # (boot_init.py)
        lazy.call("boot_init", "clock", self, hw, STATE)

    def step(self):
        t = self._rtc.get()
        if t == self._last:
            return
        self._last = t
        L = self.interval_s
        start = t - t % L
        self._port.send("metrology", "tick", (t, start // L, start, L))
        nv = self._nv
        if t - self._saved_t >= (SAVE_EVERY_S if nv is None else _FLUSH_S) \
                or t < self._saved_t:
            if nv is not None and nv.snaps is not None and t >= self._saved_t:
                # the daily flash copy: the RAM's snapshot (one write for every task's
                # record, lib/nvrec.py), not a store.save of its own; none if one was taken
                # since the last (the staged rings take several a day)
                nv.save("<I", t)
                if nv.snaps.seq == self._snap_seen:
                    nv.snaps.snapshot()
                self._snap_seen = nv.snaps.seq
                self._saved_t = t
            else:
                self._save(t)
        elif nv is not None:
            nv.save("<I", t)  # battery-backed RAM only: no flash

    def _save(self, t):
        # flash (and the RAM first, so that both hold the same seq): at a set, once a day, or
        # without nvram
        g = 0
        if self._nv is not None:
            self._nv.save("<I", t)
            g = self._nv.seq
        self._saved_t = t
        store.save(STATE, {"t": t, "interval_s": self.interval_s, "g": g})

    def handle(self, sender, kind, payload):
        if kind == "time_set":  # an authenticated set: tasks/clock_set.py, for one call
            lazy.call("tasks.clock_set", "time_set", self, sender, payload)
