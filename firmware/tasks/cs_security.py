# CS security module: the end-to-end channel with the central system. Every
# inbound frame comes here first (from comm); only frames that verify (MAC
# under this meter's key, meter id, a counter above the last accepted) are
# turned into requests, and those go to tasks only through the policy. Each
# answer goes back authenticated, encrypted where it carries personal data.
# Every rejected frame is logged in the security log (under a flood, up to the kernel's rate
# limit, the rest counted: kernel.py). A frame whose MAC has not verified gets silence, whatever
# is wrong with it: an answer bound to the ref in its unauthenticated header would be taken by
# the head-end for the answer to its own command of that counter (docs/SECURITY.md, "The WAN:
# answers and counters").
# Roles (policy.py WAN_ROLES): operator, aggregator and supplier each have their own keys and
# their own command counters (each role's head-end counts on its own, so one role's stream
# cannot make another's look replayed, and a replay is caught within each stream). A frame's
# role picks the keys its MAC is checked with; an authentic frame of a kind its role may not
# send is refused with POLICY, to that role, and changes nothing. The uplink counter is one for
# all roles: its values never repeat, and each role's keys are its own.
import gc
import json
from micropython import const

import lazy
import seal
import store
import wan

KEYS = "/data/cs_keys.json"
COUNTERS = "/data/cs_ctr.json"
# Counters persisted in steps: one flash write per RESERVE frames each way (at a READ an
# interval: one in 170 days; 32 cost a Pyboard's FAT 24 erases a day of one sector,
# docs/hardware.md "Flash wear"). A reboot skips what was reserved: 2^32 / 16384 = 262,144
# reboots' worth of counters.
RESERVE = const(16384)
MAX_PENDING = const(8)

# The kinds that only read. Any other kind may change the meter: its counter is on flash
# ("chg") before it is carried out, so a REPLAY answer can tell the head-end whether a command
# with that counter may have been carried out (docs/SECURITY.md). Matches host_tools/headend/
# client.py RETRY_SAFE.
_READS = (wan.K_INFO, wan.K_READ, wan.K_PROFILE, wan.K_LOGS, wan.K_STATS, wan.K_PUBKEY,
          wan.K_GROUPS, wan.K_CREDIT, wan.K_SWITCH_STATUS)

# Request kind -> (task, message kind, answer encrypted), 4 entries a route in one flat tuple
# (RAM: one object, not one tuple a route); a tuple: nothing to alter.
_ROUTES = (
    wan.K_READ, "metrology", "read", True,
    wan.K_PROFILE, "metrology", "profile", True,
    wan.K_CALIBRATE, "metrology", "calibrate", False,
    wan.K_TIME_SET, "clock", "time_set", False,
    wan.K_STATS, "kernel", "stats", False,
    wan.K_LOGS, "kernel", "log_read", True,
    # LoPA (DC security module): binary payloads both ways; every answer ENC except the
    # public ones (PROTOCOL.md "LoPA kinds")
    wan.K_KEYGEN, "dc_security", "keygen", False,
    wan.K_PUBKEY, "dc_security", "pubkey", False,
    wan.K_GROUP_BEGIN, "dc_security", "group_begin", True,
    wan.K_GROUP_KEYS, "dc_security", "group_keys", True,
    wan.K_GROUP_COMMIT, "dc_security", "group_commit", True,
    wan.K_CIPHERTEXT, "dc_security", "ciphertext", True,
    wan.K_RECOVER, "dc_security", "recover", True,
    wan.K_GROUPS, "dc_security", "groups", True,
    wan.K_GROUP_DELETE, "dc_security", "group_delete", True,
    # Off-switch (binary; verified again on core 1 with the off-switch key) and prepaid credit
    # (PROTOCOL.md "Off-switch and credit kinds")
    wan.K_SWITCH, "offswitch", "switch", True,
    wan.K_SWITCH_STATUS, "offswitch", "switch_status", True,
    wan.K_TOPUP, "credit", "topup", True,
    wan.K_TARIFF, "credit", "tariff", False,
    wan.K_CREDIT, "credit", "credit_read", True,
    wan.K_PREPAID, "credit", "prepaid", False,
    # Sealing: the kernel owns the console (PROTOCOL.md "Seal kinds", lib/seal.py)
    wan.K_SEAL, "kernel", "seal", False,
    wan.K_UNSEAL, "kernel", "seal", False,
)


def _route_of(kind):
    for j in range(0, len(_ROUTES), 4):
        if _ROUTES[j] == kind:
            return j
    return -1


class CsSecurity:
    def __init__(self, port, hw):
        self._port = port
        self._pending = {}
        self.accepted = 0
        self.rejected = 0
        # Its keys and counters (per role) and the roles' tables, read once at boot: that
        # code is in RAM only while it runs (tasks/cs_boot.py)
        lazy.call("tasks.cs_boot", "init", self, hw, KEYS, COUNTERS)

    # -- counters --------------------------------------------------------------
    def _reserve(self, down_res, up_res, changed):
        # The marks move in RAM only once they are on flash: a failed write leaves them where
        # they were, so no counter beyond what flash holds is ever used (after a reboot the
        # meter starts from flash: nothing is used twice). The caller then refuses.
        try:
            store.save(COUNTERS, {"down": down_res, "up": up_res, "chg": changed})
        except Exception as e:  # noqa: BLE001 - OSError from the flash, or any other failure
            try:
                self._port.log("wan: counters not persisted (%s): refused" % e)
            except Exception:  # noqa: BLE001, S110 - the log is on the same flash
                pass
            return False
        self._down_res, self._up_res, self._changed = down_res, up_res, changed
        return True

    def _next_up(self):
        # The next uplink counter, or 0 when its reservation could not be persisted.
        up = self._up + 1
        if up > self._up_res and not self._reserve(self._down_res, up + RESERVE, self._changed):
            return 0
        self._up = up
        return up

    # -- sending -----------------------------------------------------------------
    def _send(self, role, kind, ref, payload, encrypt=False):
        ctr = self._next_up()
        if not ctr:
            return  # no counter on flash: silence rather than a counter used twice
        frame = wan.seal(self._keys[role], self.meter_id, True, kind, ctr, ref, payload,
                         encrypt, role)
        self._port.send("comm", "frame_out", bytes(frame))  # comm writes its line

    def _error(self, role, code, ref, detail=None):
        self._send(role, wan.K_ERROR, ref, wan.error_payload(code, detail))

    def _reject(self, why, code=0, ref=0, detail=None, role=0):
        # code: the error to answer, only for a frame whose MAC verified (ref is then its own
        # counter, chosen by the head-end, and role its role); 0: silence.
        self.rejected += 1
        self._port.log_flood("wan: rejected (%s)" % why)  # a flood: rate-limited
        if code and self._keys:
            self._error(role, code, ref, detail)

    # -- inbound -----------------------------------------------------------------
    def handle(self, sender, kind, payload):
        if kind == "frame_in":
            self._frame(payload)
        elif kind == "frame_err":
            # a line comm could not make a frame of (its code): unauthenticated, so silence
            self._reject("line over cap" if payload == wan.E_TOO_BIG else
                         "bad line: a raw control byte or a bad escape, code %d" % payload)
        elif sender in ("metrology", "clock", "kernel", "dc_security", "offswitch", "credit"):
            self._answer(payload)

    def _frame(self, frame):
        # frame: comm has undone the line's escapes (bytes, its only copy on this path)
        if self._keys is None:
            lazy.call("tasks.cs_rare", "unprovisioned", self, frame)
            return
        role = -1
        try:
            role = wan.frame_role(frame)
            if not 0 <= role < len(self._keys):
                # no keys for that role id: nothing can authenticate it, so silence
                raise wan.WanError(0, "wan: unassigned role %d" % role, True)
            # body: a view into the frame where it came in clear (routed without a copy).
            # Before its MAC is known good a frame may not be answered, so a MemoryError in
            # its check is a silence the head-end waits out: it is checked once more after a
            # collection (open_frame changes nothing of the frame)
            for retry in (True, False):
                try:
                    kind, flags, ctr, ref, body = wan.open_frame(self._keys[role],
                                                                 self.meter_id, False, frame, True)
                    break
                except MemoryError:
                    if not retry:
                        raise
                    gc.collect()
        except wan.WanError as e:
            # Only the checks after the MAC (ctr 0, reserved flags, a command with a ref) may
            # answer, and they answer the head-end's own counter; before it: silence.
            self._reject("%s code %d" % (e.args[0] if e.args else "bad frame", e.code),
                         e.code if e.authentic else 0, e.ref, role=role)
            return
        down = self._down[role]
        if ctr <= down:
            # A frame of this role's head-end, but not new: REPLAY, with the highest counter
            # used and the counter of the last command that may have changed the meter (both
            # this role's). A command of this counter was carried out only if it is at or below
            # the latter: so a replayed TOPUP cannot make its own genuine answer look refused.
            self._reject("replay ctr %d <= %d role %d" % (ctr, down, role), wan.E_REPLAY, ctr,
                         down.to_bytes(4, "big") + self._changed[role].to_bytes(4, "big"),
                         role)
            return
        kinds, consent_kinds = self._roles[role]
        if kind not in kinds:
            # Not this role's to ask (policy.py WAN_ROLES): refused before its counter is
            # reserved or anything routed, so the refusal changes nothing on the meter. A kind
            # that no role has is UNKNOWN_KIND, as before roles.
            if kind != wan.K_INFO and _route_of(kind) < 0:
                self._reject("unknown kind %d" % kind, wan.E_UNKNOWN_KIND, ctr, role=role)
                return
            self._reject("policy: role %d may not send kind %d" % (role, kind), wan.E_POLICY,
                         ctr, "role %s may not send kind %d" % (wan.ROLE_NAMES[role], kind),
                         role)
            return
        if kind in consent_kinds and not seal.consent_given():
            self._reject("policy: kind %d needs the household's consent" % kind, wan.E_POLICY,
                         ctr, "no consent: the household has not given it (consent=off)",
                         role)
            return
        res, chg = self._down_res[role], self._changed[role]
        new_res = ctr + RESERVE if ctr > res else res
        new_chg = chg if kind in _READS else ctr
        if new_res != res or new_chg != chg:
            # new lists only then (once in RESERVE frames, or a changing command)
            down_res, changed = list(self._down_res), list(self._changed)
            down_res[role], changed[role] = new_res, new_chg
            if not self._reserve(down_res, self._up_res, changed):
                self.rejected += 1  # not carried out, and nothing said: see _reserve
                return
        self._down[role] = ctr
        self.accepted += 1
        try:
            self._request(role, kind, ctr, body)
        except MemoryError:
            # Raised before the request was routed (_request: nothing after the send
            # allocates), so nothing was carried out: FAILED says so, where silence would keep
            # the head-end waiting out its timeout (a board's heap, full or in pieces)
            body = None
            self._pending.pop(ctr, None)  # (if the send itself found no memory)
            gc.collect()
            self._reject("out of memory: kind %d" % kind, wan.E_FAILED, ctr, "out of memory",
                         role)

    def _request(self, role, kind, ctr, body):
        if kind == wan.K_INFO:
            info = {"meter": self.meter_id, "sealed": seal.is_sealed(),
                    "role": wan.ROLE_NAMES[role]}
            info.update(self._info)
            self._send(role, wan.K_INFO, ctr, json.dumps(info).encode())
            return
        route = _route_of(kind)
        if route < 0:
            self._reject("unknown kind %d" % kind, wan.E_UNKNOWN_KIND, ctr, role=role)
            return
        try:
            task = _ROUTES[route + 1]
            if task == "dc_security":
                # Binary (PROTOCOL.md "LoPA kinds"): the DC security module parses it; it also
                # gets the meter id this channel authenticated (its own id in LoPA groups).
                # The payload as it is, a view into the frame where it came in clear: a
                # 25-member GROUP_KEYS is 1 KB, and the Pyboard's heap in pieces may not hold
                # a second 1 KB block (dc_security reads it, and keeps no reference)
                msg = (ctr, self.meter_id, body)
            elif task == "offswitch":
                # Binary: the off-switch's own signed command (or a status nonce), which it
                # verifies itself with its own key (OFFSWITCH.md).
                msg = (ctr, bytes(body))
            else:
                # JSON arguments, checked into plain numbers and names (tasks/cs_rare.py)
                msg = lazy.call("tasks.cs_rare", "args", kind, ctr, bytes(body))
        except (ValueError, KeyError, TypeError, OverflowError) as e:  # fuzz: int(1e400)
            self._reject("bad args for kind %d: %s" % (kind, e), wan.E_BAD_ARGS, ctr,
                         role=role)
            return
        # tasks answer by ref = the command's counter: one pending request per counter, of
        # whichever role (roles count on their own, so two may meet)
        if len(self._pending) >= MAX_PENDING or ctr in self._pending:
            self._reject("busy", wan.E_FAILED, ctr, role=role)
            return
        mkind, enc = _ROUTES[route + 2], _ROUTES[route + 3]
        # expected before it is routed: once routed, nothing here allocates (see _frame)
        self._pending[ctr] = (kind, enc, role)
        if not self._port.send(task, mkind, msg):
            del self._pending[ctr]
            self._reject("not routed: %s %s" % (task, mkind), wan.E_FAILED, ctr, role=role)

    def _answer(self, payload):
        ref, code, body = payload
        req = self._pending.pop(ref, None)
        if req is None:
            return  # not asked for (or asked before a reboot)
        kind, enc, role = req
        if code:
            # A refusal: nothing was carried out, so one that cannot be written out for lack of
            # memory is said short. (An answer of what was carried out is never turned into a
            # refusal: without memory for it, silence, and the head-end's REPLAY check.)
            try:
                self._port.log_flood("request %d kind %d failed: %s" % (ref, kind, body))
                self._error(role, code, ref, body.encode())
            except MemoryError:
                body = None
                gc.collect()
                self._error(role, code, ref, b"out of memory")
        else:
            self._send(role, kind, ref, body if isinstance(body, bytes) else body.encode(),
                       enc)
