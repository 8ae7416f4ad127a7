# A committed group's objects (tasks/dc_security.py): its state and round history (_Group) and
# the other members' ids and pair keys (_Members). In RAM while this meter is in a group; the
# code that works on them (tasks/dc_round.py: an interval's cold boundary, the blinding's
# slices, CIPHERTEXT; tasks/dc_group.py) only while it runs, then dropped again (C14 - C13,
# docs/BENCH.md). An object keeps its class and a class's methods keep their module's globals:
# so the classes are here, in a module that holds nothing else, and the hot boundary (the
# precomputed blinding added) is dc_security's own.
import struct
from array import array
from micropython import const

from tasks.dc_base import HIST

_BLOCK = const(25)  # member slots per RAM block: no buffer above 1000 B (a fragmented heap)


def _cap(n):
    return n - 1 if n - 1 < _BLOCK else _BLOCK


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

    def slot_of(self, t):
        for k in range(HIST):
            if self.h_f[k] and self.h_t[k] == t:
                return k
        return -1

    def start(self, t, slot, x):
        # the blinding job for interval t (its message is made by its first slice:
        # tasks/dc_round.py job_slice, whose code this boundary need not load)
        self.job_t = t
        self.job_i = 0
        self.job_acc = 0
        self.job_msg = None
        self.job_us = 0
        self.job_slot = slot
        self.job_x = x
