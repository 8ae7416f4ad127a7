# The DC security module's rounds (tasks/dc_security.py): a committed group's state (_Group),
# encrypting each closed interval, the blinding job that precomputes b(t+1) in idle steps,
# and CIPHERTEXT answers (the recovery is tasks/dc_recover.py). Part of that module, in
# its own file so that its code is in RAM only while this meter is in a group: DcSecurity
# imports it with the first group (a commit, or the groups loaded at boot) and drops it with
# the last (docs/hardware.md, "Memory"). Every function takes the DcSecurity object first.
import struct
import time
from array import array
from micropython import const

import lazy
import lopa_core as lopa
from tasks.dc_base import HIST, INLINE_MAX, SLICE, Refused, _hex
from tasks.dc_group import _gid, _u32, released, save_released

_MASK = const(0xFFFFFFFF)
_E_BAD_ARGS = const(6)
_E_FAILED = const(7)
_F_VALID = const(1)  # c is ready
_F_SENT = const(2)  # c went out in a CIPHERTEXT answer
# 4: RECOVER answered, C erased (set in tasks/dc_recover.py, which has these flags too)


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


def start_job(dc, g, t, slot, x):
    dc._jobs = True
    g.job_t = t
    g.job_i = 0
    g.job_acc = 0
    g.job_msg = lopa.round_msg(g.gid, t)
    g.job_us = 0
    g.job_slot = slot
    g.job_x = x


def job_slice(dc, g, count):
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
        if g.lam > 0:  # the noise's code in RAM only while it runs
            noise = lazy.call("lopa_noise", "noise_share", g.n, g.m, g.lam,
                              lambda: lopa.uniform_u32(dc._rand_u32()))
        else:
            noise = 0
        big_c = dc._rand_u32() if g.m else 0
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
            start_job(dc, g, g.last_t + 1, -1, 0)
        return True
    g.job_us += time.ticks_diff(time.ticks_us(), t0)
    return False


def interval(dc, t, x):
    for g in dc._groups.values():
        if t <= g.last_t:
            dc._port.log("lopa: interval %d already encrypted for %s" % (t, _hex(g.gid)))
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
            start_job(dc, g, t + 1, -1, 0)
        else:
            # Cold: the blinding was not ready (first interval after boot or commit,
            # or time moved): compute it now, at once for a small group, else in steps.
            g.h_f[slot] = 0
            g.h_c[slot] = 0
            if g.job_t == t and g.job_slot < 0:
                g.job_slot, g.job_x = slot, x & _MASK  # under way: let it finish
            else:
                start_job(dc, g, t, slot, x & _MASK)
            if g.others() <= INLINE_MAX:
                job_slice(dc, g, INLINE_MAX)


def ciphertext(dc, ref, body):
    gid, off = _gid(body, 0)
    if len(body) != off + 4:
        raise Refused(_E_BAD_ARGS, "malformed: gid t u32")
    t = _u32(body, off)
    g = dc._groups.get(gid)
    if g is None:
        raise Refused(_E_BAD_ARGS, "unknown group")
    k = g.slot_of(t)
    if k < 0 or not g.h_f[k] & _F_SENT:
        # Once per (gid, t): a t below the group's next is never released again (after a
        # power cut, or a clock set back, its c would carry a fresh C_i and noise: the
        # difference of two leaks x). The same c again, from RAM, is no new release.
        nxt = released(dc, gid)
        if t < nxt:
            raise Refused(_E_BAD_ARGS, "t %d already released (next %d)" % (t, nxt))
        if k < 0 or not g.h_f[k] & _F_VALID:
            raise Refused(_E_FAILED, "no value")
        if dc._reg is not None:  # the registrar's privacy budget
            lazy.call("tasks.dc_budget", "release", dc, g)
        rel = dict(dc._rel)
        rel[gid] = t + 1
        save_released(dc, rel, dc._rel_floor)  # on flash or nvram BEFORE c leaves
    g.h_f[k] |= _F_SENT
    dc._ok(ref, struct.pack(">II", t, g.h_c[k]))


def step(dc):
    # one slice of a blinding job: first one a boundary waits for
    wait = None
    for g in dc._groups.values():
        if g.job_t >= 0:
            if g.job_slot >= 0:  # a boundary waits: first
                job_slice(dc, g, SLICE)
                return
            if wait is None:
                wait = g
    if wait is None:
        dc._jobs = False
    else:
        job_slice(dc, wait, SLICE)
