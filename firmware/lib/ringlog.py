# A bounded ring of fixed-size records persisted in one file: the metrology, security and
# off-switch logs and the load profile each get their own Ring (and file), so flooding one
# can never touch another.
#
# File = capacity slots of rec_size bytes; seq s (1-based) lives in slot (s - 1) % capacity.
# Slot layout (little-endian):
#   seq u32 (0 = empty) | len u16 | payload (len bytes) | zero padding | sha256(seq+len+payload)[:4]
# The checksum sits at the end of the slot, so a torn in-place write of a slot fails it and
# loses only that one record. Runs unchanged on CPython and MicroPython.
#
# Staged (stage: a window of battery-backed RAM, lib/nvrec.py Window): appends go there, slot for
# slot in the file's format (record seq in RAM slot (seq - 1) % slots), at no flash
# cost; the records not yet on flash (seq > flushed) reach the file together, in one session
# (one close: on a Pyboard's FAT, one sync), when the window is full or on flush(). The RAM is
# never overwritten before its records are on flash, so a power cut in a flush loses nothing:
# the boot finds them in the RAM and flushes them again. Reads take the RAM's copy of what the
# file lacks. A flat battery loses at most the unflushed records (docs/hardware.md "Flash wear").
# With the RAM's snapshots (stage.snaps: lib/nvrec.py Snapshots) the ring has no file: its
# history is its window in each snapshot file, and a full window takes a snapshot of the RAM.
import hashlib
import struct

import lazy

_HDR = 6  # seq u32 + len u16
_SUM = 4
OVERHEAD = _HDR + _SUM
_SHARED = 64  # the slot buffer shared by the rings whose records fit in it
_shared_mv = None


def _shared():
    global _shared_mv
    if _shared_mv is None:
        _shared_mv = memoryview(bytearray(_SHARED))
    return _shared_mv


class Ring:
    def __init__(self, path, capacity, rec_size, stage=None):
        # Made (its file scanned or created) once, at boot: lib/ringlog_read.py, in RAM only
        # while it runs
        lazy.call("ringlog_read", "init", self, path, capacity, rec_size, stage)

    def _bit(self, slot):
        return self._valid[slot >> 3] & (1 << (slot & 7))

    def _set(self, slot, on):
        if on:
            self._valid[slot >> 3] |= 1 << (slot & 7)
        else:
            self._valid[slot >> 3] &= ~(1 << (slot & 7)) & 0xFF

    def append(self, payload):
        """Write payload as record last_seq + 1 in its slot, in place; returns its seq."""
        n = len(payload)
        if n > self.max_payload:
            raise ValueError("payload too long")
        seq = self.last_seq + 1
        nv = self._nv
        if nv is not None and seq - self.flushed > self._nv_n:
            self.flush()  # the RAM window is full: its records to flash first, in one go
        slot = (seq - 1) % self.capacity
        rs = self.rec_size
        buf = self._mv
        struct.pack_into("<IH", buf, 0, seq, n)
        buf[_HDR : _HDR + n] = payload
        for i in range(_HDR + n, rs - _SUM):
            buf[i] = 0
        buf[rs - _SUM :] = hashlib.sha256(self._mv[: _HDR + n]).digest()[:_SUM]
        # The slot's old record (seq - capacity) leaves the window either way; if the write
        # fails half-way the slot is garbage, so forget it before writing.
        if self._bit(slot):
            self._set(slot, False)
            self.count -= 1
        if nv is not None:
            nv.write((seq - 1) % self._nv_n * rs, buf)
        else:
            with open(self.path, "r+b") as f:
                f.seek(slot * rs)
                f.write(buf)
                f.flush()
        self._set(slot, True)
        self.count += 1
        self.last_seq = seq
        return seq

    def pending(self):
        """Records staged in RAM and not yet in the file."""
        return self.last_seq - self.flushed if self._nv is not None else 0

    def flush(self):
        """Staged: write the records not yet in the file, in one session; returns how many."""
        if self._nv is None or self.last_seq <= self.flushed:
            return 0
        n = self.last_seq - self.flushed
        if self._snaps is not None:
            self._snaps.snapshot()  # the whole RAM, this ring's window with it
            return n
        return lazy.call("ringlog_read", "flush", self)  # a few times a day: in RAM for it

    def records(self, from_seq=0, max_n=None):
        """[(seq, payload bytes)] with seq >= from_seq, oldest first, valid slots only."""
        # Reading is for head-end requests: its code in RAM only while it runs (ringlog_read.py)
        if self._snaps is not None:
            return lazy.call("ringlog_read", "snap_records", self, from_seq, max_n)
        return lazy.call("ringlog_read", "records", self, from_seq, max_n)
