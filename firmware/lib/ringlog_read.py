# Reading a ring (lib/ringlog.py): creating or scanning its file at boot, and reading records
# (log reads, the load profile). In its own module so that its code is in RAM only while it runs
# (lib/lazy.py). Part of lib/ringlog.py, which has the slot layout.
import hashlib
import os
import struct

from ringlog import _HDR, _SHARED, _SUM, OVERHEAD, _shared
from store import _rm, _size


def init(self, path, capacity, rec_size, stage):
    # ringlog.Ring's state; the file scanned, or created
    if capacity < 1 or rec_size <= OVERHEAD or rec_size - OVERHEAD > 0xFFFF:
        raise ValueError("bad ring geometry")
    self._nv = None
    self.flushed = 0  # staged: every record up to this seq is in the file
    if stage is not None:
        n = stage.size // rec_size
        if n < 1 or n > capacity:
            raise ValueError("bad ring stage")
        self._nv, self._nv_n = stage, n
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
    self._snaps = snaps = getattr(stage, "snaps", None) if stage is not None else None
    if snaps is not None:
        # its history is in the RAM's snapshots (lib/nvrec.py Snapshots), not in a file
        # of its own: a snapshot is one flash write for every staged ring and record
        snaps.rings.append(self)
        snap_scan(self)
        return
    size = _size(path)
    if size != capacity * rec_size:
        if size >= 0:
            # Other geometry (or a half-created file): keep it aside, start afresh.
            _rm(path + ".old")
            os.rename(path, path + ".old")
        create(self)
    else:
        scan(self)
    if self._nv is not None:
        merge_stage(self)


def create(r):
    i = r.path.rfind("/")
    if i > 0 and _size(r.path[:i]) < 0:
        os.mkdir(r.path[:i])
    # Zero-fill under another name and rename, so a power cut mid-fill never leaves a
    # short file at path.
    tmp = r.path + ".new"
    buf = r._mv
    for i in range(r.rec_size):
        buf[i] = 0
    with open(tmp, "wb") as f:
        for _ in range(r.capacity):
            f.write(buf)
        f.flush()
    os.rename(tmp, r.path)


def _check(r, slot, cap=0):
    # seq of the record in the slot buffer if it is valid and belongs in slot (of a ring of
    # cap slots: the file's, or the RAM stage's), else 0.
    seq, n = struct.unpack_from("<IH", r._mv, 0)
    if seq == 0 or n > r.max_payload or (seq - 1) % (cap or r.capacity) != slot:
        return 0
    d = hashlib.sha256(r._mv[: _HDR + n]).digest()
    if bytes(r._mv[r.rec_size - _SUM :]) != d[:_SUM]:
        return 0
    return seq


def scan(r):
    # One pass, slot by slot, into the one preallocated buffer.
    cap = r.capacity
    rs = r.rec_size
    last = 0
    low = 0  # lowest valid seq seen
    with open(r.path, "rb") as f:
        for slot in range(cap):
            if f.readinto(r._mv) != rs:
                break
            s = _check(r, slot)
            if s:
                r._set(slot, True)
                if s > last:
                    last = s
                if low == 0 or s < low:
                    low = s
        r.last_seq = last
        if low and low <= last - cap:
            # Rare (corruption, not normal appends): drop stale records outside the window.
            for slot in range(cap):
                if r._bit(slot):
                    f.seek(slot * rs)
                    f.readinto(r._mv)
                    if _check(r, slot) <= last - cap:
                        r._set(slot, False)
    n = 0
    for slot in range(cap):
        if r._bit(slot):
            n += 1
    r.count = n


def records(r, from_seq, max_n):
    out = []
    last = r.last_seq
    s = max(from_seq, last - r.capacity + 1, 1)
    if s > last or (max_n is not None and max_n <= 0):
        return out
    rs = r.rec_size
    with open(r.path, "rb") as f:
        while s <= last:
            slot = (s - 1) % r.capacity
            # Re-verify on read: the file may have been damaged since the scan.
            if r._bit(slot):
                if s > r.flushed and r._nv is not None:
                    ok = _stage_read(r, s) == s  # not in the file yet: the RAM's copy
                else:
                    f.seek(slot * rs)
                    ok = f.readinto(r._mv) == rs and _check(r, slot) == s
                if ok:
                    n = r._mv[4] | (r._mv[5] << 8)
                    out.append((s, bytes(r._mv[_HDR : _HDR + n])))
                    if max_n is not None and len(out) >= max_n:
                        break
            s += 1
    return out


def _stage_read(r, s):
    # record s's RAM slot into the slot buffer; its seq if valid, else 0
    i = (s - 1) % r._nv_n
    r._mv[:] = r._nv.read(i * r.rec_size, r.rec_size)
    return _check(r, i, r._nv_n)


def flush(r):
    # The staged records (flushed + 1 .. last_seq) into their file slots, one open and one
    # close. A record the RAM lost (torn by a cut as it was staged) is skipped: its slot in the
    # file keeps what it had (and the boot's scan finds it stale).
    rs = r.rec_size
    done = 0
    with open(r.path, "r+b") as f:
        for s in range(r.flushed + 1, r.last_seq + 1):
            if _stage_read(r, s) != s:
                continue
            f.seek((s - 1) % r.capacity * rs)
            f.write(r._mv)
            done += 1
    r.flushed = r.last_seq
    return done


def merge_stage(r):
    # After the file's scan: the RAM's records that the file lacks (a power cut came before
    # their flush, or in it) are pending again; those it holds were flushed.
    rs, n, cap = r.rec_size, r._nv_n, r.capacity
    staged = []
    for i in range(n):
        r._mv[:] = r._nv.read(i * rs, rs)
        s = _check(r, i, n)
        if s and s > r.last_seq - cap:
            staged.append(s)
    staged.sort()
    flushed = r.last_seq
    if staged:
        with open(r.path, "rb") as f:
            for s in staged:
                f.seek((s - 1) % cap * rs)
                disk = f.read(rs)
                _stage_read(r, s)
                if disk != bytes(r._mv):
                    flushed = s - 1
                    break
        last = staged[-1]
        if last > r.last_seq:
            r.last_seq = last
        flushed = min(flushed, r.last_seq)
    r.flushed = flushed
    # which slots hold a record of the window now: staged ones not yet in the file, else the
    # file's own (valid and inside the window)
    last = r.last_seq
    for slot in range(cap):
        r._set(slot, False)
    with open(r.path, "rb") as f:
        for slot in range(cap):
            f.seek(slot * rs)
            if f.readinto(r._mv) == rs:
                s = _check(r, slot)
                if s and s > last - cap and s <= flushed:
                    r._set(slot, True)
    for s in staged:
        if s > flushed:
            r._set((s - 1) % cap, True)
    c = 0
    for slot in range(cap):
        if r._bit(slot):
            c += 1
    r.count = c


# -- history in the RAM's snapshots (lib/nvrec.py Snapshots) -------------------------------

def _snap_slots(r, f, i):
    # the ring's window in snapshot file f: slot i into the slot buffer; its seq, else 0
    f.seek(11 + r._nv.off + i * r.rec_size)  # the file's header: nvrec._SNAP_HDR
    if f.readinto(r._mv) != r.rec_size:
        return 0
    return _check(r, i, r._nv_n)


def snap_scan(r):
    # last_seq: the highest valid seq in the RAM or a snapshot; flushed: the highest in a
    # snapshot that verifies whole (a torn one may hold a later record without an earlier)
    sn = r._snaps
    n = r._nv_n
    last = flushed = 0
    ram = []
    for i in range(n):
        r._mv[:] = r._nv.read(i * r.rec_size, r.rec_size)
        s = _check(r, i, n)
        if s:
            ram.append(s)
            last = max(last, s)
    for k in sn.newest_first():
        try:
            with open(sn.file(k), "rb") as f:
                for i in range(n):
                    s = _snap_slots(r, f, i)
                    if s:
                        last = max(last, s)
                        if sn.seqs[k]:
                            flushed = max(flushed, s)
        except OSError:
            pass
    r.last_seq = last
    # the RAM's records past the last whole snapshot are pending; a RAM that lost a record
    # the snapshots hold (restored, or torn): nothing pending below it
    r.flushed = min(flushed, last)
    lo = last - r.capacity
    seen = set()
    for s in ram:
        if s > lo:
            seen.add(s)
    for k in range(sn.count):
        try:
            with open(sn.file(k), "rb") as f:
                for i in range(n):
                    s = _snap_slots(r, f, i)
                    if s > lo:
                        seen.add(s)
        except OSError:
            pass
    for s in seen:
        r._set((s - 1) % r.capacity, True)  # append() keeps count from these bits
    r.count = len(seen)


def snap_records(r, from_seq, max_n):
    # records from the RAM's window and every snapshot's, by seq (each once), oldest first
    last = r.last_seq
    lo = max(from_seq, last - r.capacity + 1, 1)
    if lo > last or (max_n is not None and max_n <= 0):
        return []
    found = {}

    def keep(s):
        if lo <= s <= last and s not in found:
            k = r._mv[4] | (r._mv[5] << 8)
            found[s] = bytes(r._mv[_HDR:_HDR + k])
            if max_n is not None and len(found) > max_n:
                del found[max(found)]

    n = r._nv_n
    for i in range(n):
        r._mv[:] = r._nv.read(i * r.rec_size, r.rec_size)
        keep(_check(r, i, n))
    sn = r._snaps
    for k in sn.newest_first():
        try:
            with open(sn.file(k), "rb") as f:
                for i in range(n):
                    keep(_snap_slots(r, f, i))
        except OSError:
            pass
    out = []
    for s in sorted(found):
        out.append((s, found[s]))
    return out
