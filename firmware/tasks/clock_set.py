# The clock's authenticated time set (tasks/clock.py, TIME_SET routed here by the policy): in
# its own file so that its code is in RAM only while it runs (lib/lazy.py). A set that moves
# time back by more than MAX_BACK_S is refused; every set is logged. Part of tasks/clock.py.
import json
from micropython import const

MAX_BACK_S = const(300)
EARLIEST = const(1704067200)  # 2024-01-01: an RTC below this was never set


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
