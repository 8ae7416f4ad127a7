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
from array import array
from micropython import const

import lazy

# bound once: a pass calls them a few times per task, each a global and an attribute lookup
_ticks_us = time.ticks_us
_ticks_diff = time.ticks_diff
_ticks_add = time.ticks_add

WINDOW_US = const(1000000)  # the accounting tick
BATCH = const(4)  # messages a task handles per turn before others get theirs
# The longest idle wait: every task's own due time (and a wake stream's input) ends it sooner;
# this only bounds how long a message from core 1 or an interrupt could wait unseen.
IDLE_MAX_MS = const(100)
_IMMUTABLE = (type(None), bool, int, float, str, bytes)
# select.poll's event bits (py/stream.h MP_STREAM_POLL_*, the POSIX values on the unix port)
_POLLIN = const(0x01)
_POLL_GONE = const(0x18)  # POLLERR | POLLHUP

# RAM: a task's bookkeeping is a row of _NF ints in one flat array (self._f; the time its next
# step is due, a ticks value, in the list self._due), and its mailbox a ring of 2-entry slots
# (where the flow table holds sender and kind, payload) in one list shared by all (self._q):
# no object, dict or list per task or mailbox (docs/hardware.md, "Memory"). Row 0 is the
# kernel's own mailbox (requests from tasks: stats, log reads, seal); tasks are rows 1 and up.
_PERIOD = const(0)  # step period, us (0: the task has no step)
_RT = const(1)  # realtime: its step also runs between any two messages
_BUSY = const(2)  # us busy in the current window
_SHARE = const(3)  # us busy in the last complete window
_LATE = const(4)  # worst lateness of step() in the current window
_LATE_LAST = const(5)  # ... in the last complete window
_LATE_WORST = const(6)  # ... since boot
_HANDLED = const(7)
_ERRORS = const(8)
_OVERFLOW = const(9)  # a full mailbox was logged in this window
_QOFF = const(10)  # its mailbox: first entry in self._q
_QCAP = const(11)  # capacity, messages
_QHEAD = const(12)
_QN = const(13)  # messages waiting
_QDROP = const(14)  # messages dropped on a full mailbox
_NF = const(15)
NF = _NF  # for kernel_svc.py, which reads the rows (stats)
_KBOX = const(4)  # the kernel's own mailbox
# Row 0's fields that a mailbox does not use hold the flood limit's state (no more attributes)
_TOKENS = const(2)  # (_BUSY) records the bucket holds now
_TOKENS_AT = const(4)  # (_LATE) ticks_ms the bucket was last filled up to
_LOG_DROPPED = const(7)  # (_HANDLED) rate-limited records dropped since boot
_UNLOGGED = const(8)  # (_ERRORS) ... of them not yet counted in a log record
# (_RT) messages waiting in the tasks' mailboxes (rows 1 and up): a pass with none skips the
# walk over them, which every idle wake-up would pay for otherwise
_WAITING = const(1)
# Records that anyone on the WAN can cause (rejected, unauthenticated lines; a full mailbox):
# a token bucket, so that a flood costs a bounded number of flash writes per hour. Those over
# it are counted (stats "log_dropped") and the count is logged when a token is free again.
_FLOOD_BURST = const(512)  # records at once: the first of a flood (4 rings) are all kept
_FLOOD_PER_HOUR = const(16)  # then this many an hour (flash wear: docs/hardware.md)
_MS_PER_TOKEN = const(225000)  # 3600000 // _FLOOD_PER_HOUR


def frozen(payload, depth=0):
    # What a message may carry: nothing its sender could change after the send.
    t = type(payload)
    if t in _IMMUTABLE:
        return True
    if t is memoryview:
        # A read-only view only: one into bytes (a WAN payload in its frame, routed without a
        # copy). A view into a bytearray is writable, and its sender could change it.
        try:
            payload[0:0] = b""
        except TypeError:
            return True
        return False
    if t is tuple and depth < 4:
        for x in payload:
            if not frozen(x, depth + 1):
                return False
        return True
    return False


class Port:
    # What a task holds: its name (for reading only), send() and log(). Both go through one
    # closure over the task's name that the kernel made (kernel.add), so whatever the task
    # does to its Port, it sends and logs as itself.
    def __init__(self, name, fn):
        self.name = name
        self._fn = fn

    def send(self, to, kind, payload=None):
        return self._fn(to, kind, payload)

    def log(self, text):
        self._fn(None, None, text)

    def log_flood(self, text):
        """log(), for a record that input anyone can send caused: rate-limited (kernel.py)."""
        self._fn(None, 1, text)


class Kernel:
    def __init__(self, flows, log_of, logs, now_s, sleep_ms=time.sleep_ms, size=(0, 0)):
        # size: (tasks, messages in all their mailboxes) that add() will be asked for. Made
        # once, at boot: that code is in RAM only while it runs (boot_init.py)
        lazy.call("boot_init", "kernel", self, flows, log_of, logs, now_s, sleep_ms, size)
        self._f[_QCAP] = _KBOX
        self._q = [None] * (2 * (_KBOX + size[1]))
        self._qend = 2 * _KBOX  # entries of self._q in use
        self._f[_TOKENS] = _FLOOD_BURST
        self._f[_TOKENS_AT] = time.ticks_ms()
        # the rows with a step, and those of them realtime: a pass walks only these
        self._stepped = ()
        self._rt = ()

    # -- set-up ---------------------------------------------------------------
    def add(self, name, factory, hw=None, capacity=8, period_ms=0, realtime=False):
        """Create task `name` as factory(port, hw) with a mailbox of `capacity`;
        if period_ms, its step() runs that often (realtime: between messages too)."""
        k = self

        def port(to, kind, payload):
            if to is None:
                k.log(name, payload, kind)
                return None
            return k._route(name, to, kind, payload)

        obj = factory(Port(name, port), hw or {})
        i = len(self._names)
        f = self._f
        if len(f) < _NF * (i + 1):
            f.extend(array("i", bytes(4 * _NF)))
        b = i * _NF
        f[b + _PERIOD] = period_ms * 1000
        if len(self._due) <= i:
            self._due.append(0)
        self._due[i] = time.ticks_us()
        f[b + _RT] = 1 if realtime else 0
        f[b + _QOFF] = self._qend
        f[b + _QCAP] = capacity
        self._qend += 2 * capacity
        if len(self._q) < self._qend:
            self._q.extend([None] * (self._qend - len(self._q)))
        self._names.append(name)
        self._objs.append(obj)
        self._steps.append(getattr(obj, "step", None) if period_ms else None)
        if self._steps[i] is not None:
            self._stepped += (i,)
            if realtime:
                self._rt += (i,)
        self._by_name[name] = i
        w = getattr(obj, "wake", None)
        if w is not None:
            if self._wake is None:
                import select  # here: a build without select (the emulated boards) runs too

                self._wake = select.poll()
            self._wake.register(w, _POLLIN)
            self._wake_by.append((w, i))
        return obj

    # -- mailboxes: fixed-capacity rings, preallocated; a put (in _route) never allocates or
    # blocks ------------------------------------------------------------------------------
    def _take(self, i):
        # the oldest message of mailbox i (it must hold one) -> (sender, kind, payload)
        f = self._f
        b = i * _NF
        h = f[b + _QHEAD]
        j = f[b + _QOFF] + 2 * h
        q = self._q
        code = q[j]
        fl = self._flows
        msg = (fl[code >> 16], fl[code & 0xFFFF], q[j + 1])
        q[j] = q[j + 1] = None
        f[b + _QHEAD] = (h + 1) % f[b + _QCAP]
        f[b + _QN] -= 1
        if i:
            f[_WAITING] -= 1
        return msg

    # -- routing -----------------------------------------------------------------
    def _route(self, sender, receiver, kind, payload):
        fl = self._flows
        code = -1  # where the table holds the sender (<< 16) and the kind
        j = 0
        n = len(fl)
        while j < n:  # at a sender
            mine = fl[j] == sender
            s = j
            j += 1
            while fl[j] is not None:  # at a receiver of it
                if mine and fl[j] == receiver:
                    j += 1
                    while fl[j] is not None:
                        if fl[j] == kind:
                            code = s << 16 | j
                            break
                        j += 1
                    break
                j += 1
                while fl[j] is not None:  # its kinds
                    j += 1
                j += 1
            if mine:
                break
            j += 1
        if code < 0:
            self.refused += 1
            self.log("kernel", "policy refused %s->%s %s" % (sender, receiver, kind))
            return False
        if not frozen(payload):
            self.refused += 1
            self.log("kernel", "refused mutable payload %s->%s %s" % (sender, receiver, kind))
            return False
        i = self._by_name.get(receiver)
        if i is None:
            self.log("kernel", "no task %s for %s from %s" % (receiver, kind, sender))
            return False
        # into mailbox i's ring: code is where the flow table holds the sender and the kind
        f = self._f
        b = i * _NF
        n = f[b + _QN]
        cap = f[b + _QCAP]
        if n < cap:
            j = f[b + _QOFF] + 2 * ((f[b + _QHEAD] + n) % cap)
            q = self._q
            q[j] = code
            q[j + 1] = payload
            f[b + _QN] = n + 1
            if i:
                f[_WAITING] += 1
            return True
        f[b + _QDROP] += 1
        if i and not f[b + _OVERFLOW]:
            # Logged once per window, so that a flood cannot flood the log too.
            f[b + _OVERFLOW] = 1
            self.log("kernel", "mailbox %s full: dropped %s from %s" % (receiver, kind, sender),
                     True)
        return False

    def _token(self):
        # True if a rate-limited record may be written now (takes the token)
        f = self._f
        now = time.ticks_ms()
        dt = time.ticks_diff(now, f[_TOKENS_AT])
        if dt < 0 or dt >= _FLOOD_BURST * _MS_PER_TOKEN:
            # (a ticks wrap after days without a flood: the bucket is full by then anyway)
            f[_TOKENS], f[_TOKENS_AT] = _FLOOD_BURST, now
        elif dt >= _MS_PER_TOKEN:
            n = dt // _MS_PER_TOKEN
            f[_TOKENS] = min(_FLOOD_BURST, f[_TOKENS] + n)
            f[_TOKENS_AT] = time.ticks_add(f[_TOKENS_AT], n * _MS_PER_TOKEN)
        if f[_TOKENS] <= 0:
            return False
        f[_TOKENS] -= 1
        return True

    def log(self, task, text, limited=None):
        ring = self._logs.get(self._log_of.get(task, "security"))
        if ring is None:
            return
        if limited:
            f = self._f
            if f[_UNLOGGED] and self._token():
                self._append(ring, "log: %d records dropped (rate limit)" % f[_UNLOGGED])
                f[_UNLOGGED] = 0
            if not self._token():
                f[_LOG_DROPPED] += 1
                f[_UNLOGGED] += 1
                return
        self._append(ring, text)

    def _append(self, ring, text):
        data = struct.pack(">I", self._now_s() & 0xFFFFFFFF) + text.encode()
        try:
            ring.append(data[:ring.max_payload])
        except OSError:
            pass  # a full or failing flash must not stop the meter

    def read_log(self, name, from_seq=0, max_n=16):
        """[(seq, time s, text)] of log `name` from from_seq (None: no such log); for head-end
        requests, its code in RAM only while it runs (kernel_svc.py)."""
        return lazy.call("kernel_svc", "read_log", self, name, from_seq, max_n)

    # -- scheduling ------------------------------------------------------------
    def _run_step(self, i, now):
        # step i, due (run_once checked): its lateness, its time, its next due time
        f = self._f
        b = i * _NF
        late = _ticks_diff(now, self._due[i])
        if late > f[b + _LATE]:
            f[b + _LATE] = late
        t0 = _ticks_us()
        rest = None
        try:
            rest = self._steps[i]()
        except Exception as e:  # noqa: BLE001 - one task's fault must not stop the meter
            self._fault(i, e)
        t1 = _ticks_us()
        f[b + _BUSY] += _ticks_diff(t1, t0)
        if rest:
            # The step had nothing to do (it returned ms to rest): due then, or as soon as a
            # message is handled for it (run_once) or its wake stream has input (_wait), so that
            # an idle task costs no wake-ups every period.
            self._due[i] = _ticks_add(t1, rest * 1000)
            return
        # Next due on the period grid; missed slots are skipped rather than bunched, and the
        # grid kept: steps whose periods divide one another stay due in the same pass (one
        # wake-up for all of them) even after a late one
        p = f[b + _PERIOD]
        due = _ticks_add(self._due[i], p)
        late = _ticks_diff(t1, due)
        if late > 0:
            due = _ticks_add(due, (late // p + 1) * p)
        self._due[i] = due

    def _fault(self, i, e):
        self._f[i * _NF + _ERRORS] += 1
        name = self._names[i]
        try:
            self.log(name, "task %s error: %s %s" % (name, type(e).__name__, e))
        except MemoryError:
            # No heap to word it (the fault most likely a MemoryError too, on a full board):
            # said short, or only counted (STATS errors); a fault must not stop the meter
            try:
                self.log(name, "task error: no memory to say which")
            except MemoryError:
                pass

    def run_once(self):
        now = _ticks_us()
        due = self._due
        for i in self._stepped:
            if _ticks_diff(now, due[i]) >= 0:
                self._run_step(i, now)
        f = self._f
        n = len(self._names)
        if f[_WAITING]:
            self._deliver(n)
        while f[_QN]:
            sender, kind, payload = self._take(0)
            try:
                self._own(sender, kind, payload)
            except Exception as e:  # noqa: BLE001 - e.g. no heap for kernel_svc's code
                # answered FAILED (7), as a task's refusal, and the meter runs on
                self.log("kernel", "kernel %s error: %s %s" % (kind, type(e).__name__, e))
                self._route("kernel", sender, "log_data" if kind == "log_read" else kind + "_data",
                            (payload[0], 7, "out of memory" if type(e) is MemoryError
                             else "failed"))
        # the accounting window: each second, the busy time and lateness of the one that ended
        now = _ticks_us()
        length = _ticks_diff(now, self._win_start)
        if length >= WINDOW_US:
            self._last_window = (length, self._win_sleep)
            for i in range(1, n):
                b = i * _NF
                f[b + _SHARE] = f[b + _BUSY]
                f[b + _BUSY] = 0
                f[b + _LATE_LAST] = f[b + _LATE]
                f[b + _LATE] = 0
                if f[b + _LATE_LAST] > f[b + _LATE_WORST]:
                    f[b + _LATE_WORST] = f[b + _LATE_LAST]
                f[b + _OVERFLOW] = 0
            self._win_start, self._win_sleep = now, 0
            # Once a second, collect, rather than only when the heap is full: run-time garbage
            # then never spreads over the free end of the heap, so the few small objects that
            # outlive it stay low down and the large free blocks (WAN frames, a group set-up)
            # stay whole (docs/hardware.md, "Memory"). The time counts as the kernel's (busy,
            # no task's).
            gc.collect()
            now = _ticks_us()
        if f[_WAITING]:
            # a mailbox its turn left messages in (BATCH), or a message sent in this pass to a
            # task whose turn had passed (an answer back to cs_security): no idle wait before
            # it is handled
            return
        # Idle: sleep until the next step is due (at most IDLE_MAX_MS), rounded up to whole
        # ms: a step runs at most 1 ms late, and the kernel never spins through the rest of a
        # wait
        wait = IDLE_MAX_MS * 1000
        for i in self._stepped:
            d = _ticks_diff(due[i], now)
            if d < wait:
                wait = d
        if wait > 0:
            if self._wake is None:
                self._sleep_ms((wait + 999) // 1000)
            else:
                self._wait((wait + 999) // 1000)
            self._win_sleep += _ticks_diff(_ticks_us(), now)

    def _deliver(self, n):
        # each task's mailbox in turn, BATCH messages at most, the realtime steps between any
        # two messages (sampling is never starved by a busy mailbox)
        f = self._f
        steps = self._steps
        rts = self._rt
        for i in range(1, n):
            b = i * _NF
            k = 0
            while f[b + _QN] and k < BATCH:
                sender, kind, payload = self._take(i)
                t0 = _ticks_us()
                try:
                    self._objs[i].handle(sender, kind, payload)
                except Exception as e:  # noqa: BLE001
                    self._fault(i, e)
                t1 = _ticks_us()
                f[b + _BUSY] += _ticks_diff(t1, t0)
                f[b + _HANDLED] += 1
                k += 1
                if steps[i] is not None and _ticks_diff(self._due[i], t1) > f[b + _PERIOD]:
                    # a resting step (no due this far off otherwise): the message may be work
                    self._due[i] = t1
                t0 = _ticks_us()
                for r in rts:
                    if _ticks_diff(t0, self._due[r]) >= 0:
                        self._run_step(r, t0)

    def _wait(self, ms):
        # The idle wait, which input on a wake stream ends: its task's step is due now. On a
        # board poll() waits as sleep_ms() does (WFE until an interrupt); on the unix port it
        # is one poll(2) that a SIGINT (Ctrl-C) ends (extmod/modselect.c, v1.28.0).
        gone = None
        for s, ev in self._wake.ipoll(ms):
            for w, i in self._wake_by:
                if w is s:
                    if ev & _POLLIN:
                        self._due[i] = _ticks_us()
                    if ev & _POLL_GONE:
                        gone = w  # a closed stream: waking on it would spin
        if gone is not None:
            self._wake.unregister(gone)

    def run(self, duration_ms=None):
        # The schedule starts with the loop: the time the build took after a task was added
        # (imports, the other tasks' making) is no task's lateness.
        now = time.ticks_us()
        for i in range(len(self._due)):
            self._due[i] = now
        self._win_start = now
        start = time.ticks_ms()
        while duration_ms is None or time.ticks_diff(time.ticks_ms(), start) < duration_ms:
            self.run_once()

    def stats(self):
        """The last complete window's CPU shares, lateness and counts (kernel_svc.py)."""
        return lazy.call("kernel_svc", "stats", self)

    # -- the kernel's own services (policy rows with receiver "kernel") --------
    def _own(self, sender, kind, payload):
        # stats, log reads, seal: rare head-end requests, their code in RAM only while one runs
        # (kernel_svc.py)
        lazy.call("kernel_svc", "own", self, sender, kind, payload)
