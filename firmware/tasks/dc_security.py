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
# Requests come from cs_security as (ref, meter_id, payload bytes) and are answered with
# ("lopa_data", (ref, code, body)): code 0 and bytes, or an error code and a short text.
# Every refusal is logged (security log) and changes no state.
import gc
import struct
import time
from array import array
from micropython import const

import lazy
import lopa_core as lopa
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
GROUP_BASE = const(768)  # a group's RAM besides ids and keys: objects, history, job state
REF_N = const(50)  # max_groups is counted for groups this size when none is committed
BLOCK = const(25)  # member slots per RAM block: no buffer above 1000 B (a fragmented heap)
_MASK = const(0xFFFFFFFF)
_E_BAD_ARGS = const(6)
_E_FAILED = const(7)
_F_VALID = const(1)  # c is ready
_F_SENT = const(2)  # c went out in a CIPHERTEXT answer
# 4: RECOVER answered, C erased (set in tasks/dc_rare.py, which has these flags too)


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


def _index8(buf, count, needle):
    # slot of the 8-byte needle among the first `count` 8-byte records of buf, else -1
    end = count << 3
    i = buf.find(needle, 0, end)
    while i >= 0:
        if not i & 7:
            return i >> 3
        i = buf.find(needle, i + 1, end)
    return -1


def _cap(n):
    return n - 1 if n - 1 < BLOCK else BLOCK


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
            j = _index8(self.blocks[bi], k if k < cap else cap, needle)
            if j >= 0:
                return bi * cap + j
        return -1


class _Group:
    # A committed group: the other members' ids and keys (_Members), and the rounds, in RAM.
    def __init__(self, gid, n, m, lam, my_id, members):
        self.gid = gid
        self.n = n
        self.m = m
        self.lam = lam
        self.my_id = my_id
        self.my_b = struct.pack(">Q", my_id)
        self.mem = members
        self.bytes = 0  # persisted file size
        self.last_t = -1  # never encrypt one interval twice
        self.h_t = array("I", bytes(4 * HIST))
        self.h_c = array("I", bytes(4 * HIST))
        self.h_C = array("I", bytes(4 * HIST))
        self.h_f = bytearray(HIST)
        self.h_x = 0  # slot written next
        # precomputed x-independent part for interval pre_t: b + n_i + C_i
        self.pre_t = -1
        self.pre = 0
        self.pre_C = 0
        # the blinding job (target job_t; job_slot >= 0: a cold boundary waits for it)
        self.job_t = -1
        self.job_i = 0
        self.job_acc = 0
        self.job_msg = None
        self.job_us = 0
        self.job_slot = -1
        self.job_x = 0
        self.enc_hot = None
        self.enc_cold = None

    def others(self):
        return self.n - 1

    def slot_of(self, t):
        for k in range(HIST):
            if self.h_f[k] and self.h_t[k] == t:
                return k
        return -1

    def pads(self, slots, i, end, msg, acc):
        # acc + sum of s_ij * PRF(K_ij, t) over slots[i:end] (slots None: all others)
        mem = self.mem
        my_b = self.my_b
        while i < end:
            j = i if slots is None else slots[i]
            v = lopa.prf_msg(mem.key_at(j), msg)
            if my_b < mem.id_at(j):
                acc += v
            else:
                acc -= v
            i += 1
        return acc & _MASK


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
        self._recover = []  # queued recoveries: [ref, group, t, C, slots, i, acc, round msg]
        self._t = -1  # the last closed interval seen
        self._jobs = False  # some group may have a blinding job: step() looks
        lazy.call("tasks.dc_rare", "load_groups", self)

    # -- helpers ----------------------------------------------------------------------
    def _rand_u32(self):
        return int.from_bytes(self._entropy(4), "big")

    def _rnd(self):
        return lopa.uniform_u32(self._rand_u32())

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
                self._ciphertext(ref, body)
                return
            if kind == "recover":
                lazy.call("tasks.dc_rare", "recover", self, ref, body)
                return
            if kind in ("group_keys", "group_commit") and self._setup is None:
                raise Refused(_E_FAILED, "no pending set-up for this gid")
            if kind in ("keygen", "pubkey", "group_begin", "group_keys", "group_commit",
                        "groups", "group_delete"):
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
        # tasks/dc_setup.py: the code of the rare requests, in RAM only while one runs or a
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
        gc.collect()

    def _drop_setup(self, why):
        s = self._setup
        self._setup = None
        if s is not None and s.work is not None:
            self._refuse(s.work_ref, "group_keys", Refused(_E_FAILED, why))

    # -- rounds -------------------------------------------------------------------------
    def _start_job(self, g, t, slot, x):
        self._jobs = True
        g.job_t = t
        g.job_i = 0
        g.job_acc = 0
        g.job_msg = lopa.round_msg(g.gid, t)
        g.job_us = 0
        g.job_slot = slot
        g.job_x = x

    def _job_slice(self, g, count):
        # `count` pair keys of the blinding job; when done, the x-independent part is ready
        t0 = time.ticks_us()
        i = g.job_i
        end = i + count
        k = g.others()
        if end > k:
            end = k
        g.job_acc = g.pads(None, i, end, g.job_msg, g.job_acc)
        g.job_i = i = end
        if i >= k:
            noise = lazy.call("lopa_noise", "noise_share", g.n, g.m, g.lam, self._rnd) \
                if g.lam > 0 else 0  # the noise's code in RAM only while it runs
            big_c = self._rand_u32() if g.m else 0
            g.pre_t = g.job_t
            g.pre_C = big_c
            g.pre = (g.job_acc + noise + big_c) & _MASK
            g.job_msg = None
            g.job_t = -1
            slot = g.job_slot
            if slot >= 0:  # a cold boundary waits for this: finish its ciphertext now
                g.h_c[slot] = (g.job_x + g.pre) & _MASK
                g.h_C[slot] = g.pre_C
                g.h_f[slot] = _F_VALID
                g.pre_t = -1
            g.job_us += time.ticks_diff(time.ticks_us(), t0)
            g.enc_cold = g.job_us
            if slot >= 0:
                self._start_job(g, self.next_t(g), -1, 0)
            return True
        g.job_us += time.ticks_diff(time.ticks_us(), t0)
        return False

    def next_t(self, g):
        return g.last_t + 1

    def _interval(self, t, x):
        self._t = t
        for g in self._groups.values():
            if t <= g.last_t:
                self._port.log("lopa: interval %d already encrypted for %s" % (t, _hex(g.gid)))
                continue
            g.last_t = t
            slot = g.h_x
            g.h_x = (slot + 1) % HIST
            g.h_t[slot] = t
            g.h_C[slot] = 0
            if g.pre_t == t:
                t0 = time.ticks_us()
                g.h_c[slot] = (x + g.pre) & _MASK
                g.enc_hot = time.ticks_diff(time.ticks_us(), t0)
                g.h_C[slot] = g.pre_C
                g.h_f[slot] = _F_VALID
                g.pre_t = -1
                g.pre = g.pre_C = 0
                self._start_job(g, t + 1, -1, 0)
            else:
                # Cold: the blinding was not ready (first interval after boot or commit,
                # or time moved): compute it now, at once for a small group, else in steps.
                g.h_f[slot] = 0
                g.h_c[slot] = 0
                if g.job_t == t and g.job_slot < 0:
                    g.job_slot, g.job_x = slot, x & _MASK  # under way: let it finish
                else:
                    self._start_job(g, t, slot, x & _MASK)
                if g.others() <= INLINE_MAX:
                    self._job_slice(g, INLINE_MAX)

    def _ciphertext(self, ref, body):
        gid, off = _gid(body, 0)
        if len(body) != off + 4:
            raise Refused(_E_BAD_ARGS, "malformed: gid t u32")
        t = _u32(body, off)
        g = self._groups.get(gid)
        if g is None:
            raise Refused(_E_BAD_ARGS, "unknown group")
        k = g.slot_of(t)
        if k < 0 or not g.h_f[k] & _F_VALID:
            raise Refused(_E_FAILED, "no value")
        g.h_f[k] |= _F_SENT
        self._ok(ref, struct.pack(">II", t, g.h_c[k]))

    def _recover_slice(self, job):
        ref, g, t, big_c, slots, i, acc, msg = job
        end = i + SLICE
        if end > len(slots):
            end = len(slots)
        acc = g.pads(slots, i, end, msg, acc)
        job[5] = i = end
        job[6] = acc
        if i < len(slots):
            return False
        r = (big_c + acc) & _MASK
        job[3] = 0
        self._ok(ref, struct.pack(">II", t, r))
        return True

    # -- idle work ----------------------------------------------------------------------
    def step(self):
        s = self._setup
        if s is not None and s.work:
            self._setup_code().derive_one(self, s)
            return
        if self._recover:
            if self._recover_slice(self._recover[0]):
                self._recover.pop(0)
            return
        if not self._jobs:
            return  # idle: nothing allocated, every 5 ms
        wait = None
        for g in self._groups.values():
            if g.job_t >= 0:
                if g.job_slot >= 0:  # a boundary waits: first
                    self._job_slice(g, SLICE)
                    return
                if wait is None:
                    wait = g
        if wait is None:
            self._jobs = False
        else:
            self._job_slice(wait, SLICE)
