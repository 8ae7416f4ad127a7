# Records in battery-backed RAM (board.nvram: an STM32's backup SRAM), for state that
# changes often (the clock's last time, the credit balance and tariff registers): kept there
# at no flash cost and written to flash only in batches (docs/ARCHITECTURE.md, "Persistence").
#
# A Record owns one window of the RAM (off, size), given to one task by meter.py from
# policy.NVRAM. The window holds two slots; each save goes to the slot that does not hold the
# newest valid copy, so a power cut in the middle of a save (the CPU stops half-way through
# its stores; the RAM keeps what it got) leaves the other slot's copy readable. Slot layout:
#   tag (2 bytes, the owner's: a window laid out for another record never verifies) | seq u32 |
#   len u16 | payload | sha256(header + payload)[:8]
# load() returns the payload of the valid slot with the higher seq, else None (fresh RAM, a
# battery that ran flat, a torn write in both: never, as only one slot is written at a time).
# Runs unchanged on CPython and MicroPython.
import hashlib
import struct

_HDR = 8  # tag 2 + seq 4 + len 2
_SUM = 8
OVERHEAD = _HDR + _SUM


class Window:
    # A task's part of the RAM: off .. off + size, nothing else (its capability).
    def __init__(self, nv, off, size):
        if off < 0 or size < 0 or off + size > nv.size:
            raise ValueError("nvram window out of range")
        self._nv = nv
        self._off = off
        self.size = size

    def read(self, off, n):
        if off < 0 or n < 0 or off + n > self.size:
            raise ValueError("nvram: out of window")
        return self._nv.read(self._off + off, n)

    def write(self, off, data):
        if off < 0 or off + len(data) > self.size:
            raise ValueError("nvram: out of window")
        self._nv.write(self._off + off, data)


class Record:
    def __init__(self, window, tag):
        if len(tag) != 2:
            raise ValueError("nvram tag: 2 bytes")
        self._w = window
        self._tag = bytes(tag)
        self._slot = window.size // 2
        self.max_payload = self._slot - OVERHEAD
        if self.max_payload < 1:
            raise ValueError("nvram window too small")
        self._buf = bytearray(self._slot)  # one buffer for every save: nothing allocated
        self.seq = 0
        self._next = 0  # the slot the next save writes
        self._scan()

    def _valid(self, i):
        # (seq, payload) of slot i if it verifies, else (0, None)
        raw = self._w.read(i * self._slot, self._slot)
        if raw[:2] != self._tag:
            return 0, None
        seq, n = struct.unpack_from("<IH", raw, 2)
        if seq == 0 or n > self.max_payload:
            return 0, None
        if hashlib.sha256(raw[:_HDR + n]).digest()[:_SUM] != raw[_HDR + n:_HDR + n + _SUM]:
            return 0, None
        return seq, raw[_HDR:_HDR + n]

    def _scan(self):
        s0 = self._valid(0)[0]
        s1 = self._valid(1)[0]
        self.seq = max(s0, s1)
        self._next = 1 if s0 >= s1 and s0 else 0

    def load(self):
        """The newest valid payload (bytes), else None."""
        s0, p0 = self._valid(0)
        s1, p1 = self._valid(1)
        if not s0 and not s1:
            return None
        return p0 if s0 >= s1 else p1

    def save(self, payload):
        """Write payload as the newest copy, over the older slot."""
        n = len(payload)
        if n > self.max_payload:
            raise ValueError("nvram payload too long")
        seq = self.seq + 1
        b = self._buf
        b[0:2] = self._tag
        struct.pack_into("<IH", b, 2, seq, n)
        b[_HDR:_HDR + n] = payload
        b[_HDR + n:_HDR + n + _SUM] = hashlib.sha256(memoryview(b)[:_HDR + n]).digest()[:_SUM]
        self._w.write(self._next * self._slot, memoryview(b)[:_HDR + n + _SUM])
        self.seq = seq
        self._next ^= 1
