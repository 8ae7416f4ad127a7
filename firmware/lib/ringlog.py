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
            self._create()
        else:
            self._scan()

    def _bit(self, slot):
        return self._valid[slot >> 3] & (1 << (slot & 7))

    def _set(self, slot, on):
        if on:
            self._valid[slot >> 3] |= 1 << (slot & 7)
        else:
            self._valid[slot >> 3] &= ~(1 << (slot & 7)) & 0xFF

    def _create(self):
        i = self.path.rfind("/")
        if i > 0 and _size(self.path[:i]) < 0:
            os.mkdir(self.path[:i])
        # Zero-fill under another name and rename, so a power cut mid-fill never leaves a
        # short file at path.
        tmp = self.path + ".new"
        buf = self._mv
        for i in range(self.rec_size):
            buf[i] = 0
        with open(tmp, "wb") as f:
            for _ in range(self.capacity):
                f.write(buf)
            f.flush()
        os.rename(tmp, self.path)

    def _check(self, slot):
        # seq of the record in the slot buffer if it is valid and belongs in slot, else 0.
        seq, n = struct.unpack_from("<IH", self._mv, 0)
        if seq == 0 or n > self.max_payload or (seq - 1) % self.capacity != slot:
            return 0
        d = hashlib.sha256(self._mv[: _HDR + n]).digest()
        if bytes(self._mv[self.rec_size - _SUM :]) != d[:_SUM]:
            return 0
        return seq

    def _scan(self):
        # One pass, slot by slot, into the one preallocated buffer.
        cap = self.capacity
        rs = self.rec_size
        last = 0
        low = 0  # lowest valid seq seen
        with open(self.path, "rb") as f:
            for slot in range(cap):
                if f.readinto(self._mv) != rs:
                    break
                s = self._check(slot)
                if s:
                    self._set(slot, True)
                    if s > last:
                        last = s
                    if low == 0 or s < low:
                        low = s
            self.last_seq = last
            if low and low <= last - cap:
                # Rare (corruption, not normal appends): drop stale records outside the window.
                for slot in range(cap):
                    if self._bit(slot):
                        f.seek(slot * rs)
                        f.readinto(self._mv)
                        if self._check(slot) <= last - cap:
                            self._set(slot, False)
        n = 0
        for slot in range(cap):
            if self._bit(slot):
                n += 1
        self.count = n

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
        out = []
        last = self.last_seq
        s = max(from_seq, last - self.capacity + 1, 1)
        if s > last or (max_n is not None and max_n <= 0):
            return out
        rs = self.rec_size
        with open(self.path, "rb") as f:
            while s <= last:
                slot = (s - 1) % self.capacity
                # Re-verify on read: the file may have been damaged since the scan.
                if self._bit(slot):
                    f.seek(slot * rs)
                    if f.readinto(self._mv) == rs and self._check(slot) == s:
                        n = self._mv[4] | (self._mv[5] << 8)
                        out.append((s, bytes(self._mv[_HDR : _HDR + n])))
                        if max_n is not None and len(out) >= max_n:
                            break
                s += 1
        return out
