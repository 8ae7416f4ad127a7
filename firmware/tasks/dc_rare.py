# The DC security module's code that runs once at boot (its key pair, the registrar's anchor,
# loading the committed groups from flash) or rarely: GROUPS, GROUP_DELETE. Part of tasks/dc_security.py, in its own file so that
# its code is in RAM only while it runs (lib/lazy.py). Refusals raise Refused before any state
# changes.
import gc
import json
import os
import struct
from micropython import const

import store
from tasks.dc_base import (
    GROUP_PREFIX,
    GROUP_SUFFIX,
    KEY_FILE,
    MAX_GROUPS_CAP,
    MIN_N,
    REF_N,
    REG_FILE,
    REL_FILE,
    REL_FMT,
    RESERVE,
    Refused,
    _hex,
    free,
)
from tasks.dc_group import _cap, _gid, _Members, group_ram, released, save_released

_HEAD = const(33)  # group file head: ver, gid_len, gid (16, zero-padded), n, m, lambda, my id
_FILE_VER = const(1)  # as tasks/dc_setup.py writes it
_E_BAD_ARGS = const(6)
_REL_BYTES = const(409)  # as tasks/dc_base.py REL_FMT


# -- the groups persisted on flash, loaded at boot ------------------------------------------
def load_groups(dc):
    try:
        names = os.listdir(dc._dir)
    except OSError:
        return
    seen = []
    for name in names:
        for suf in (".tmp", ".bak"):
            if name.endswith(suf):
                name = name[:-len(suf)]
        if name.startswith(GROUP_PREFIX) and name.endswith(GROUP_SUFFIX) and name not in seen:
            seen.append(name)
    for name in seen:
        path = dc._dir + "/" + name
        g = read_group(path)
        if g is None:
            dc._port.log("lopa: group file %s unreadable, skipped" % name)
            continue
        g.bytes = store.size(path)
        dc._groups[g.gid] = g
    load_released(dc)


def init(self, hw):
    # DcSecurity's state, made once at boot
    self._entropy = hw["entropy"]
    self._dir = hw.get("dir", "/data")
    self._key_path = self._dir + KEY_FILE
    self._reserve = hw.get("ram_reserve", RESERVE)
    self._sk = None
    self.pk = None
    k = store.load_bytes(self._key_path, None)
    if k is not None and len(k) == 64:
        self._sk, self.pk = bytes(k[:32]), bytes(k[32:])
    # The registrar's anchor and policy; b"" if its file is there but unreadable: then no
    # group is set up and nothing released (fail closed), None if there is none
    r = store.load_bytes(self._dir + REG_FILE, None)
    if r is not None and len(r) == 46:
        self._reg = bytes(r)
    else:
        self._reg = b"" if r is not None or store.size(self._dir + REG_FILE) else None
    self._groups = {}  # gid -> _Group
    self._nv = hw.get("nvram")  # a lib/nvrec.py Record, where the board has one
    self._rel = {}  # gid -> the next t it may release (tasks/dc_base.py released())
    self._rel_floor = 0  # ... for a gid not in _rel
    self._setup = None
    self._free0 = 0  # free heap before a GROUP_BEGIN loaded the set-up code (0: unknown)
    self._recover = []  # queued recoveries: [ref, group, t, C, slots, i, acc, round msg]
    self._t = -1  # the last closed interval seen
    self._jobs = False  # some group may have a blinding job: step() looks
    load_groups(self)


def load_released(dc):
    # The release table, from battery-backed RAM and flash (the higher t of the two per gid: a
    # board given nvram later keeps what its flash said). Entries of gids with no group fold
    # into the floor, so the table never holds more than the groups. A group never encrypts a
    # t below its entry again.
    fl = 0
    rel = {}
    raw = [store.load_bytes(dc._dir + REL_FILE, None)]
    if dc._nv is not None:
        v = dc._nv.load(REL_FMT)
        raw.append(v[0] if v else None)
    for b in raw:
        if b is None or len(b) != _REL_BYTES:
            continue
        f, cnt = struct.unpack_from(">QB", b, 0)
        if f > fl:
            fl = f
        for i in range(cnt if cnt <= MAX_GROUPS_CAP else MAX_GROUPS_CAP):
            o = 9 + 25 * i
            if not 1 <= b[o] <= 16:
                continue
            gid = bytes(b[o + 1:o + 1 + b[o]])
            nxt = struct.unpack_from(">Q", b, o + 17)[0]
            if nxt > rel.get(gid, 0):
                rel[gid] = nxt
    for gid in list(rel):
        if gid not in dc._groups:
            nxt = rel.pop(gid)
            if nxt > fl:
                fl = nxt
    dc._rel = rel
    dc._rel_floor = fl
    for gid, g in dc._groups.items():
        nxt = released(dc, gid)
        if nxt - 1 > g.last_t:
            g.last_t = nxt - 1


def _piece(head):
    # block size of a group file, from its head (store.load_bytes calls this)
    n = struct.unpack_from(">H", head, 18)[0]
    return 40 * _cap(n) if n >= MIN_N else 0


def read_group(path):
    parts = store.load_bytes(path, None, _HEAD, _piece)
    if parts is None or len(parts[0]) != _HEAD or parts[0][0] != _FILE_VER:
        return None
    head = parts[0]
    gl = head[1]
    if not 1 <= gl <= 16:
        return None
    n, m, lam, my_id = struct.unpack_from(">HBfQ", head, 18)
    mem = _Members(n, parts[1:])
    if len(mem.blocks) != (mem.k + mem.cap - 1) // mem.cap \
            or len(mem.blocks[-1]) != 40 * mem.cap:
        return None
    from tasks.dc_round import _Group  # the round code comes in with the first group

    return _Group(bytes(head[2:2 + gl]), n, m, lam, my_id, mem)


# -- GROUPS, GROUP_DELETE ---------------------------------------------------------------
def groups(dc, ref, meter_id, body, t0):
    gs = []
    for g in dc._groups.values():
        gs.append({"gid": _hex(g.gid), "n": g.n, "m": g.m, "lambda": g.lam,
                   "bytes": g.bytes, "enc_us_hot": g.enc_hot, "enc_us_cold": g.enc_cold})
    persisted = store.size(dc._key_path)
    for g in dc._groups.values():
        persisted += g.bytes
    mg = max_groups(dc)
    gc.collect()
    dc._ok(ref, json.dumps({
        "groups": gs, "max_groups": mg,
        "pending": _hex(dc._setup.gid) if dc._setup is not None else None,
        "ram_alloc": gc.mem_alloc(), "ram_free": gc.mem_free(),
        "persisted_bytes": persisted, "key": dc.pk is not None}).encode())


def group_delete(dc, ref, meter_id, body, t0):
    gid, off = _gid(body, 0)
    if off != len(body):
        raise Refused(_E_BAD_ARGS, "malformed: gid only")
    g = dc._groups.get(gid)
    s = dc._setup
    if g is None and (s is None or s.gid != gid):
        raise Refused(_E_BAD_ARGS, "unknown group")
    if s is not None and s.gid == gid:
        dc._drop_setup("set-up deleted")
    if g is not None:
        # its next t folds into the floor first: the gid made again cannot go back
        nxt = dc._rel.get(gid)
        if nxt is not None:
            rel = dict(dc._rel)
            del rel[gid]
            save_released(dc, rel, nxt if nxt > dc._rel_floor else dc._rel_floor)
        store.remove(dc._path(gid))
        del dc._groups[gid]
    dc._port.log("lopa: group %s deleted" % _hex(gid))
    dc._ok(ref, b"")


def max_groups(dc):
    # Groups of the size of the largest committed one (REF_N if none) that fit: those
    # committed, plus what the free heap above the reserve holds, capped at MAX_GROUPS_CAP.
    ref_n = 0
    for g in dc._groups.values():
        if g.n > ref_n:
            ref_n = g.n
    more = (free() - dc._reserve) // group_ram(ref_n or REF_N)
    return min(MAX_GROUPS_CAP, len(dc._groups) + (more if more > 0 else 0))
