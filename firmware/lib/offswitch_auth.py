# The off-switch's own end-to-end authentication (docs/OFFSWITCH.md), for MicroPython and
# CPython. Pure codec: no I/O, no counter state (the off-switch keeps its counter).
#
# The off-switch has its own 32-byte key K_os, independent of the WAN (CS) master key, made
# by the host at provisioning. Two working keys come from HKDF-SHA256(ikm=K_os, salt=meter id
# u64 BE): k_cmd (info b"offswitch cmd") authenticates commands from the central system,
# k_rep (info b"offswitch reply") the off-switch's answers.
#
# Command, 30 bytes (big-endian):
#   ver u8 (1) | op u8 | meter u64 | ctr u32 | mac 16 = HMAC-SHA256(k_cmd, the 14 bytes before)
# Status request: nonce, 8 bytes (any value; echoed in the signed reply).
# Reply, 44 bytes:
#   ver u8 (1) | op u8 | result u8 | state u8 | meter u64 | ctr u32 | last u32 | nonce 8 |
#   mac 16 = HMAC-SHA256(k_rep, the 28 bytes before)
# ctr echoes the command's counter (0 for a status), last is the highest counter the
# off-switch has accepted (a REPLAY answer tells the head-end where to resync), nonce echoes
# a status request's nonce (zeros for a command). state: bit0 relay closed, bit1 armed
# (reconnect waiting for the button), bit2 locked (tamper), bit3 tamper input active.
import struct

import hmac_sha256 as _h
from wan import ct_equal

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):  # type: ignore[misc]  # the CPython stand-in
        return x


VER = const(1)
CMD_LEN = const(30)
REPLY_LEN = const(44)
NONCE_LEN = const(8)
MAC_LEN = const(16)

OP_STATUS = const(0)
OP_OFF = const(1)
OP_ON = const(2)
OP_UNLOCK = const(3)
OP_NAMES = ("STATUS", "OFF", "ON", "UNLOCK")

R_OK = const(0)
R_MALFORMED = const(1)
R_WRONG_METER = const(2)
R_BAD_MAC = const(3)
R_REPLAY = const(4)
R_RATE_LIMIT = const(5)
R_LOCKED = const(6)
R_TAMPER = const(7)
R_UNKNOWN_OP = const(8)
R_NO_KEY = const(9)
R_BUSY = const(10)
RESULT_NAMES = ("ok", "malformed", "wrong meter", "bad MAC", "replay", "rate limit", "locked",
                "tamper active", "unknown op", "no key", "busy")

S_RELAY = const(1)
S_ARMED = const(2)
S_LOCKED = const(4)
S_TAMPER = const(8)

# The off-switch's state record (48 bytes, big-endian), sealed by core 1 under k_state (HKDF
# info b"offswitch state") and stored by the main core as it is handed (docs/OFFSWITCH.md):
#   ver u8 (2) | relay u8 | armed u8 | locked u8 | ctr u32 | deadline u32 | clock u32 |
#   n_ops u8 | 0 0 0 | last op u32 | kid 8 | mac 16 = HMAC-SHA256(k_state, the 32 bytes before)
# (times in ms of the off-switch's own clock; n_ops operations in the last hour, the last at
# `last op`)
STATE_VER = const(2)
STATE_MAC_AT = const(32)
STATE_LEN = const(48)

# a meter without an off-switch key signs its (NO_KEY) replies under this one: never trusted
NO_KEY = bytes(32)

# (the command's head: ">BBQI", 14 bytes; the reply's: ">BBBBQII", 20 bytes, then the nonce)


def derive(key, meter_id):
    """(k_cmd pads, k_rep pads) for the off-switch key of meter meter_id."""
    if len(key) != 32:
        raise ValueError("offswitch: key must be 32 bytes")
    salt = meter_id.to_bytes(8, "big")
    return (_h.hmac_pads(_h.hkdf_sha256(key, salt, b"offswitch cmd", 32)),
            _h.hmac_pads(_h.hkdf_sha256(key, salt, b"offswitch reply", 32)))


def derive_keys(key, meter_id):
    """(k_cmd, k_rep, k_state): the off-switch's three working keys, 32 bytes each."""
    if len(key) != 32:
        raise ValueError("offswitch: key must be 32 bytes")
    salt = meter_id.to_bytes(8, "big")
    return (_h.hkdf_sha256(key, salt, b"offswitch cmd", 32),
            _h.hkdf_sha256(key, salt, b"offswitch reply", 32),
            _h.hkdf_sha256(key, salt, b"offswitch state", 32))


def state_fields(rec):
    """The state record's fields as a dict (its MAC is not checked: the host's view)."""
    if len(rec) != STATE_LEN or rec[0] != STATE_VER:
        return None
    relay, armed, locked, ctr, deadline, clock, n_ops = struct.unpack_from(">BBBIIIB", rec, 1)
    return {"relay": relay, "armed": armed, "locked": locked, "ctr": ctr, "deadline": deadline,
            "clock": clock, "n_ops": n_ops, "last_op": struct.unpack_from(">I", rec, 20)[0]}


def open_command(keys, meter_id, data):
    """(result, op, ctr, meter): result R_OK when the command is well formed, for meter_id
    and its MAC verifies (constant time); else R_MALFORMED, R_WRONG_METER or R_BAD_MAC.
    The counter is the caller's to check."""
    if len(data) != CMD_LEN:
        return R_MALFORMED, 0, 0, 0
    ver, op, meter, ctr = struct.unpack_from(">BBQI", data, 0)
    if ver != VER:
        return R_MALFORMED, op, ctr, meter
    if meter != meter_id:
        return R_WRONG_METER, op, ctr, meter
    mac = _h.hmac_sha256_pads(keys[0], memoryview(data)[:14])[:MAC_LEN]
    if not ct_equal(mac, memoryview(data)[14:]):
        return R_BAD_MAC, op, ctr, meter
    return R_OK, op, ctr, meter


def reply(keys, meter_id, op, result, state, ctr, last, nonce=None):
    """The off-switch's signed answer."""
    head = struct.pack(">BBBBQII", VER, op, result, state, meter_id, ctr, last)
    head += nonce if nonce else bytes(NONCE_LEN)
    return head + _h.hmac_sha256_pads(keys[1], head)[:MAC_LEN]
