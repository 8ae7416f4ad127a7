# Atomic persisted records ("memory segments"): keys, energy registers, calibration,
# counters. Each record is owned by one task and lives in up to three files:
#
#   path        the current copy
#   path.tmp    a new copy being written (or, after a crash, one not yet renamed)
#   path.bak    the previous good copy
#
# File format (little-endian):
#   b"ST1" | seq u32 | len u32 | JSON payload (len bytes) | sha256(header + payload)[:8]
#
# load() picks the valid copy with the highest seq, so a power cut at any point of save()
# leaves either the old or the new object readable. Runs unchanged on CPython and MicroPython.
import hashlib
import json
import os
import struct

_MAGIC = b"ST1"
_HDR = 11  # magic 3 + seq 4 + len 4
_SUM = 8
_CHUNK = 64  # streaming-hash buffer: verifying a copy never holds its payload in RAM


def _size(p):
    # -1 if missing. os.stat works on every MicroPython VFS; os.path does not exist there.
    try:
        return os.stat(p)[6]
    except OSError:
        return -1


def _exists(p):
    return _size(p) >= 0


def _rm(p):
    try:
        os.remove(p)
    except OSError:
        pass


def _sync():
    # MicroPython has no os.fsync; os.sync (where the port has it) flushes the block devices.
    if hasattr(os, "sync"):
        os.sync()


def _mkparent(path):
    i = path.rfind("/")
    if i > 0 and not _exists(path[:i]):
        _mkparent(path[:i])
        try:
            os.mkdir(path[:i])
        except OSError:
            pass  # made by someone else meanwhile; open() will tell if it really failed


def _header(f, size):
    # (seq, len) if the header is sane and the length matches the file size, else None.
    # Checking the size first means a corrupt length never makes us allocate a huge buffer.
    hdr = f.read(_HDR)
    if len(hdr) != _HDR or hdr[:3] != _MAGIC:
        return None
    seq, n = struct.unpack_from("<II", hdr, 3)
    if seq == 0 or _HDR + n + _SUM != size:
        return None
    return hdr, seq, n


def _valid_seq(p):
    # seq of p if its checksum verifies, else 0. Hashes in small chunks (no payload in RAM).
    size = _size(p)
    if size < _HDR + _SUM:
        return 0
    try:
        with open(p, "rb") as f:
            h = _header(f, size)
            if h is None:
                return 0
            hdr, seq, n = h
            d = hashlib.sha256(hdr)
            buf = bytearray(_CHUNK)
            mv = memoryview(buf)
            while n > 0:
                k = f.readinto(mv[: min(n, _CHUNK)])
                if not k:
                    return 0
                d.update(mv[:k])
                n -= k
            return seq if f.read(_SUM) == d.digest()[:_SUM] else 0
    except OSError:
        return 0


def _head_seq(p):
    # Cheap pre-sort for load(): the header's seq, unverified (0 if missing or malformed).
    size = _size(p)
    if size < _HDR + _SUM:
        return 0
    try:
        with open(p, "rb") as f:
            h = _header(f, size)
            return 0 if h is None else h[1]
    except OSError:
        return 0


def _read(p):
    # (True, obj) if p is fully valid (magic, length, checksum, JSON), else (False, None).
    size = _size(p)
    if size < _HDR + _SUM:
        return False, None
    try:
        with open(p, "rb") as f:
            h = _header(f, size)
            if h is None:
                return False, None
            hdr, _, n = h
            payload = f.read(n)
            d = hashlib.sha256(hdr)
            d.update(payload)
            if len(payload) != n or f.read(_SUM) != d.digest()[:_SUM]:
                return False, None
        return True, json.loads(payload.decode())
    except (OSError, ValueError):  # ValueError covers bad JSON and bad UTF-8 on both runtimes
        return False, None


def _commit(path, main_valid):
    # Move the finished .tmp into place, keeping the current copy as .bak if it is good.
    tmp = path + ".tmp"
    bak = path + ".bak"
    if _exists(path):
        if main_valid:
            _rm(bak)  # rename onto an existing file fails on some MicroPython filesystems
            os.rename(path, bak)
        else:
            os.remove(path)  # garbage: keep the older good .bak instead of replacing it
    os.rename(tmp, path)
    _sync()


def save(path, obj):
    """Persist the JSON-serialisable obj atomically (see the module comment)."""
    # Encode first: a non-serialisable obj raises here (CPython) before any file is touched.
    payload = json.dumps(obj).encode()
    _mkparent(path)
    tmp = path + ".tmp"
    s_main = _valid_seq(path)
    s_tmp = _valid_seq(tmp)
    s_bak = _valid_seq(path + ".bak")
    if s_tmp > s_main and s_tmp > s_bak:
        # A crash hit the last save after its .tmp was complete: that .tmp is the newest state,
        # so finish its commit rather than overwrite it (a torn write now would lose it).
        _commit(path, s_main > 0)
        s_main = s_tmp
    seq = max(s_main, s_tmp, s_bak) + 1
    hdr = _MAGIC + struct.pack("<II", seq, len(payload))
    d = hashlib.sha256(hdr)
    d.update(payload)
    with open(tmp, "wb") as f:
        f.write(hdr)
        f.write(payload)
        f.write(d.digest()[:_SUM])
        f.flush()
    _sync()  # .tmp must be durable before the rename makes it the current copy
    _commit(path, s_main > 0)


def load(path, default=None):
    """The object of the newest valid copy of path, else default. Never raises for bad files."""
    cands = []
    for p in (path, path + ".tmp", path + ".bak"):
        s = _head_seq(p)
        if s:
            cands.append((s, p))
    cands.sort(reverse=True)
    # Newest first, so normally only one payload is read and parsed.
    for _, p in cands:
        ok, obj = _read(p)
        if ok:
            return obj
    return default


def remove(path):
    """Discard the record: all three files."""
    for p in (path, path + ".tmp", path + ".bak"):
        _rm(p)
