# The DC security module's shared definitions (tasks/dc_security.py and its feature modules:
# dc_keys, dc_setup, dc_round, dc_recover, dc_rare): limits, the Refused error, the request
# parsers and the member blocks (_Members). Every module of the DC security module imports
# from here and none from another, so there is no import circle; this module is in RAM with
# dc_security (it is what a group's state is made of), the feature modules only while needed.
import gc
import struct
from micropython import const

import store

KEY_FILE = "/dc_key.bin"  # under the data directory (hw["dir"], default /data)
GROUP_PREFIX = "lopa_"
GROUP_SUFFIX = ".grp"
MIN_N = const(3)
MAX_N = const(512)
CHUNK_MAX = const(25)
HIST = const(16)  # intervals of ciphertexts kept per group
SLICE = const(8)  # PRF evaluations per step (blinding, recovery)
INLINE_MAX = const(32)  # a cold boundary computes a blinding of up to this many keys at once
MAX_GROUPS_CAP = const(16)
RESERVE = const(16384)  # heap left free for the rest of the meter when admitting a group
_GROUP_BASE = const(768)  # a group's RAM besides ids and keys: objects, history, job state
REF_N = const(50)  # max_groups is counted for groups this size when none is committed
_BLOCK = const(25)  # member slots per RAM block: no buffer above 1000 B (a fragmented heap)
_E_BAD_ARGS = const(6)
_E_FAILED = const(7)
# Once per (gid, t): the table of the next t each group may release (a t below it never leaves
# the meter again, whatever its clock does), and the floor for any other gid (a deleted group's
# next t folds into it, so a group made again under the same gid cannot go back). On flash, or
# in battery-backed RAM where the board has it (lib/nvrec.py): written BEFORE a ciphertext leaves.
REL_FILE = "/dc_released.bin"
REL_FMT = "<409s"  # the table in a fixed size: floor u64, count u8, 16 x (gid_len, gid 16, t u64)
_REL_BYTES = const(409)
_REL_REC = const(25)
# The neutral registrar's trust anchor and group policy, installed at provisioning over the
# REPL (host_tools/registrar.py): K_reg (32, this meter's key shared with the registrar alone),
# min group size u16, lambda_min f32, epsilon_max f32, sensitivity delta f32 (46 bytes). With it
# a group is committed only with the registrar's tag over the whole member list
# (tasks/dc_setup.py group_commit), and within the privacy budget (tasks/dc_budget.py).
REG_FILE = "/lopa_reg.bin"


class Refused(Exception):
    # A refusal: (code, short text). Raised before any state is touched.
    pass


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


def _hex(b):
    import binascii

    return binascii.hexlify(b).decode()


def _cap(n):
    return n - 1 if n - 1 < _BLOCK else _BLOCK


def group_ram(n):
    # a group's RAM: its blocks of ids and keys, and the rest (objects, round history)
    cap = _cap(n)
    return (40 * cap + 16) * ((n - 2 + cap) // cap) + _GROUP_BASE


def free():
    gc.collect()
    return gc.mem_free()


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
