# Records in battery-backed RAM (board.nvram: an STM32's backup SRAM), for state that
# changes often (the clock's last time, the credit balance and tariff registers): kept there
# at no flash cost and written to flash only in batches (docs/ARCHITECTURE.md, "Persistence").
#
# A Record owns one window of the RAM (off, size), given to one task by meter.py from
# policy.NVRAM: the task gets the Record, not the RAM. The window holds two slots; each save
# goes to the slot that does not hold the newest valid copy, so a power cut in the middle of a
# save (the CPU stops half-way through its stores; the RAM keeps what it got) leaves the other
# slot's copy readable. Slot layout (little-endian):
#   tag (2 bytes, the owner's: a window laid out for another record never verifies) | seq u32 |
#   len u16 | payload (struct-packed values) | sha256(header + payload)[:8]
# seq counts saves; a task that also keeps the state on flash stores seq with it, and the boot
# takes whichever copy is newer (and moves seq past the flash copy's: `seq = max(...)`).
# Runs unchanged on CPython and MicroPython.
import hashlib
import struct

_HDR = 8  # tag 2 + seq 4 + len 2
_SUM = 8


class Record:
    def __init__(self, nv, off, size, tag):
        if off < 0 or size < 2 * (_HDR + _SUM + 1) or off + size > nv.size or len(tag) != 2:
            raise ValueError("bad nvram record")
        self._nv = nv
        self._off = off
        self._slot = size // 2
        self._tag = bytes(tag)
        self._buf = bytearray(self._slot)  # one buffer for every save: nothing allocated
        s0 = self._valid(0)
        s1 = self._valid(1)
        self.seq = s0 if s0 > s1 else s1
        self._next = 1 if s0 >= s1 and s0 else 0  # the slot the next save writes

    def _valid(self, i):
        # seq of slot i if it verifies, else 0
        raw = self._nv.read(self._off + i * self._slot, self._slot)
        if raw[:2] != self._tag:
            return 0
        seq, n = struct.unpack_from("<IH", raw, 2)
        if seq == 0 or n > self._slot - _HDR - _SUM:
            return 0
        if hashlib.sha256(raw[:_HDR + n]).digest()[:_SUM] != raw[_HDR + n:_HDR + n + _SUM]:
            return 0
        return seq

    def load(self, fmt):
        """The values of the newest valid copy (struct format fmt), else None."""
        i = 1 - self._next if self.seq else -1
        if i < 0 or self._valid(i) != self.seq:
            return None
        raw = self._nv.read(self._off + i * self._slot, _HDR + struct.calcsize(fmt))
        if struct.unpack_from("<H", raw, 6)[0] != struct.calcsize(fmt):
            return None
        return struct.unpack_from(fmt, raw, _HDR)

    def save(self, fmt, *values):
        """Write values (struct format fmt) as the newest copy, over the older slot."""
        n = struct.calcsize(fmt)
        if n > self._slot - _HDR - _SUM:
            raise ValueError("nvram payload too long")
        self.seq += 1
        b = self._buf
        mv = memoryview(b)
        b[0:2] = self._tag
        struct.pack_into("<IH", b, 2, self.seq, n)
        struct.pack_into(fmt, b, _HDR, *values)
        b[_HDR + n:_HDR + n + _SUM] = hashlib.sha256(mv[:_HDR + n]).digest()[:_SUM]
        self._nv.write(self._off + self._next * self._slot, mv[:_HDR + n + _SUM])
        self._next ^= 1


class Window:
    """A task's window (off, size) of the RAM as a RAM of its own: offsets from 0, nothing
    outside it reachable (a staged ring's, lib/ringlog.py)."""

    def __init__(self, nv, off, size):
        if off < 0 or size < 1 or off + size > nv.size:
            raise ValueError("bad nvram window")
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
