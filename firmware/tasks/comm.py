# Communication module: WAN framing only. It cuts the byte stream into frame
# lines and hands every one to the CS security module; it never interprets
# a frame, and never routes to any other task (policy.py).
from micropython import const

import wan

_NL = const(10)
_CR = const(13)
_TILDE = const(126)


class Comm:
    def __init__(self, port, hw):
        self._port = port
        self._link = hw["wan"]
        self._buf = bytearray(wan.LINE_CAP)  # preallocated: a line never grows memory
        self._chunk = bytearray(64)
        self._n = 0
        self._overflow = False
        self.frames_in = 0
        self.frames_out = 0

    def step(self):
        chunk = self._chunk
        while True:
            got = self._link.readinto(chunk)
            if not got:
                return
            for k in range(got):
                self._byte(chunk[k])

    def _byte(self, b):
        if b == _NL:
            self._line()
        elif b == _CR:
            pass
        elif self._n < len(self._buf):
            self._buf[self._n] = b
            self._n += 1
        else:
            self._overflow = True

    def _line(self):
        n, over = self._n, self._overflow
        self._n, self._overflow = 0, False
        if n == 0 or self._buf[0] != _TILDE:
            return  # not a frame: a terminal's noise, an echo
        self.frames_in += 1
        if over:
            self._port.send("cs_security", "frame_err", wan.E_TOO_BIG)
        else:
            self._port.send("cs_security", "frame_in", bytes(self._buf[:n]))

    def handle(self, sender, kind, payload):
        if kind == "frame_out":
            self._link.write(payload)
            self.frames_out += 1
