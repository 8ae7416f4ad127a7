# The clock's authenticated time set (tasks/clock.py, TIME_SET routed here by the policy), and
# its making at boot: in its own file so that its code is in RAM only while it runs
# (lib/lazy.py). A set that moves time back by more than MAX_BACK_S is refused; every set is
# logged. Part of tasks/clock.py.
import json
from micropython import const

import store
from tasks.clock import DEFAULT_INTERVAL_S

MAX_BACK_S = const(300)
EARLIEST = const(1704067200)  # 2024-01-01: an RTC below this was never set


def init(self, hw, state_path):
    # Clock's state, made once at boot (its file: clock.STATE)
    port = self._port
    self._rtc = hw["rtc"]
    st = store.load(state_path, {})
    self.interval_s = st.get("interval_s", DEFAULT_INTERVAL_S)
    self._saved_t = saved = st.get("t", 0)  # the time last written to flash
    self._nv = nv = hw.get("nvram")
    if nv is not None:
        g = st.get("g", 0)
        v = nv.load("<I") if nv.seq > g else None
        if v is not None:
            saved = v[0]
        nv.seq = max(nv.seq, g)
    now = self._rtc.get()
    if now < saved:
        # Time never runs backwards across a power cut: resume from the
        # last time saved, until the head-end sets it.
        self._rtc.set(saved)
        port.log("clock: rtc %d behind saved %d; resumed from saved" % (now, saved))
    self._last = -1
    self._snap_seen = 0  # the RAM snapshot's seq at the last daily flush


def time_set(c, sender, payload):
    ref, t_new = payload
    old = c._rtc.get()
    if t_new < EARLIEST or old - t_new > MAX_BACK_S:
        c._port.log("clock: time set %d refused (now %d)" % (t_new, old))
        c._port.send(sender, "time_set_done", (ref, 6, "time moves back too far"))
        return
    c._rtc.set(t_new)
    c._last = -1
    c._save(t_new)
    c._port.log("clock: time set %d (was %d)" % (t_new, old))
    c._port.send(sender, "time_set_done", (ref, 0, json.dumps({"t": t_new, "old": old})))
