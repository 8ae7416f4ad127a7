# Reading atomic records (lib/store.py): load() and load_bytes(), for the boot and for rare
# requests; in their own module so that their code is in RAM only while they run (lib/lazy.py).
# Part of lib/store.py, which has the file format.
import hashlib
import json

from store import _HDR, _MAGIC_BIN, _SUM, _header, _size


def _head_seq(p, magic):
    # Cheap pre-sort for load(): the header's seq, unverified (0 if missing or malformed).
    size = _size(p)
    if size < _HDR + _SUM:
        return 0
    try:
        with open(p, "rb") as f:
            h = _header(f, size, magic)
            return 0 if h is None else h[1]
    except OSError:
        return 0


def _read(p, magic, split=None):
    # (True, obj) if p is fully valid (magic, length, checksum, JSON), else (False, None).
    # With magic _MAGIC_BIN: (True, payload bytes); with split = (head, piece): (True, list of
    # pieces), see load_bytes().
    size = _size(p)
    if size < _HDR + _SUM:
        return False, None
    try:
        with open(p, "rb") as f:
            h = _header(f, size, magic)
            if h is None:
                return False, None
            hdr, _, n = h
            d = hashlib.sha256(hdr)
            if split is None:
                payload = f.read(n)
                got = len(payload)
                d.update(payload)
            else:
                payload = []
                got = 0
                want = split[0] if split[0] < n else n
                while got < n:
                    b = f.read(want)
                    if len(b) != want:
                        return False, None
                    d.update(b)
                    payload.append(b)
                    got += want
                    if len(payload) == 1:
                        step = split[1](b) if callable(split[1]) else split[1]
                        if step < 1:
                            return False, None
                    want = step if step < n - got else n - got
            if got != n or f.read(_SUM) != d.digest()[:_SUM]:
                return False, None
        if magic == _MAGIC_BIN:
            return True, payload
        return True, json.loads(payload.decode())
    except (OSError, ValueError):  # ValueError covers bad JSON and bad UTF-8 on both runtimes
        return False, None


def load(path, default, magic, split=None):
    cands = []
    for p in (path, path + ".tmp", path + ".bak"):
        s = _head_seq(p, magic)
        if s:
            cands.append((s, p))
    cands.sort(reverse=True)
    # Newest first, so normally only one payload is read and parsed.
    for _, p in cands:
        ok, obj = _read(p, magic, split)
        if ok:
            return obj
    return default
