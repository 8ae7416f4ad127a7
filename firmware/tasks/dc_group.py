# The DC security module's groups (tasks/dc_security.py): the request parsers' gid, the member
# blocks (_Members) a group's ids and pair keys live in, a group's RAM, and the once-per-(gid, t)
# release table. Imported by the feature modules that handle groups (dc_setup, dc_round,
# dc_recover, dc_rare), never by dc_security itself: on a meter in no group it is not in RAM
# (dc_security._rounds drops it with the round code; docs/hardware.md "Memory").
import struct
from micropython import const

import store
from tasks.dc_base import MAX_GROUPS_CAP, REL_FILE, REL_FMT, Refused

_BLOCK = const(25)  # member slots per RAM block: no buffer above 1000 B (a fragmented heap)
_GROUP_BASE = const(768)  # a group's RAM besides ids and keys: objects, history, job state
_REL_BYTES = const(409)
_REL_REC = const(25)
_E_BAD_ARGS = const(6)


def _u32(b, off):
    return struct.unpack_from(">I", b, off)[0]


def _gid(body, off):
    # gid_len u8 + gid (1..16 bytes) -> (gid bytes, next offset)
    if off >= len(body):
        raise Refused(_E_BAD_ARGS, "malformed: no gid")
    n = body[off]
    if n < 1 or n > 16 or off + 1 + n > len(body):
        raise Refused(_E_BAD_ARGS, "malformed: gid length")
    return bytes(body[off + 1:off + 1 + n]), off + 1 + n


def _cap(n):
    return n - 1 if n - 1 < _BLOCK else _BLOCK


def group_ram(n):
    # a group's RAM: its blocks of ids and keys, and the rest (objects, round history)
    cap = _cap(n)
    return (40 * cap + 16) * ((n - 2 + cap) // cap) + _GROUP_BASE


class _Members:
    # The other n-1 members' ids and pair keys, in blocks of `cap` slots. Block layout: id j
    # (8 B, big-endian) at [8j], K_ij (32 B) at [8 cap + 32 j]. A group file is the same blocks.
    def __init__(self, n, blocks=None):
        self.k = n - 1
        self.cap = _cap(n)
        if blocks is None:
            nb = (self.k + self.cap - 1) // self.cap
            blocks = [bytearray(40 * self.cap) for _ in range(nb)]
        self.blocks = blocks

    def id_at(self, i):
        b = self.blocks[i // self.cap]
        j = (i % self.cap) << 3
        return b[j:j + 8]

    def key_at(self, i):
        cap = self.cap
        o = (cap << 3) + ((i % cap) << 5)
        return self.blocks[i // cap][o:o + 32]

    def put_id(self, i, idb):
        j = (i % self.cap) << 3
        self.blocks[i // self.cap][j:j + 8] = idb

    def put_key(self, i, key):
        cap = self.cap
        o = (cap << 3) + ((i % cap) << 5)
        self.blocks[i // cap][o:o + 32] = key

    def find(self, count, needle):
        # slot of the 8-byte id among the first `count` slots, else -1
        cap = self.cap
        for bi in range(len(self.blocks)):
            k = count - bi * cap
            if k <= 0:
                break
            # the needle among the block's first k (at most cap) 8-byte ids
            buf = self.blocks[bi]
            end = (k if k < cap else cap) << 3
            i = buf.find(needle, 0, end)
            while i >= 0:
                if not i & 7:
                    return bi * cap + (i >> 3)
                i = buf.find(needle, i + 1, end)
        return -1


def released(dc, gid):
    # the lowest t that group gid may still release
    return dc._rel.get(gid, dc._rel_floor)


def save_released(dc, rel, floor):
    # Persists the table {gid: next t} and the floor, then puts them in force. Raises (OSError,
    # ValueError) leaving the table in force as it was: the caller releases nothing then.
    if len(rel) > MAX_GROUPS_CAP:
        raise ValueError("release table full")
    b = bytearray(_REL_BYTES)
    struct.pack_into(">QB", b, 0, floor, len(rel))
    o = 9
    for gid, nxt in rel.items():
        b[o] = len(gid)
        b[o + 1:o + 1 + len(gid)] = gid
        struct.pack_into(">Q", b, o + 17, nxt)
        o += _REL_REC
    if dc._nv is not None:
        dc._nv.save(REL_FMT, b)
    else:
        store.save_bytes(dc._dir + REL_FILE, b)
    dc._rel = rel
    dc._rel_floor = floor
