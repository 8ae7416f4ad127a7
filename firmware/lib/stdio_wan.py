# The WAN link over the board's USB serial (stdin/stdout): the default, so
# that a bare Pico on USB works. Non-blocking: readinto() returns what has
# arrived (0 if nothing). Frames never contain Ctrl-A..Ctrl-E, and Ctrl-C
# still interrupts, so mpremote can always break in - unless the meter is
# sealed (lib/seal.py): then Ctrl-C is a byte like any other.
import select
import sys


class StdioWan:
    def __init__(self):
        self._in = sys.stdin.buffer
        self._out = sys.stdout.buffer
        self._poll = select.poll()
        self._poll.register(sys.stdin, select.POLLIN)
        # what the kernel's idle wait polls, so that a frame's arrival ends it (kernel.py)
        self.pollable = sys.stdin

    def readinto(self, buf):
        n = 0
        poll = self._poll.poll
        read = self._in.read
        while n < len(buf) and poll(0):
            b = read(1)
            if not b:
                break
            buf[n] = b[0]
            n += 1
        return n

    def write(self, data):
        self._out.write(data)
