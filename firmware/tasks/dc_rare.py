# The DC security module's code that runs once at boot (loading the committed groups from
# flash) or rarely (RECOVER, DREAM round 2). Part of tasks/dc_security.py, in its own file so
# that its code is in RAM only while it runs (lib/lazy.py); the recovery sums themselves run
# in kernel steps (tasks/dc_round.py recover_slice). Refusals raise Refused before any state
# changes.
import os
import struct
from micropython import const

import lopa_core as lopa
import store
from tasks.dc_security import (
    GROUP_PREFIX,
    GROUP_SUFFIX,
    MIN_N,
    SLICE,
    Refused,
    _cap,
    _gid,
    _hex,
    _Members,
)

_HEAD = const(33)  # group file head: ver, gid_len, gid (16, zero-padded), n, m, lambda, my id
_FILE_VER = const(1)  # as tasks/dc_setup.py writes it
_E_BAD_ARGS = const(6)
_E_FAILED = const(7)
_F_SENT = const(2)  # as in tasks/dc_security.py: c went out in a CIPHERTEXT answer
_F_DONE = const(4)  # RECOVER answered; C erased


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


# -- RECOVER (DREAM round 2) --------------------------------------------------------------------
def recover(dc, ref, body):
    # Checks the request and queues the recovery job; dc_round.recover_slice (it runs in
    # steps) sums the pads and answers.
    gid, off = _gid(body, 0)
    if len(body) < off + 6:
        raise Refused(_E_BAD_ARGS, "malformed: gid t u32 count u16")
    t, count = struct.unpack_from(">IH", body, off)
    off += 6
    if len(body) - off != 8 * count:
        raise Refused(_E_BAD_ARGS, "count %d does not match %d bytes"
                      % (count, len(body) - off))
    g = dc._groups.get(gid)
    if g is None:
        raise Refused(_E_BAD_ARGS, "unknown group")
    if not g.m:
        raise Refused(_E_FAILED, "plain group: no recovery")
    k = g.slot_of(t)
    if k < 0 or not g.h_f[k] & _F_SENT:
        raise Refused(_E_FAILED, "no ciphertext sent for t %d" % t)
    if g.h_f[k] & _F_DONE:
        raise Refused(_E_FAILED, "already answered for t %d" % t)
    if count > g.m:
        raise Refused(_E_BAD_ARGS, "%d missing > m %d" % (count, g.m))
    slots = []
    seen = []
    for i in range(count):
        idb = bytes(body[off + 8 * i:off + 8 * i + 8])
        if idb == g.my_b:
            raise Refused(_E_BAD_ARGS, "names this meter")
        if idb in seen:
            raise Refused(_E_BAD_ARGS, "repeats id %s" % _hex(idb))
        seen.append(idb)
        j = g.mem.find(g.others(), idb)
        if j < 0:
            raise Refused(_E_BAD_ARGS, "non-member %s" % _hex(idb))
        slots.append(j)
    big_c = g.h_C[k]
    g.h_C[k] = 0  # erased now; the job holds it until the answer goes
    g.h_f[k] |= _F_DONE
    dc._port.log("lopa: recover %s t %d |S| %d" % (_hex(g.gid), t, count))
    job = [ref, g, t, big_c, slots, 0, 0, lopa.round_msg(g.gid, t)]
    if count <= SLICE:
        dc._rounds().recover_slice(dc, job)
    else:
        dc._recover.append(job)
