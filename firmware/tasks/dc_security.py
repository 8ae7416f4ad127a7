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
# Its code is split by feature, each module in RAM only while needed (lib/lazy.py,
# docs/hardware.md "Memory"): the key pair (tasks/dc_keys.py, per request), the set-up
# (tasks/dc_setup.py, while one is pending), the rounds (tasks/dc_round.py, while this meter
# is in a group), the recovery (tasks/dc_recover.py, while a RECOVER is answered), loading the
# groups, GROUPS and GROUP_DELETE (tasks/dc_rare.py, per request). What they share is in
# tasks/dc_base.py; none of them imports this module or another feature module at load.
# Requests come from cs_security as (ref, meter_id, payload bytes) and are answered with
# ("lopa_data", (ref, code, body)): code 0 and bytes, or an error code and a short text.
# Every refusal is logged (security log) and changes no state.
import gc
import time
from micropython import const

import lazy
from tasks.dc_base import (  # noqa: F401  HIST, KEY_FILE: read by the bench and the tests
    GROUP_PREFIX,
    GROUP_SUFFIX,
    HIST,
    KEY_FILE,
    Refused,
    _hex,
    free,
)

_E_BAD_ARGS = const(6)  # an underscored const is the compiler's only: each module has its own
_E_FAILED = const(7)
_REST_MS = const(1000)  # an idle step's rest (kernel.py): a message ends it at once

class DcSecurity:
    def __init__(self, port, hw):
        self._port = port
        # its key pair, the registrar's anchor and the committed groups, read once at boot by
        # code that is in RAM only while it runs (tasks/dc_rare.py init)
        lazy.call("tasks.dc_rare", "init", self, hw)
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
        self._port.log_flood("lopa %s refused: %s" % (what, text))  # the head-end can repeat it
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
                try:
                    self._recovery().recover(self, ref, body)
                finally:
                    if not self._recover:
                        lazy.drop("tasks.dc_recover")
                return
            if kind == "pubkey":
                # C2 (S2): the key it holds, answered from RAM: no import, no collection
                if len(body):
                    raise Refused(_E_BAD_ARGS, "malformed: PUBKEY takes no payload")
                if self.pk is None:
                    raise Refused(_E_FAILED, "no key pair")
                us = time.ticks_diff(time.ticks_us(), t0)
                self._ok(ref, self.pk + us.to_bytes(4, "big"))
                return
            if kind in ("group_keys", "group_commit") and self._setup is None:
                raise Refused(_E_FAILED, "no pending set-up for this gid")
            if kind in ("keygen", "groups", "group_delete"):
                try:
                    if kind == "keygen":
                        lazy.call("tasks.dc_keys", kind, self, ref, meter_id, body, t0)
                    else:
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

    @staticmethod
    def _recovery():
        # tasks/dc_recover.py: in RAM for a RECOVER request and while its job is queued
        import sys

        mod = sys.modules.get("tasks.dc_recover")
        if mod is None:
            from tasks import dc_recover as mod
        return mod

    # -- rounds: tasks/dc_round.py (and dc_group.py), in RAM while this meter is in a group ---
    def _rounds(self):
        # The round code (tasks/dc_round.py), imported while a group exists, dropped when none
        # is left (no group: nothing to encrypt, and a first group's set-up has it out of RAM).
        import sys

        mod = sys.modules.get("tasks.dc_round")
        if mod is None and self._groups:
            gc.collect()  # its code fills low holes rather than splitting the free blocks
            from tasks import dc_round as mod
        elif not self._groups:
            # the groups' code (tasks/dc_group.py, its member blocks and release table) with it
            if mod is not None or "tasks.dc_group" in sys.modules:
                lazy.drop("tasks.dc_round")
                lazy.drop("tasks.dc_group")
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
            try:
                self._setup_code().derive_one(self, s)
            except MemoryError:
                # Nothing of that derivation counted (derive_one): again at the next step,
                # after a collection; the third in a row refuses the chunk, which changes no
                # state (the head-end may send it again), rather than a head-end left waiting
                gc.collect()
                s.oom += 1
                if s.oom >= 3:
                    ref = s.work_ref
                    s.work = None
                    s.oom = 0
                    self._refuse(ref, "group_keys", Refused(_E_FAILED, "out of memory"))
            return
        if self._recover or self._jobs:
            mod = self._rounds()
            if mod is None:  # the last group went meanwhile: nothing left to do
                self._jobs = False
                if self._recover:
                    self._recover = []
                    lazy.drop("tasks.dc_recover")
                return
            if self._recover:  # a slice of a recovery first, else of a blinding job
                if self._recovery().step(self):
                    lazy.drop("tasks.dc_recover")
                return
            mod.step(self)
            return
        # Nothing to do: all its work comes in messages (a set-up chunk, an interval's value, a
        # recovery), and the kernel makes the step due when one is handled; until then it rests
        return _REST_MS
