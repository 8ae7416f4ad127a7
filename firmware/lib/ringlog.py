# A bounded ring of fixed-size records persisted in one file: the metrology, security and
# off-switch logs and the load profile each get their own Ring (and file), so flooding one
# can never touch another.
#
# File = capacity slots of rec_size bytes; seq s (1-based) lives in slot (s - 1) % capacity.
# Slot layout (little-endian):
#   seq u32 (0 = empty) | len u16 | payload (len bytes) | zero padding | sha256(seq+len+payload)[:4]
# The checksum sits at the end of the slot, so a torn in-place write of a slot fails it and
# loses only that one record. Runs unchanged on CPython and MicroPython.
import hashlib
import os
import struct

import lazy

from store import _rm, _size  # -1 if missing; remove if there (one copy of each, in store)

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
    def __init__(self, path, capacity, rec_size):
        if capacity < 1 or rec_size <= OVERHEAD or rec_size - OVERHEAD > 0xFFFF:
            raise ValueError("bad ring geometry")
        self.path = path
        self.capacity = capacity
        self.rec_size = rec_size
        self.max_payload = rec_size - OVERHEAD
        self.last_seq = 0  # highest valid seq, 0 if empty
        self.count = 0  # valid records held (seq in last_seq - capacity + 1 .. last_seq)
        # One slot buffer for every read and write: no per-record allocation. Rings whose
        # records fit share one (_SHARED bytes): their users take turns (the meter's rings
        # are the main core's).
        self._mv = (_shared() if rec_size <= _SHARED else memoryview(bytearray(rec_size)))[
            :rec_size]
        # Bit per slot: holds a valid record inside the window. Lets append() keep count
        # exact without reading the slot it overwrites (capacity / 8 bytes of RAM).
        self._valid = bytearray((capacity + 7) // 8)
        size = _size(path)
        if size != capacity * rec_size:
            if size >= 0:
                # Other geometry (or a half-created file): keep it aside, start afresh.
                _rm(path + ".old")
                os.rename(path, path + ".old")
            lazy.call("ringlog_read", "create", self)
        else:
            lazy.call("ringlog_read", "scan", self)  # the boot's: in RAM only while it runs

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
        with open(self.path, "r+b") as f:
            f.seek(slot * rs)
            f.write(buf)
            f.flush()
        self._set(slot, True)
        self.count += 1
        self.last_seq = seq
        return seq

    def records(self, from_seq=0, max_n=None):
        """[(seq, payload bytes)] with seq >= from_seq, oldest first, valid slots only."""
        # Reading is for head-end requests: its code in RAM only while it runs (ringlog_read.py)
        return lazy.call("ringlog_read", "records", self, from_seq, max_n)
