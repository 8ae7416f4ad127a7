# The DC security module's groups (tasks/dc_security.py): the request parsers' gid, a group's
# RAM, the pads of a blinding or a recovery, and the once-per-(gid, t) release table (the member
# blocks, _Members, are in tasks/dc_gobj.py). Imported by the feature modules that handle groups (dc_setup, dc_round,
# dc_recover, dc_rare), never by dc_security itself: on a meter in no group it is not in RAM
# (dc_security._rounds drops it with the round code; docs/hardware.md "Memory").
import struct
from micropython import const

import store
from tasks.dc_base import MAX_GROUPS_CAP, REL_FILE, REL_FMT, Refused
from tasks.dc_gobj import _cap, _Members  # noqa: F401 - the member blocks, for the set-up's code

_GROUP_BASE = const(768)  # a group's RAM besides ids and keys: objects, history, job state
_REL_BYTES = const(409)
_REL_REC = const(25)
_E_BAD_ARGS = const(6)
_MASK = const(0xFFFFFFFF)


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


def group_ram(n):
    # a group's RAM: its blocks of ids and keys, and the rest (objects, round history)
    cap = _cap(n)
    return (40 * cap + 16) * ((n - 2 + cap) // cap) + _GROUP_BASE




def pads(g, slots, i, end, msg, acc):
    # acc + sum of s_ij * PRF(K_ij, t) over slots[i:end] (slots None: all others). The PRF's
    # module is the caller's (tasks/dc_round.py, dc_recover.py): GROUPS, which loads this
    # module too, does not need it.
    from lopa_core import prf_msg

    mem = g.mem
    my_b = g.my_b
    while i < end:
        j = i if slots is None else slots[i]
        v = prf_msg(mem.key_at(j), msg)
        if my_b < mem.id_at(j):
            acc += v
        else:
            acc -= v
        i += 1
    return acc & _MASK


# The member blocks' writes and search (tasks/dc_gobj.py _Members), for the set-up and the
# recovery: not in the class, whose code a committed group keeps in RAM.
def put_id(mem, i, idb):
    j = (i % mem.cap) << 3
    mem.blocks[i // mem.cap][j:j + 8] = idb


def put_key(mem, i, key):
    cap = mem.cap
    o = (cap << 3) + ((i % cap) << 5)
    mem.blocks[i // cap][o:o + 32] = key


def find(mem, count, needle):
    # slot of the 8-byte id among the first `count` slots, else -1
    cap = mem.cap
    for bi in range(len(mem.blocks)):
        k = count - bi * cap
        if k <= 0:
            break
        # the needle among the block's first k (at most cap) 8-byte ids
        buf = mem.blocks[bi]
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
