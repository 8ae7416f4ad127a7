# The CS security module's rarely run code (tasks/cs_security.py), in RAM only while it runs
# (lib/lazy.py): the answer of a meter that has no key yet, and the checking of JSON arguments
# into plain numbers and names (tasks never see raw JSON). Part of that module.
import json
import struct
from micropython import const

import wan

PROFILE_MAX = const(12)  # records per answer, to stay under the payload cap
LOGS_MAX = const(10)


def unprovisioned(cs, frame):
    # No key yet: a well-formed command gets NOT_PROVISIONED, sealed under the
    # all-zero master key (PROTOCOL.md): a hint anyone could forge, never trusted (the head-end
    # opens answers with the meter's own keys only, so it is never taken for an answer).
    cs.rejected += 1
    cs._port.log_flood("wan: rejected (not provisioned)")
    if len(frame) < wan.HEADER + wan.MAC_LEN:
        return
    ver, _, flags, meter, ctr, _, n = struct.unpack_from(">BBBQIIH", frame, 0)
    if ver != wan.VER or wan.HEADER + n + wan.MAC_LEN != len(frame) or flags & wan.FLAG_RESP:
        return
    up = cs._next_up()
    if not up:
        return  # no up counter on flash (cs_security._reserve): silence
    keys = wan.derive_keys(meter, wan.UNPROVISIONED_MASTER)
    out = wan.seal(keys, meter, True, wan.K_ERROR, up, ctr,
                   wan.error_payload(wan.E_NOT_PROVISIONED))
    cs._port.send("comm", "frame_out", bytes(out))


def _cal_step(step):
    # the step a "set" came from, for the calibration's source and its log line
    if step not in ("voltage", "current", "power", "phase", "set"):
        raise ValueError("calibrate step: voltage, current, power, phase or set")
    return step


def args(kind, ctr, body):
    # Only plain numbers and names leave here: tasks never see raw JSON.
    a = json.loads(body) if body else {}
    if not isinstance(a, dict):  # fuzz: [1] or 5 has no .get (AttributeError)
        raise TypeError("arguments must be a JSON object")
    if kind == wan.K_PROFILE:
        return (ctr, int(a.get("from", 0)), max(1, min(PROFILE_MAX, int(a.get("max", 12)))))
    if kind == wan.K_LOGS:
        name = str(a.get("log", "security"))
        return (ctr, name, int(a.get("from", 0)), max(1, min(LOGS_MAX, int(a.get("max", 10)))))
    if kind == wan.K_TIME_SET:
        return (ctr, int(a["t"]))
    if kind == wan.K_CALIBRATE:
        op = a.get("op", "ref")
        if op == "ref":  # the reference load at the terminals: {"volts", "amps", "pf"}
            return (ctr, op, float(a["volts"]), float(a["amps"]), float(a.get("pf", 1.0)),
                    False, "")
        if op == "set":  # gains the head-end worked out (host_tools/headend/calibration.py)
            return (ctr, op, float(a["v_gain"]), float(a["i_gain"]), float(a["phase"]),
                    bool(a.get("force", False)), _cal_step(a.get("step", "set")))
        if op in ("show", "reset", "undo"):
            return (ctr, op, 0.0, 0.0, 0.0, False, "")
        raise ValueError("calibrate op: ref, set, show, reset or undo")
    if kind == wan.K_TOPUP:
        return (ctr, int(a["amount_mc"]))
    if kind == wan.K_TARIFF:
        return (ctr, int(a["t1_mc_kwh"]), int(a["t2_mc_kwh"]), int(a.get("t2_from_h", 7)),
                int(a.get("t2_to_h", 23)), int(a.get("tz_s", 3600)),
                bool(a.get("eu_dst", True)), bool(a.get("weekend_t1", True)))
    if kind == wan.K_PREPAID:
        return (ctr, bool(a["on"]))
    if kind == wan.K_SEAL or kind == wan.K_UNSEAL:
        return (ctr, kind == wan.K_SEAL)
    return (ctr,)
