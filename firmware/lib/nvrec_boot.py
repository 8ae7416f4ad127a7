# The RAM's snapshots at power-up (lib/nvrec.py Snapshots): which files verify, the files made
# at their full size once, and the RAM restored from the newest when it lost its contents. In
# its own module so that its code is in RAM only while the boot runs (lib/lazy.py).
import hashlib
import os
import struct

from nvrec import _CHUNK, _SNAP_HDR, _SNAP_MAGIC


def _valid(sn, i):
    # seq of file i if it verifies whole, else 0
    try:
        if os.stat(sn.file(i))[6] != _SNAP_HDR + sn._nv.size + 8:
            return 0
        with open(sn.file(i), "rb") as f:
            hdr = f.read(_SNAP_HDR)
            if hdr[:3] != _SNAP_MAGIC:
                return 0
            seq, n = struct.unpack_from("<II", hdr, 3)
            if n != sn._nv.size:
                return 0
            d = hashlib.sha256(hdr)
            while n > 0:
                b = f.read(min(n, _CHUNK))
                if not b:
                    return 0
                d.update(b)
                n -= len(b)
            return seq if f.read(8) == d.digest()[:8] else 0
    except OSError:
        return 0


def scan(sn):
    for i in range(sn.count):
        sn.seqs[i] = _valid(sn, i)


def _prealloc(sn):
    # Every file at its full size before the first snapshot: a snapshot then overwrites one in
    # place (on a FAT, a file that grows allocates a cluster at a time, and each allocation
    # moves the one-sector cache between the FAT and the data: an erase each). Zeros: no file
    # verifies until a snapshot has written it.
    size = _SNAP_HDR + sn._nv.size + 8
    z = bytes(_CHUNK)
    for i in range(sn.count):
        p = sn.file(i)
        try:
            if os.stat(p)[6] == size:
                continue
        except OSError:
            pass
        with open(p, "wb") as f:
            n = size
            while n > 0:
                f.write(z[:min(n, _CHUNK)])
                n -= _CHUNK


def boot(sn):
    _prealloc(sn)
    if sn._sentinel.seq:
        return 0
    best = sn.newest_first()[0]
    if not sn.seqs[best]:
        sn._sentinel.save("<I", 0)  # a fresh RAM: alive from now on
        return 0
    with open(sn.file(best), "rb") as f:
        f.seek(_SNAP_HDR)
        off = 0
        while off < sn._nv.size:
            b = f.read(min(_CHUNK, sn._nv.size - off))
            sn._nv.write(off, b)
            off += len(b)
    sn.restored = sn.seqs[best]
    return sn.restored
