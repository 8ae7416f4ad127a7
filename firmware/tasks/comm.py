# Communication module: WAN framing only. It cuts the byte stream into frame
# lines, turns each into its frame (the escapes undone in place, in the line's own buffer)
# and hands every one to the CS security module; it never interprets a frame, and never
# routes to any other task (policy.py).
import time
from micropython import const

import seal
import wan

_NL = const(10)
_TILDE = const(126)
_CTRL_A = const(1)
_CTRL_C = const(3)
_CTRL_E = const(5)
_REST_MS = const(1000)
# A Ctrl-C reaches the firmware as a byte while the interrupt character is off, i.e. on a
# sealed meter (lib/seal.py; and in a race at boot, hence the check): whoever sent it, or
# the Ctrl-A that asks for the raw REPL (mpremote, meterctl flash), is told why the REPL does
# not come. At most once a second for each, so that a flood is no flood of text; Ctrl-A has
# its own turn because clients drain their input between the two.
SEALED_NOTICE = (b"\r\nmeter sealed: Ctrl-C is off and the REPL is closed; unseal with "
                 b"`meterctl unseal --port PORT`, or on site: cover open and service jumper "
                 b"fitted at power-up\r\n")


class Comm:
    def __init__(self, port, hw):
        self._port = port
        self._link = hw["wan"]
        # the kernel makes step() due as soon as this has input (None: every period only)
        self.wake = getattr(self._link, "pollable", None)
        # preallocated: a line never grows memory; + 1 for a terminal's CR after a full line
        self._buf = bytearray(wan.LINE_CAP + 1)
        self._mv = memoryview(self._buf)
        self._chunk = bytearray(64)
        self._n = 0
        self._overflow = False
        self.frames_in = 0
        self.frames_out = 0
        self._notice_at = [None, None]  # ticks_ms of the last sealed notice: Ctrl-C, Ctrl-A

    def step(self):
        chunk = self._chunk
        while True:
            got = self._link.readinto(chunk)
            if not got:
                # nothing waiting: with a wake stream the kernel runs the step when input comes,
                # so it rests (kernel.py) rather than polling every period
                return _REST_MS if self.wake is not None else None
            for k in range(got):
                self._byte(chunk[k])

    def _byte(self, b):
        if b == _NL:
            self._line()
        elif _CTRL_A <= b <= _CTRL_E:
            # A frame line never holds Ctrl-A..Ctrl-E raw (they travel escaped, wan.py): what
            # came before one is not a frame. Every other byte, CR included, is the line's: a
            # CR inside a line makes it MALFORMED (wan.unescape_into), one at its end is a
            # terminal's line end.
            self._n, self._overflow = 0, False
            if b == _CTRL_C or b == _CTRL_A:
                i = 1 if b == _CTRL_A else 0
                now = time.ticks_ms()
                last = self._notice_at[i]
                if (last is None or time.ticks_diff(now, last) >= 1000) and seal.is_sealed():
                    self._notice_at[i] = now
                    self._link.write(SEALED_NOTICE)
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
            return
        # The frame replaces its line in the buffer (unescaping only shrinks): the copy sent
        # is the path's only frame-sized block before open_frame's payload, where a line's
        # copy and then the frame's took two (a Pyboard's heap, fragmented, had 15 KB free
        # but not 1 KB in one piece: docs/hardware.md "Memory").
        buf = self._buf
        try:
            start, end = wan.line_span(buf, n)
            n = wan.unescape_into(buf, start, end, buf)
        except wan.WanError as e:
            # unauthenticated, so cs_security answers nothing: it logs the code
            self._port.send("cs_security", "frame_err", e.code)
            return
        self._port.send("cs_security", "frame_in", bytes(self._mv[:n]))  # one copy

    def handle(self, sender, kind, payload):
        if kind == "frame_out":
            # the frame's line, written in runs (wan.write_line): no line-sized buffer
            wan.write_line(payload, self._link.write)
            self.frames_out += 1
