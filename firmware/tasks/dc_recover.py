# The DC security module's recovery (tasks/dc_security.py): RECOVER, DREAM round 2 (BRIEF
# "Robust rounds"). recover() checks the request and answers at once for a small missing set,
# else queues the job, whose pad sums then run SLICE pair keys per kernel step (step()). In its
# own file so that its code is in RAM only while a RECOVER is answered: dc_security imports it
# for the request and keeps it while a job is queued. Refusals raise Refused before any state
# changes.
import struct
from micropython import const

import lopa_core as lopa
from tasks.dc_base import SLICE, Refused, _hex
from tasks.dc_group import _gid

_MASK = const(0xFFFFFFFF)
_E_BAD_ARGS = const(6)
_E_FAILED = const(7)
_F_SENT = const(2)  # as in tasks/dc_round.py: c went out in a CIPHERTEXT answer
_F_DONE = const(4)  # RECOVER answered; C erased


def recover(dc, ref, body):
    # Checks the request and answers, or queues the job that step() finishes.
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
        recover_slice(dc, job)
    else:
        dc._recover.append(job)


def recover_slice(dc, job):
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
    dc._ok(ref, struct.pack(">II", t, r))
    return True


def step(dc):
    # one slice of the first queued recovery; True when the queue is empty
    if recover_slice(dc, dc._recover[0]):
        dc._recover.pop(0)
    return not dc._recover
