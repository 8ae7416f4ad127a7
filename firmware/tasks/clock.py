# Clock: owns time. It reads the RTC, tells metrology each second which
# load-profile interval is open, and sets the RTC only on an authenticated
# command (routed here from cs_security by the policy). A set that moves
# time back by more than 300 s is refused; every set is logged (tasks/clock_set.py).
#
# The last time is kept so that a power cut never takes the clock back behind it (a board
# without a battery-backed RTC, a Pico, restarts at its epoch). With battery-backed RAM
# (board.nvram, hw["nvram"]: a window of it) it goes there each second and to flash once a
# day and on each set; without, to flash every SAVE_EVERY_S (flash wear: docs/hardware.md).
# Both copies carry a generation: the boot takes the newer one, so a set back (up to 300 s)
# is never undone by an older, later time.
import struct
from micropython import const

import lazy
import store

STATE = "/data/clock.json"
SAVE_EVERY_S = const(300)  # without nvram: a power cut resumes at most this far behind
FLUSH_S = const(86400)  # with nvram: to flash once a day
DEFAULT_INTERVAL_S = const(900)
_NV = "<II"  # generation, t


class Clock:
    def __init__(self, port, hw):
        self._port = port
        self._rtc = hw["rtc"]
        st = store.load(STATE, {})
        self.interval_s = st.get("interval_s", DEFAULT_INTERVAL_S)
        self._saved_t = st.get("t", 0)  # the time last written to flash
        self._gen = st.get("g", 0)
        saved = self._saved_t
        self._nv = None
        self._nv_t = 0
        if hw.get("nvram") is not None:
            import nvrec

            self._nv = nvrec.Record(hw["nvram"], b"CK")
            self._nvbuf = bytearray(8)
            p = self._nv.load()
            if p is not None and len(p) == 8:
                g, t = struct.unpack(_NV, p)
                if g > self._gen:
                    self._gen, saved = g, t
        now = self._rtc.get()
        if now < saved:
            # Time never runs backwards across a power cut: resume from the
            # last time saved, until the head-end sets it.
            self._rtc.set(saved)
            port.log("clock: rtc %d behind saved %d; resumed from saved" % (now, saved))
        self._last = -1

    def step(self):
        t = self._rtc.get()
        if t == self._last:
            return
        self._last = t
        L = self.interval_s
        start = t - t % L
        self._port.send("metrology", "tick", (t, start // L, start, L))
        if self._nv is None:
            if t - self._saved_t >= SAVE_EVERY_S or t < self._saved_t:
                self._save(t)
        elif t - self._saved_t >= FLUSH_S or t < self._saved_t:
            self._save(t)
        elif t > self._nv_t:
            self._keep(t)

    def _keep(self, t):
        # battery-backed RAM only: no flash
        self._gen += 1
        self._nv_put(t)

    def _nv_put(self, t):
        struct.pack_into(_NV, self._nvbuf, 0, self._gen, t)
        self._nv.save(self._nvbuf)
        self._nv_t = t

    def _save(self, t):
        # flash (and the RAM, same generation): at a set, once a day, or without nvram
        self._gen += 1
        self._saved_t = t
        store.save(STATE, {"t": t, "interval_s": self.interval_s, "g": self._gen})
        if self._nv is not None:
            self._nv_put(t)

    def handle(self, sender, kind, payload):
        if kind == "time_set":  # an authenticated set: tasks/clock_set.py, for one call
            lazy.call("tasks.clock_set", "time_set", self, sender, payload)
