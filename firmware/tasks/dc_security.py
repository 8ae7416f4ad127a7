# DC security module: LoPA aggregation for the data concentrator (docs/PROTOCOL.md, "LoPA
# kinds"; BRIEF "LoPA, precisely", "Robust rounds", "Distributed noise").
#
# It owns this meter's X25519 key pair (made here from the board's entropy, persisted
# atomically, the private key never leaves this object: no answer carries it), the groups
# (one persisted binary file per group: member ids and pair keys K_ij), and the rounds:
# at each interval close metrology sends ("interval_value", (t, x)) and every committed group
# gets c = x + n_i + b(t) + C_i(t) mod 2^32, kept in RAM for the last HIST intervals.
#
# Long work is cut into kernel steps, so metrology (realtime) runs between them:
#   - group set-up: ONE X25519 derivation per step; a chunk is answered when its keys are done;
#   - blinding b(t+1) + noise + C_i(t+1): SLICE pair keys per step, in idle time before the
#     boundary, so that encrypting at the boundary is one addition (enc_us_hot); the whole
#     precomputation is what encrypting would cost without it (enc_us_cold);
#   - recovery sums: SLICE pair keys per step.
# Its rarely run code is in modules of its own, in RAM only while needed (lib/lazy.py,
# docs/hardware.md "Memory"): the rounds (tasks/dc_round.py) while this meter is in a group,
# the set-up (tasks/dc_setup.py) while one is pending, loading and RECOVER (tasks/dc_rare.py).
# Requests come from cs_security as (ref, meter_id, payload bytes) and are answered with
# ("lopa_data", (ref, code, body)): code 0 and bytes, or an error code and a short text.
# Every refusal is logged (security log) and changes no state.
import gc
import struct
import time
from micropython import const

import lazy
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


class DcSecurity:
    def __init__(self, port, hw):
        self._port = port
        self._entropy = hw["entropy"]
        self._dir = hw.get("dir", "/data")
        self._key_path = self._dir + KEY_FILE
        self._reserve = hw.get("ram_reserve", RESERVE)
        self._sk = None
        self.pk = None
        k = store.load_bytes(self._key_path, None)
        if k is not None and len(k) == 64:
            self._sk, self.pk = bytes(k[:32]), bytes(k[32:])
        self._groups = {}  # gid -> _Group
        self._setup = None
        self._free0 = 0  # free heap before a GROUP_BEGIN loaded the set-up code (0: unknown)
        self._recover = []  # queued recoveries: [ref, group, t, C, slots, i, acc, round msg]
        self._t = -1  # the last closed interval seen
        self._jobs = False  # some group may have a blinding job: step() looks
        lazy.call("tasks.dc_rare", "load_groups", self)
        self._rounds()  # loaded with the groups; dropped if there is none

    # -- helpers ----------------------------------------------------------------------
    def _rand_u32(self):
        return int.from_bytes(self._entropy(4), "big")

    def _path(self, gid):
        return self._dir + "/" + GROUP_PREFIX + _hex(gid) + GROUP_SUFFIX

    def _ok(self, ref, body):
        self._port.send("cs_security", "lopa_data", (ref, 0, bytes(body)))

    def _refuse(self, ref, what, e):
        code, text = e.args
        self._port.log("lopa %s refused: %s" % (what, text))
        self._port.send("cs_security", "lopa_data", (ref, code, text))

    # -- requests -----------------------------------------------------------------------
    def handle(self, sender, kind, payload):
        if kind == "interval_value":
            if sender == "metrology":  # the policy lets no one else send it; checked anyway
                self._interval(payload[0], payload[1])
            return
        if sender != "cs_security":
            return
        ref, meter_id, body = payload
        t0 = time.ticks_us()
        try:
            if kind == "ciphertext":
                if not self._groups:
                    raise Refused(_E_BAD_ARGS, "unknown group")
                self._rounds().ciphertext(self, ref, body)
                return
            if kind == "recover":
                lazy.call("tasks.dc_rare", "recover", self, ref, body)
                return
            if kind in ("group_keys", "group_commit") and self._setup is None:
                raise Refused(_E_FAILED, "no pending set-up for this gid")
            if kind in ("keygen", "pubkey", "groups", "group_delete"):
                try:
                    lazy.call("tasks.dc_rare", kind, self, ref, meter_id, body, t0)
                finally:
                    if self._setup is None:
                        self._release()
            elif kind in ("group_begin", "group_keys", "group_commit"):
                if kind == "group_begin":
                    # What a group is admitted against: the heap free without the set-up's
                    # own code, which leaves again at the commit (tasks/dc_setup.py)
                    self._free0 = 0 if self._setup is not None else free()
                fn = getattr(self._setup_code(), kind)
                try:
                    fn(self, ref, meter_id, body, t0)
                finally:
                    if self._setup is None:
                        self._release()
        except Refused as e:
            self._refuse(ref, kind, e)
        except (ValueError, IndexError) as e:  # a short payload that struct could not unpack
            self._refuse(ref, kind, Refused(_E_BAD_ARGS, "malformed: %s" % e))
        except OSError as e:  # flash full or failing: nothing was committed
            self._refuse(ref, kind, Refused(_E_FAILED, "flash: %s" % e))
        except MemoryError:
            gc.collect()
            self._refuse(ref, kind, Refused(_E_FAILED, "out of memory"))

    @staticmethod
    def _setup_code():
        # tasks/dc_setup.py: the set-up's code, in RAM only while a set-up request runs or a
        # set-up is pending
        import sys

        mod = sys.modules.get("tasks.dc_setup")
        if mod is None:
            # Collected first, so that its code (kept while a set-up is pending) fills the
            # holes low in the heap rather than landing among garbage and splitting the
            # large free blocks that a WAN frame needs once the garbage is gone.
            gc.collect()
            from tasks import dc_setup as mod
        return mod

    def _release(self):
        lazy.drop("tasks.dc_setup")
        lazy.drop("x25519")  # only set-ups use it (lopa.pair_key, KEYGEN)
        if self._rounds() is None:  # the round code, dropped when no group is left
            gc.collect()

    def _drop_setup(self, why):
        s = self._setup
        self._setup = None
        if s is not None and s.work is not None:
            self._refuse(s.work_ref, "group_keys", Refused(_E_FAILED, why))

    # -- rounds: tasks/dc_round.py, in RAM while this meter is in a group -------------------
    def _rounds(self):
        # The round code (tasks/dc_round.py), imported while a group exists, dropped when none
        # is left (no group: nothing to encrypt, and a first group's set-up has it out of RAM).
        import sys

        mod = sys.modules.get("tasks.dc_round")
        if mod is None and self._groups:
            gc.collect()  # its code fills low holes rather than splitting the free blocks
            from tasks import dc_round as mod
        elif mod is not None and not self._groups:
            lazy.drop("tasks.dc_round")
            gc.collect()
            return None
        return mod

    def _interval(self, t, x):
        self._t = t
        if self._groups:
            self._rounds().interval(self, t, x)

    # -- idle work ----------------------------------------------------------------------
    def step(self):
        s = self._setup
        if s is not None and s.work:
            self._setup_code().derive_one(self, s)
            return
        if self._recover or self._jobs:
            mod = self._rounds()
            if mod is None:  # the last group went meanwhile: nothing left to do
                self._jobs = False
                self._recover = []
                return
            mod.step(self)
