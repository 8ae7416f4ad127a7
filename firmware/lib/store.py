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
#
# Binary records (save_bytes/load_bytes) use the same files, header, checksum and commit, with
# the magic b"SB1" and raw bytes as the payload: save() / load() never read one as the other.
import os

import lazy

# (RAM: the module's globals are one dict, sized for the most names it held: hashlib, json and
# struct are imported by the functions that use them)

_MAGIC = b"ST1"
_MAGIC_BIN = b"SB1"
_HDR = 11  # magic 3 + seq 4 + len 4
_SUM = 8
_CHUNK = 64  # streaming-hash buffer: verifying a copy never holds its payload in RAM


def _size(p):
    # -1 if missing. os.stat works on every MicroPython VFS; os.path does not exist there.
    try:
        return os.stat(p)[6]
    except OSError:
        return -1


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
    if i > 0 and _size(path[:i]) < 0:
        _mkparent(path[:i])
        try:
            os.mkdir(path[:i])
        except OSError:
            pass  # made by someone else meanwhile; open() will tell if it really failed


def _header(f, size, magic=_MAGIC):
    # (seq, len) if the header is sane and the length matches the file size, else None.
    # Checking the size first means a corrupt length never makes us allocate a huge buffer.
    import struct

    hdr = f.read(_HDR)
    if len(hdr) != _HDR or hdr[:3] != magic:
        return None
    seq, n = struct.unpack_from("<II", hdr, 3)
    if seq == 0 or _HDR + n + _SUM != size:
        return None
    return hdr, seq, n


def _valid_seq(p, magic=_MAGIC):
    # seq of p if its checksum verifies, else 0. Hashes in small chunks (no payload in RAM).
    import hashlib

    size = _size(p)
    if size < _HDR + _SUM:
        return 0
    try:
        with open(p, "rb") as f:
            h = _header(f, size, magic)
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


def _commit(path, main_valid):
    # Move the finished .tmp into place, keeping the current copy as .bak if it is good.
    tmp = path + ".tmp"
    bak = path + ".bak"
    if _size(path) >= 0:
        if main_valid:
            _rm(bak)  # rename onto an existing file fails on some MicroPython filesystems
            os.rename(path, bak)
        else:
            os.remove(path)  # garbage: keep the older good .bak instead of replacing it
    os.rename(tmp, path)
    _sync()


def _save(path, parts, magic):
    # parts: a tuple of bytes-like objects, written (and hashed) one after the other.
    import hashlib
    import struct

    n = 0
    for b in parts:
        n += len(b)
    _mkparent(path)
    tmp = path + ".tmp"
    s_main = _valid_seq(path, magic)
    s_tmp = _valid_seq(tmp, magic)
    s_bak = _valid_seq(path + ".bak", magic)
    if s_tmp > s_main and s_tmp > s_bak:
        # A crash hit the last save after its .tmp was complete: that .tmp is the newest state,
        # so finish its commit rather than overwrite it (a torn write now would lose it).
        _commit(path, s_main > 0)
        s_main = s_tmp
    seq = max(s_main, s_tmp, s_bak) + 1
    hdr = magic + struct.pack("<II", seq, n)
    d = hashlib.sha256(hdr)
    with open(tmp, "wb") as f:
        f.write(hdr)
        for b in parts:
            d.update(b)
            f.write(b)
        f.write(d.digest()[:_SUM])
        f.flush()
    _sync()  # .tmp must be durable before the rename makes it the current copy
    _commit(path, s_main > 0)


def save(path, obj):
    """Persist the JSON-serialisable obj atomically (see the module comment)."""
    # Encode first: a non-serialisable obj raises here (CPython) before any file is touched.
    import json

    payload = json.dumps(obj).encode()
    _save(path, (payload,), _MAGIC)


def load(path, default=None):
    """The object of the newest valid copy of path, else default. Never raises for bad files."""
    # Reading is for the boot and for rare requests: its code in RAM only while it runs
    # (lib/store_read.py, lib/lazy.py), and only when there is a copy to read.
    if _none(path):
        return default
    return lazy.call("store_read", "load", path, default, _MAGIC)


def save_bytes(path, data):
    """Persist binary data atomically, like save(). data: bytes-like, or a tuple/list of
    bytes-like parts written one after the other (a large record is never joined in RAM)."""
    if not isinstance(data, (tuple, list)):
        data = (data,)
    _save(path, tuple(data), _MAGIC_BIN)


def load_bytes(path, default=None, head=0, piece=0):
    """The payload (bytes) of the newest valid binary copy of path, else default.

    With head > 0, the payload comes as a list of pieces, so that a large record never needs
    one contiguous buffer (a fragmented heap may not have one): the first `head` bytes, then
    pieces of `piece` bytes (the last one shorter); `piece` may be a function of the head
    piece. The checksum is verified over all of it before anything is returned."""
    if _none(path):
        return default
    return lazy.call("store_read", "load", path, default, _MAGIC_BIN,
                     (head, piece) if head > 0 else None)


def _none(path):
    # True when no copy of path is long enough to hold a record (store_read.load would find
    # none and return the default): a new meter's boot then loads no reading code at all
    for p in (path, path + ".tmp", path + ".bak"):
        if _size(p) >= _HDR + _SUM:
            return False
    return True


def size(path):
    """Bytes the current copy of path takes on flash (0 if missing)."""
    n = _size(path)
    return n if n > 0 else 0


def remove(path):
    """Discard the record: all three files."""
    for p in (path, path + ".tmp", path + ".bak"):
        _rm(p)
