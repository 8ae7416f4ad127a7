# select for the emulated boards, which have no extmod (C on a Pico, extmod/modselect.c): the
# poll object the kernel's idle wait uses (kernel.py _wait) for the WAN's input, so that comm
# rests until a frame comes, as on a Pico, instead of polling every period. A registered stream
# says when it will have input (ready_ms(): 0 now, None never); ipoll(ms) sleeps until then or
# for ms (the port's time.sleep_ms, a WFI on the M0+ board) and yields the ready ones. Its time
# is the kernel's idle wait, as the C poll's is on a Pico.
import time

POLLIN = 1
POLLOUT = 4
POLLERR = 8
POLLHUP = 16


class _Poll:
    def __init__(self):
        self._s = []

    def register(self, s, ev=POLLIN | POLLOUT):
        self.unregister(s)
        self._s.append((s, ev))

    def unregister(self, s):
        self._s = [x for x in self._s if x[0] is not s]

    def modify(self, s, ev):
        self.register(s, ev)

    def poll(self, ms=-1):
        return list(self.ipoll(ms))

    def ipoll(self, ms=-1, flags=0):
        wait = ms
        for s, ev in self._s:
            r = s.ready_ms() if ev & POLLIN else None
            if r is not None and (wait < 0 or r < wait):
                wait = r
        if wait > 0:
            time.sleep_ms(wait)
        out = []
        for s, ev in self._s:
            if ev & POLLIN and s.ready_ms() == 0:
                out.append((s, POLLIN))
        return out


def poll():
    return _Poll()
