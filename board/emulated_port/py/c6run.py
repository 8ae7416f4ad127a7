# The C6 run's driver on an emulated board (host_tools/emu/c6.py sends `c6run.setup(...)` and
# `c6run.run(...)` over the raw REPL): the LoPA set-up through the DC security task's own
# request handlers, then the meter as meter.py builds it, its kernel run window by window.
import gc
import time

import board


class _Port:
    # the set-up's port: keeps the answers, drops the log lines
    def __init__(self):
        self.out = []

    def send(self, to, kind, payload):
        self.out.append(payload)

    def log(self, text):
        pass

    log_flood = log


def setup(me, keygen, begin, chunks, commit):
    # KEYGEN, GROUP_BEGIN, GROUP_KEYS (the meter's own record, then the host's members),
    # GROUP_COMMIT, as cs_security would hand them over; the key pair and the group are
    # persisted in /data as on a meter. -> (public key, answer codes)
    import os

    from tasks import dc_security

    dc = dc_security.DcSecurity(_Port(), {"entropy": os.urandom})
    codes = []

    def ask(kind, body):
        dc.handle("cs_security", kind, (1, me, body))
        while dc._setup is not None and dc._setup.work:
            dc.step()
        a = dc._port.out.pop()
        codes.append(a[1])
        return a

    pk = bytes(ask("keygen", keygen)[2][:32])
    ask("group_begin", begin)
    ask("group_keys", chunks[0] + me.to_bytes(8, "big") + pk)
    for c in chunks[1:]:
        ask("group_keys", c)
    ask("group_commit", commit)
    return pk, codes


def run(seconds, t0):
    # prints each window (length us, sleep us, ADC model us, each task's busy us) on a line
    # "W ..."; -> the tasks' names, errors and handled counts, what the HAN and the WAN
    # carried, the WAN's answers
    board.rtc.set(t0)
    import meter

    try:
        k = meter.start(False)
    except MemoryError as e:
        import sys

        sys.print_exception(e)
        raise
    import sys

    sys.modules.pop("meter", None)
    del meter
    gc.collect()
    import kernel

    nf = kernel.NF  # a task's row in k._f; the fields below as kernel_svc.py reads them
    n = len(k._names)
    from array import array

    rows = array("i", bytes(4 * (3 + n) * (seconds + 2)))
    w = 0
    adc = board.adc
    cost0 = adc.cost_us
    # kernel.run's start, then its loop, with each closed window copied out (cheap: its
    # time is the next window's busy time, as the kernel's own once-a-second work is)
    now = time.ticks_us()
    # the modelled ADC starts with the loop (the build's time is no gap in its stream)
    adc._last, adc._due_us = now, adc._next * 1000000
    for i in range(len(k._due)):
        k._due[i] = now
    k._win_start = now
    last = k._last_window
    start = time.ticks_ms()
    f = k._f
    ms = seconds * 1000 + 2000  # windows end a little after their second (a step running)
    passes = 0
    while time.ticks_diff(time.ticks_ms(), start) < ms and w < seconds:
        passes += 1
        try:
            k.run_once()
        except MemoryError as e:  # the kernel's own (a task's is caught and counted)
            import sys

            print("window %d, heap free %d" % (w, gc.mem_free()))
            sys.print_exception(e)
            raise
        lw = k._last_window
        if lw is not last:
            last = lw
            b = w * (3 + n)
            rows[b] = lw[0]
            rows[b + 1] = lw[1]
            c = adc.cost_us
            rows[b + 2] = c - cost0
            cost0 = c
            for i in range(1, n):
                rows[b + 3 + i] = f[i * nf + 3]  # _SHARE
            w += 1
    wan = board.wan()
    han = board.han_tx()
    errors = tuple(f[i * nf + 8] for i in range(n))
    handled = tuple(f[i * nf + 7] for i in range(n))
    t = time.ticks_us()
    gc.collect()  # what the kernel's once-a-second collection costs with the meter's heap
    gc_us = time.ticks_diff(time.ticks_us(), t)
    free = gc.mem_free()
    # the windows one line each: one repr of them all needs a block of several KB, which a
    # fragmented heap may not have after a long run
    m = 3 + n
    for j in range(w):
        print("W", " ".join(str(rows[j * m + i]) for i in range(m)))
    return (passes, gc_us, w, tuple(k._names), errors, handled,
            (han.writes, han.bytes), (wan.bytes_in, wan.bytes_out),
            (bytes(wan.out[:wan.kept]),), (adc.gaps, adc.dropped), free)
