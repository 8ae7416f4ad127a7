# The DC security module's group set-up (tasks/dc_security.py): GROUP_BEGIN, GROUP_KEYS with one
# X25519 derivation per kernel step, GROUP_COMMIT. Part of that module, in its own file so that
# its code is in RAM only while it works: dc_security imports it for one of these requests and
# drops it again unless a set-up is pending (on a 100 KB heap every kilobyte of resident
# bytecode counts). The key pair is in tasks/dc_keys.py, GROUPS and GROUP_DELETE in
# tasks/dc_rare.py.
# Every function here takes the DcSecurity object first and the request as
# (ref, meter_id, body, t0); refusals raise Refused before any state changes.
import gc
import hashlib
import struct
import time
from micropython import const

import lopa_core as lopa
import store
import lazy
from tasks.dc_base import CHUNK_MAX, MAX_GROUPS_CAP, MAX_N, MIN_N, Refused, _hex, free
from tasks.dc_group import _gid, _Members, group_ram, released

_REC = const(40)  # id u64 + pk 32
_E_BAD_ARGS = const(6)
_E_FAILED = const(7)
_FILE_VER = const(1)
# RAM the round code (tasks/dc_round.py) takes, which the first group brings in: its objects on
# the 64-bit VM (about half that on a Cortex-M)
_ROUND_CODE = const(1536)


class Setup:
    # A pending set-up (RAM only: a power cut discards it).
    def __init__(self, gid, n, m, lam, my_id):
        self.gid = gid
        self.n = n
        self.m = m
        self.lam = lam
        self.my_id = my_id
        self.my_b = struct.pack(">Q", my_id)
        self.pads = None  # hmac_pads(gid), made by the first derivation
        self.oom = 0  # derivations in a row that found no memory (dc_security.step)
        self.mem = _Members(n)
        self.got = 0  # others accepted (chunks done)
        self.received = 0  # members accepted, this meter included
        self.self_seen = False
        self.seq = 0  # next chunk expected
        # the member list's digest, record by record in the order received (id u64 + pk 32):
        # h = SHA-256(h + record), from 32 zero bytes; what the registrar's tag covers
        self.h = bytes(32)
        self.work_h = None
        self.us = 0  # sum of the K_ij derivation times (C3)
        # the chunk being derived: each member's public key waits in its key slot (staged
        # beyond `got`) until its pair key replaces it, so the request's payload is not kept
        self.work = None  # a chunk: derivations left (None: no chunk under way)
        self.work_ref = 0
        self.work_count = 0
        self.work_others = 0
        self.work_self = False
        self.work_us = 0  # the chunk: parsing and derivations
        self.work_dus = 0  # its derivations only


def _x25519(fn, *args):
    # fn(*args), an X25519, with the run-time GC threshold (meter.py) off: in pure Python (the
    # VM, a port without the inline assembler) one X25519 leaves ~100 KB of garbage big ints,
    # which the threshold would collect dozens of times over. All of it is garbage, so leaving
    # it to the collection on a full heap does not spoil the heap's layout.
    th = gc.threshold()
    gc.threshold(-1)
    try:
        return fn(*args)
    finally:
        gc.threshold(th)


def group_begin(dc, ref, meter_id, body, t0):
    gid, off = _gid(body, 0)
    if len(body) != off + 7:
        raise Refused(_E_BAD_ARGS, "malformed: gid n u16 m u8 lambda f32")
    n, m, lam = struct.unpack_from(">HBf", body, off)
    if n < MIN_N or n > MAX_N:
        raise Refused(_E_BAD_ARGS, "n %d outside 3..512" % n)
    if m and not 1 <= m <= n - 2:
        raise Refused(_E_BAD_ARGS, "m %d outside 1..n-2" % m)
    if lam != lam or lam < 0 or lam > 3.0e38:
        raise Refused(_E_BAD_ARGS, "lambda must be 0 or > 0")
    reg = dc._reg
    if reg is not None:  # the registrar's policy, never the head-end's
        if not reg:
            raise Refused(_E_FAILED, "the registrar's anchor is unreadable")
        min_n, lam_min = struct.unpack_from(">Hf", reg, 32)
        if n < min_n:
            raise Refused(_E_BAD_ARGS, "n %d below the registrar's minimum %d" % (n, min_n))
        if lam < lam_min or lam <= 0:
            raise Refused(_E_BAD_ARGS, "lambda %g below the registrar's minimum %g"
                          % (lam, lam_min))
        lazy.call("tasks.dc_budget", "join", dc, gid, lam)
    if dc._sk is None:
        raise Refused(_E_FAILED, "no key pair")
    others = len(dc._groups) - (1 if gid in dc._groups else 0)
    # Admitted if, once it is committed, the rest of the meter keeps the reserve: the heap free
    # now, without this code (dc._free0, taken before it was loaded; else now, with it), less
    # the group and, for a first group, the round code it brings in. A pending set-up being
    # replaced still counts as used here: refusing leaves it.
    avail = dc._free0 or free()
    dc._free0 = 0
    if not dc._groups:
        avail -= _ROUND_CODE
    if others >= MAX_GROUPS_CAP or avail - group_ram(n) < dc._reserve:
        raise Refused(_E_FAILED, "no memory for another group (max_groups %d)"
                      % lazy.call("tasks.dc_rare", "max_groups", dc))
    try:
        setup = Setup(gid, n, m, lam, meter_id)
    except MemoryError:  # free, but not in one piece
        setup = None
        gc.collect()
        raise Refused(_E_FAILED, "no memory for another group (max_groups %d)"
                      % lazy.call("tasks.dc_rare", "max_groups", dc))
    dc._drop_setup("set-up replaced")
    dc._setup = setup
    dc._port.log("lopa: set-up %s n %d m %d" % (_hex(gid), n, m))
    dc._ok(ref, struct.pack(">I", time.ticks_diff(time.ticks_us(), t0)))


def pending(dc, gid):
    s = dc._setup
    if s is None or s.gid != gid:
        raise Refused(_E_FAILED, "no pending set-up for this gid")
    if s.work is not None:
        raise Refused(_E_FAILED, "busy: chunk %d still deriving" % (s.seq))
    return s


def group_keys(dc, ref, meter_id, body, t0):
    gid, off = _gid(body, 0)
    if len(body) < off + 3:
        raise Refused(_E_BAD_ARGS, "malformed: gid seq u16 count u8")
    seq, count = struct.unpack_from(">HB", body, off)
    off += 3
    s = pending(dc, gid)
    if len(body) - off != count * _REC:
        raise Refused(_E_BAD_ARGS, "count %d does not match %d bytes (40 per member: "
                      "id u64, pk 32)" % (count, len(body) - off))
    if count < 1 or count > CHUNK_MAX:
        raise Refused(_E_BAD_ARGS, "count %d outside 1..25" % count)
    if seq != s.seq:
        raise Refused(_E_BAD_ARGS, "chunk %d out of order or repeated (expected %d)"
                      % (seq, s.seq))
    if s.received + count > s.n:
        raise Refused(_E_BAD_ARGS, "count %d exceeds n %d (have %d)"
                      % (count, s.n, s.received))
    my_pk = dc.pk
    has_self = False
    # Each other member is staged in the next slot beyond s.got as it is checked: its id, and
    # its public key in the slot of the pair key that replaces it. Nothing counts until every
    # key of the chunk is derived (chunk_done), so a refusal changes no state; and no list of
    # ids or keys is built (on the 64-bit VM a 32-byte bytes object takes 96 bytes).
    mem = s.mem
    mv = memoryview(body)
    n = 0
    h = s.h
    for k in range(count):
        o = off + k * _REC
        d = hashlib.sha256(h)
        d.update(mv[o:o + _REC])
        h = d.digest()
        idb = bytes(mv[o:o + 8])
        if idb == s.my_b:
            if s.self_seen or has_self:
                raise Refused(_E_BAD_ARGS, "duplicate member id %s" % _hex(idb))
            if bytes(mv[o + 8:o + _REC]) != my_pk:
                raise Refused(_E_BAD_ARGS, "this meter's id with another public key")
            has_self = True
            continue
        if mem.find(s.got + n, idb) >= 0:
            raise Refused(_E_BAD_ARGS, "duplicate member id %s" % _hex(idb))
        if bytes(mv[o + 8:o + _REC]) == my_pk:
            raise Refused(_E_BAD_ARGS, "this meter's public key under id %s" % _hex(idb))
        mem.put_id(s.got + n, idb)
        mem.put_key(s.got + n, mv[o + 8:o + _REC])
        n += 1
    if not has_self and not s.self_seen and s.received + count == s.n:
        raise Refused(_E_BAD_ARGS, "this meter is not in the member list")
    mv = body = None
    s.work = n  # slots s.got .. s.got + n - 1 to derive, the last first
    s.oom = 0  # a chunk starts with no failed derivation behind it
    s.work_h = h
    s.work_ref = ref
    s.work_count = count
    s.work_others = n
    s.work_self = has_self
    s.work_us = time.ticks_diff(time.ticks_us(), t0)
    s.work_dus = 0
    if not n:
        chunk_done(dc, s)


def derive_one(dc, s):
    # ONE X25519 + HKDF: the unit of work of one step during set-up.
    t0 = time.ticks_us()
    # the next slot, the last first; s.work moves on only once its key is in it, so a
    # derivation that raised (MemoryError: dc_security.step) is done again, never skipped
    slot = s.got + s.work - 1
    idb = bytes(s.mem.id_at(slot))
    pk = s.mem.key_at(slot)  # the member's public key, staged there by group_keys
    if s.pads is None:
        s.pads = lopa.hmac_pads(s.gid)  # the HKDF salt's pads, once for the whole set-up
    try:
        k = _x25519(lopa.pair_key_pads, dc._sk, pk, s.pads, lopa.pair_info_b(s.my_b, idb))
    except ValueError:
        # low-order point (all-zero X25519 output): the chunk is undone, nothing counts
        ref = s.work_ref
        s.work = None
        dc._refuse(ref, "group_keys", Refused(
            _E_BAD_ARGS, "low-order public key for id %s" % _hex(idb)))
        return
    s.mem.put_key(slot, k)
    s.work -= 1
    s.oom = 0
    dt = time.ticks_diff(time.ticks_us(), t0)
    s.work_us += dt
    s.work_dus += dt
    if not s.work:
        chunk_done(dc, s)


def chunk_done(dc, s):
    s.got += s.work_others
    s.received += s.work_count
    s.self_seen = s.self_seen or s.work_self
    s.h = s.work_h
    s.seq += 1
    s.us += s.work_dus
    ref = s.work_ref
    s.work = None
    dc._ok(ref, struct.pack(">HHI", s.received, s.got, s.work_us))

def group_tag(key, gid, n, m, lam, h):
    # the registrar's tag for this meter over the group: HMAC-SHA256(K_reg, "lopa-group" +
    # gid_len + gid + n u16 + m u8 + lambda f32 + the member list's digest)
    from hmac_sha256 import hmac_sha256

    return hmac_sha256(key, b"lopa-group" + bytes((len(gid),)) + gid
                       + struct.pack(">HBf", n, m, lam) + h)


def group_commit(dc, ref, meter_id, body, t0):
    gid, off = _gid(body, 0)
    if off != len(body) and off + 32 != len(body):
        raise Refused(_E_BAD_ARGS, "malformed: gid, and the registrar's tag (32)")
    s = pending(dc, gid)
    if s.received != s.n or not s.self_seen:
        raise Refused(_E_FAILED, "commit before all members arrived (%d of %d)"
                      % (s.received, s.n))
    reg = dc._reg
    if reg is not None:
        # Every member's (id, key), n, m and lambda as the registrar approved them for this
        # meter: the head-end alone cannot make a member (a ghost) or change the group.
        if off == len(body):
            raise Refused(_E_BAD_ARGS, "no registrar certificate for this group")
        want = group_tag(reg[:32], gid, s.n, s.m, s.lam, s.h)
        bad = 0
        for i in range(32):  # every byte compared: the time says nothing of where it differs
            bad |= want[i] ^ body[off + i]
        if bad:
            raise Refused(_E_BAD_ARGS, "the registrar's certificate does not match the group")
    # The derivations are done: X25519 leaves RAM before the round code comes in, and the
    # round code comes in before anything is persisted: a commit without room for it is
    # refused with nothing on flash (the set-up stays pending; GROUP_COMMIT may be sent again).
    lazy.drop("x25519")
    gc.collect()
    from tasks import dc_round

    path = dc._path(gid)
    head = bytes((_FILE_VER, len(gid))) + gid + bytes(16 - len(gid)) \
        + struct.pack(">HBfQ", s.n, s.m, s.lam, s.my_id)
    store.save_bytes(path, [head] + s.mem.blocks)
    g = dc_round._Group(gid, s.n, s.m, s.lam, s.my_id, s.mem)
    g.bytes = store.size(path)
    old = dc._groups.get(gid)
    if old is not None:
        g.last_t = old.last_t
    if released(dc, gid) - 1 > g.last_t:  # once per (gid, t), for a gid made again too
        g.last_t = released(dc, gid) - 1
    dc._groups[gid] = g
    dc._setup = None
    dc._port.log("lopa: group %s committed n %d" % (_hex(gid), s.n))
    if dc._t >= 0:
        dc_round.start_job(dc, g, dc._t + 1, -1, 0)
    dc._ok(ref, struct.pack(">HII", s.n, s.us, g.bytes))
