# The separation kernel: a router that enforces the flow policy, bounded
# mailboxes, and a cooperative scheduler that measures each task's share of
# every 1-s tick. It knows nothing of meters; policy.py says what may flow.
#
# Isolation on a microcontroller without an MMU is by capability: a task gets
# a Port and the board objects policy.HARDWARE grants it, nothing else. The
# Port's functions are closures over the task's name, so a task cannot send
# as another task, and it holds no reference to the kernel or to other tasks
# (MicroPython functions expose no __closure__ to reach into). Payloads must
# be immutable (None, numbers, str, bytes, tuples of these), so no message
# can smuggle shared mutable state between tasks.
import gc
import struct
import time
from micropython import const

from ringlog import Ring

WINDOW_US = const(1000000)  # the accounting tick
BATCH = const(4)  # messages a task handles per turn before others get theirs
IDLE_MAX_MS = const(10)
_IMMUTABLE = (type(None), bool, int, float, str, bytes)


def frozen(payload, depth=0):
    t = type(payload)
    if t in _IMMUTABLE:
        return True
    if t is tuple and depth < 4:
        for x in payload:
            if not frozen(x, depth + 1):
                return False
        return True
    return False


class Mailbox:
    # A fixed-capacity ring, preallocated: put() never allocates or blocks.
    def __init__(self, capacity):
        self.cap = capacity
        self._s = [None] * capacity
        self._k = [None] * capacity
        self._p = [None] * capacity
        self._head = 0
        self.n = 0
        self.dropped = 0

    def put(self, sender, kind, payload):
        if self.n >= self.cap:
            self.dropped += 1
            return False
        i = (self._head + self.n) % self.cap
        self._s[i], self._k[i], self._p[i] = sender, kind, payload
        self.n += 1
        return True

    def get(self):
        i = self._head
        msg = (self._s[i], self._k[i], self._p[i])
        self._s[i] = self._k[i] = self._p[i] = None
        self._head = (i + 1) % self.cap
        self.n -= 1
        return msg


class Port:
    # What a task holds: its name (for reading only), send() and log().
    def __init__(self, name, send, log):
        self.name = name
        self.send = send
        self.log = log


class _Task:
    def __init__(self, name, obj, box, period_us, realtime):
        self.name = name
        self.obj = obj
        self.box = box
        self.period_us = period_us
        self.realtime = realtime
        self.step = getattr(obj, "step", None) if period_us else None
        self.due = time.ticks_us()
        self.busy_us = 0  # in the current window
        self.share_us = 0  # in the last complete window
        self.late_us = 0  # worst lateness of step() in the current window
        self.late_last = 0
        self.late_worst = 0  # since boot
        self.handled = 0
        self.errors = 0
        self.overflow_logged = False


class Kernel:
    def __init__(self, flows, log_of, logs, now_s, sleep_ms=time.sleep_ms):
        # Private copies: changing policy.py's tables at run time grants nothing.
        # Nested by sender then receiver: a lookup allocates no key tuple.
        self._flows = {}
        for sender, receiver in flows:
            self._flows.setdefault(sender, {})[receiver] = tuple(flows[(sender, receiver)])
        self._log_of = dict(log_of)
        self._now_s = now_s
        self._sleep_ms = sleep_ms
        self._logs = {}
        for name in logs:
            path, cap, rec = logs[name]
            self._logs[name] = Ring(path, cap, rec)
        self._tasks = []
        self._by_name = {}
        self._box = Mailbox(4)  # the kernel's own requests (stats, log reads)
        self.refused = 0
        self._win_start = time.ticks_us()
        self._win_sleep = 0
        self._last_window = (0, 0)  # (length us, sleep us)

    # -- set-up ---------------------------------------------------------------
    def add(self, name, factory, hw=None, capacity=8, period_ms=0, realtime=False):
        """Create task `name` as factory(port, hw) with a mailbox of `capacity`;
        if period_ms, its step() runs that often (realtime: between messages too)."""
        route, log = self._route, self.log

        def send(to, kind, payload=None):
            return route(name, to, kind, payload)

        def task_log(text):
            log(name, text)

        obj = factory(Port(name, send, task_log), hw or {})
        t = _Task(name, obj, Mailbox(capacity), period_ms * 1000, realtime)
        self._tasks.append(t)
        self._by_name[name] = t
        return obj

    # -- routing -----------------------------------------------------------------
    def _route(self, sender, receiver, kind, payload):
        kinds = self._flows.get(sender)
        if kinds is not None:
            kinds = kinds.get(receiver)
        if kinds is None or kind not in kinds:
            self.refused += 1
            self.log("kernel", "policy refused %s->%s %s" % (sender, receiver, kind))
            return False
        if not frozen(payload):
            self.refused += 1
            self.log("kernel", "refused mutable payload %s->%s %s" % (sender, receiver, kind))
            return False
        if receiver == "kernel":
            box = self._box
        else:
            t = self._by_name.get(receiver)
            if t is None:
                self.log("kernel", "no task %s for %s from %s" % (receiver, kind, sender))
                return False
            box = t.box
        if box.put(sender, kind, payload):
            return True
        if receiver != "kernel" and not t.overflow_logged:
            # Logged once per window, so that a flood cannot flood the log too.
            t.overflow_logged = True
            self.log("kernel", "mailbox %s full: dropped %s from %s" % (receiver, kind, sender))
        return False

    def log(self, task, text):
        ring = self._logs.get(self._log_of.get(task, "security"))
        if ring is None:
            return
        data = struct.pack(">I", self._now_s() & 0xFFFFFFFF) + text.encode()
        try:
            ring.append(data[:ring.max_payload])
        except OSError:
            pass  # a full or failing flash must not stop the meter

    def read_log(self, name, from_seq=0, max_n=16):
        ring = self._logs.get(name)
        if ring is None:
            return None
        out = []
        for seq, data in ring.records(from_seq, max_n):
            out.append((seq, struct.unpack(">I", data[:4])[0], data[4:].decode()))
        return out

    # -- scheduling ------------------------------------------------------------
    def _run_step(self, t, now):
        late = time.ticks_diff(now, t.due)
        if late < 0:
            return
        if late > t.late_us:
            t.late_us = late
        t0 = time.ticks_us()
        try:
            t.step()
        except Exception as e:  # noqa: BLE001 - one task's fault must not stop the meter
            self._fault(t, e)
        t1 = time.ticks_us()
        t.busy_us += time.ticks_diff(t1, t0)
        # Next due on the period grid; skip missed slots rather than bunching.
        t.due = time.ticks_add(t.due, t.period_us)
        if time.ticks_diff(t1, t.due) > 0:
            t.due = time.ticks_add(t1, t.period_us)

    def _run_realtime(self):
        now = time.ticks_us()
        for t in self._tasks:
            if t.realtime and t.step:
                self._run_step(t, now)

    def _fault(self, t, e):
        t.errors += 1
        self.log(t.name, "task %s error: %s %s" % (t.name, type(e).__name__, e))

    def run_once(self):
        now = time.ticks_us()
        for t in self._tasks:
            if t.step:
                self._run_step(t, now)
        pending = False
        for t in self._tasks:
            n = 0
            while t.box.n and n < BATCH:
                sender, kind, payload = t.box.get()
                t0 = time.ticks_us()
                try:
                    t.obj.handle(sender, kind, payload)
                except Exception as e:  # noqa: BLE001
                    self._fault(t, e)
                t.busy_us += time.ticks_diff(time.ticks_us(), t0)
                t.handled += 1
                n += 1
                self._run_realtime()  # sampling is never starved by a busy mailbox
            pending = pending or t.box.n > 0
        while self._box.n:
            self._own(*self._box.get())
        self._window()
        if not pending:
            self._idle()

    def _idle(self):
        now = time.ticks_us()
        wait = IDLE_MAX_MS * 1000
        for t in self._tasks:
            if t.step:
                d = time.ticks_diff(t.due, now)
                if d < wait:
                    wait = d
        if wait > 0:
            self._sleep_ms((wait + 999) // 1000)
            self._win_sleep += time.ticks_diff(time.ticks_us(), now)

    def _window(self):
        now = time.ticks_us()
        length = time.ticks_diff(now, self._win_start)
        if length < WINDOW_US:
            return
        self._last_window = (length, self._win_sleep)
        for t in self._tasks:
            t.share_us, t.busy_us = t.busy_us, 0
            t.late_last, t.late_us = t.late_us, 0
            if t.late_last > t.late_worst:
                t.late_worst = t.late_last
            t.overflow_logged = False
        self._win_start, self._win_sleep = now, 0
        # Once a second, collect, rather than only when the heap is full: run-time garbage then
        # never spreads over the free end of the heap, so the few small objects that outlive
        # it stay low down and the large free blocks (WAN frames, a group set-up) stay whole
        # (docs/hardware.md, "Memory"). The time counts as the kernel's (busy, no task's).
        gc.collect()

    def run(self, duration_ms=None):
        start = time.ticks_ms()
        while duration_ms is None or time.ticks_diff(time.ticks_ms(), start) < duration_ms:
            self.run_once()

    # -- the kernel's own services (policy rows with receiver "kernel") --------
    def stats(self):
        length, sleep = self._last_window
        tasks = {}
        for t in self._tasks:
            tasks[t.name] = {
                "cpu_pct": round(t.share_us * 100 / length, 2) if length else 0,
                "late_us": t.late_last, "late_worst_us": t.late_worst,
                "handled": t.handled, "dropped": t.box.dropped, "errors": t.errors,
            }
        busy = round((length - sleep) * 100 / length, 2) if length else 0
        return {"window_us": length, "cpu_pct": busy, "refused": self.refused, "tasks": tasks}

    def _own(self, sender, kind, payload):
        import json

        ref = payload[0]
        if kind == "stats":
            # Compact, and a task's "dropped"/"errors" only when not 0: with every HASM task
            # the answer must stay under the WAN payload cap (1024 bytes).
            st = self.stats()
            for v in st["tasks"].values():
                for f in ("dropped", "errors"):
                    if not v[f]:
                        del v[f]
            body = json.dumps(st, separators=(",", ":"))
            self._route("kernel", sender, "stats_data", (ref, 0, body))
        elif kind == "log_read":
            _, name, from_seq, max_n = payload
            recs = self.read_log(name, from_seq, max_n)
            if recs is None:
                self._route("kernel", sender, "log_data", (ref, 6, "unknown log"))
                return
            nxt = recs[-1][0] + 1 if recs else from_seq
            body = json.dumps({"log": name, "records": recs, "next": nxt})
            self._route("kernel", sender, "log_data", (ref, 0, body))
        elif kind == "seal":
            # The console (the REPL over the WAN's USB serial) is the platform's door around
            # every task: only the kernel opens or closes it (lib/seal.py).
            import seal

            on = bool(payload[1])
            try:
                seal.set_sealed(on)
            except OSError as e:  # the flash refused the write: nothing changed
                self.log("kernel", "seal: failed %s" % e)
                self._route("kernel", sender, "seal_data", (ref, 7, "seal not persisted"))
                return
            self.log("kernel", "seal: %s (WAN command)" % ("sealed" if on else "unsealed"))
            self._route("kernel", sender, "seal_data", (ref, 0, json.dumps({"sealed": on})))
