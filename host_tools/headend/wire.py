"""WAN protocol v1 (docs/PROTOCOL.md): the head-end's codec.

Written apart from the firmware's ``firmware/lib/wan.py`` on purpose (stdlib ``hmac``/``hashlib``,
``cryptography`` for HKDF and AES-CTR) so that tests can cross-check the two. Pure: no I/O and no
counter state; :class:`LineReader` splits a serial byte stream into frame lines.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VER = 1
HEADER = 21
MAC_LEN = 16
PAYLOAD_CAP = 1024
LINE_CAP = 1500

FLAG_ENC = 0x01
FLAG_RESP = 0x02
# flags bits 2-3: the role whose keys the frame is under (firmware/policy.py WAN_ROLES)
ROLE_SHIFT = 2
ROLE_MASK = 0x0C
FLAGS_KNOWN = FLAG_ENC | FLAG_RESP | ROLE_MASK
ROLE_OPERATOR = 0
ROLE_AGGREGATOR = 1
ROLE_SUPPLIER = 2
ROLE_NAMES = ("operator", "aggregator", "supplier")  # by role id

K_INFO = 0x01
K_READ = 0x10
K_PROFILE = 0x11
K_LOGS = 0x12
K_TIME_SET = 0x13
K_CALIBRATE = 0x14
K_STATS = 0x15
# LoPA kinds (DC security module, docs/PROTOCOL.md "LoPA kinds"); binary payloads
K_KEYGEN = 0x20
K_PUBKEY = 0x21
K_GROUP_BEGIN = 0x22
K_GROUP_KEYS = 0x23
K_GROUP_COMMIT = 0x24
K_CIPHERTEXT = 0x25
K_RECOVER = 0x26
K_GROUPS = 0x27
K_GROUP_DELETE = 0x28
# Off-switch and prepaid credit (docs/PROTOCOL.md "Off-switch and credit kinds")
K_SWITCH = 0x30
K_SWITCH_STATUS = 0x31
K_TOPUP = 0x32
K_TARIFF = 0x33
K_CREDIT = 0x34
K_PREPAID = 0x35
# Sealing (docs/PROTOCOL.md "Seal kinds"): close / open the REPL over the WAN's USB serial
K_SEAL = 0x40
K_UNSEAL = 0x41
K_ERROR = 0x7F

KIND_NAMES: dict[int, str] = {
    K_INFO: "INFO",
    K_READ: "READ",
    K_PROFILE: "PROFILE",
    K_LOGS: "LOGS",
    K_TIME_SET: "TIME_SET",
    K_CALIBRATE: "CALIBRATE",
    K_STATS: "STATS",
    K_KEYGEN: "KEYGEN",
    K_PUBKEY: "PUBKEY",
    K_GROUP_BEGIN: "GROUP_BEGIN",
    K_GROUP_KEYS: "GROUP_KEYS",
    K_GROUP_COMMIT: "GROUP_COMMIT",
    K_CIPHERTEXT: "CIPHERTEXT",
    K_RECOVER: "RECOVER",
    K_GROUPS: "GROUPS",
    K_GROUP_DELETE: "GROUP_DELETE",
    K_SWITCH: "SWITCH",
    K_SWITCH_STATUS: "SWITCH_STATUS",
    K_TOPUP: "TOPUP",
    K_TARIFF: "TARIFF",
    K_CREDIT: "CREDIT",
    K_PREPAID: "PREPAID",
    K_SEAL: "SEAL",
    K_UNSEAL: "UNSEAL",
    K_ERROR: "ERROR",
}
# responses to these kinds carry personal data: the meter always encrypts them
ENC_RESPONSE_KINDS: frozenset[int] = frozenset({K_READ, K_PROFILE, K_LOGS})
# the LoPA kinds (DC security module); the meter encrypts every answer except KEYGEN/PUBKEY
LOPA_KINDS: frozenset[int] = frozenset({K_KEYGEN, K_PUBKEY, K_GROUP_BEGIN, K_GROUP_KEYS,
                                        K_GROUP_COMMIT, K_CIPHERTEXT, K_RECOVER, K_GROUPS,
                                        K_GROUP_DELETE})
LOPA_ENC_RESPONSE_KINDS: frozenset[int] = LOPA_KINDS - {K_KEYGEN, K_PUBKEY}
# the off-switch and credit kinds whose answers the meter encrypts (relay state, balance)
OFFSWITCH_ENC_RESPONSE_KINDS: frozenset[int] = frozenset({K_SWITCH, K_SWITCH_STATUS, K_TOPUP,
                                                          K_CREDIT})

E_MALFORMED = 1
# The role each kind is sent under: firmware/policy.py WAN_ROLES (tests_host/test_roles.py
# checks the two agree). INFO is every role's; it goes under the operator's unless asked.
ROLE_OF_KIND: dict[int, int] = {
    K_INFO: ROLE_OPERATOR,
    **dict.fromkeys((K_TIME_SET, K_CALIBRATE, K_STATS, K_LOGS, K_SWITCH, K_SWITCH_STATUS,
                     K_TARIFF, K_PREPAID, K_SEAL, K_UNSEAL), ROLE_OPERATOR),
    **dict.fromkeys((K_KEYGEN, K_PUBKEY, K_GROUP_BEGIN, K_GROUP_KEYS, K_GROUP_COMMIT,
                     K_CIPHERTEXT, K_RECOVER, K_GROUPS, K_GROUP_DELETE), ROLE_AGGREGATOR),
    **dict.fromkeys((K_READ, K_CREDIT, K_TOPUP, K_PROFILE), ROLE_SUPPLIER),
}


def role_of(kind: int) -> int:
    """The role a request of ``kind`` is sent under (an unknown kind: the operator's)."""
    return ROLE_OF_KIND.get(kind, ROLE_OPERATOR)


E_TOO_BIG = 2
E_REPLAY = 3
E_UNKNOWN_KIND = 4
E_POLICY = 5
E_BAD_ARGS = 6
E_FAILED = 7
E_NOT_PROVISIONED = 8

# a meter without a master key seals NOT_PROVISIONED with the keys of this one (public)
UNPROVISIONED_MASTER = bytes(32)

ERROR_NAMES: dict[int, str] = {
    E_MALFORMED: "MALFORMED",
    E_TOO_BIG: "TOO_BIG",
    E_REPLAY: "REPLAY",
    E_UNKNOWN_KIND: "UNKNOWN_KIND",
    E_POLICY: "POLICY",
    E_BAD_ARGS: "BAD_ARGS",
    E_FAILED: "FAILED",
    E_NOT_PROVISIONED: "NOT_PROVISIONED",
}

_HDR = struct.Struct(">BBBQIIH")

# Lines (docs/PROTOCOL.md "Lines"): every byte of a frame travels as itself except these, which
# travel as ESC + (byte XOR 0x40): LF, CR, Ctrl-A..Ctrl-E and ESC (firmware/lib/wan.py).
ESC = 0x1B
ESC_XOR = 0x40
ESCAPED: frozenset[int] = frozenset({0x01, 0x02, 0x03, 0x04, 0x05, 0x0A, 0x0D, ESC})
_NEEDS_ESCAPE = re.compile(rb"[\x01-\x05\n\r\x1b]")
_RAW_NEVER = re.compile(rb"[\x01-\x05\n\r]")
_CANONICAL = re.compile(rb"(?:[^\x1b]|\x1b[\x41-\x45\x4a\x4d\x5b])*", re.DOTALL)
_ESCAPE_PAIR = re.compile(rb"\x1b(.)", re.DOTALL)


def _escape(m: re.Match[bytes]) -> bytes:
    return bytes((ESC, m.group()[0] ^ ESC_XOR))


def _unescape(m: re.Match[bytes]) -> bytes:
    return bytes((m.group(1)[0] ^ ESC_XOR,))
_U32_MAX = 0xFFFF_FFFF
_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF

ErrorDetail = int | str | bytes | None


class WireError(Exception):
    """A frame or line that cannot be accepted.

    ``code``: one of the ``E_*``, or 0 when ``silent`` (wrong MAC, meter id or direction: the
    meter does not answer those). ``ref``: the frame's ctr when it was long enough to carry one.
    """

    def __init__(self, code: int, message: str, *, silent: bool = False, ref: int = 0) -> None:
        super().__init__(message)
        self.code = 0 if silent else code
        self.silent = silent
        self.ref = ref


def _hkdf(master: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(master)


def role_master(meter_id: int, master: bytes, role: int) -> bytes:
    """The 32-byte key a role's WAN keys derive from (firmware/lib/wan.py role_master): the
    master itself for the operator, else HKDF-SHA256(master, meter id, b"wan role <name>"),
    one way: it gives neither the master nor another role's key."""
    if role == ROLE_OPERATOR:
        return bytes(master)
    if not 0 < role < len(ROLE_NAMES):
        raise ValueError(f"unknown role {role}")
    return _hkdf(master, meter_id.to_bytes(8, "big"), b"wan role " + ROLE_NAMES[role].encode(),
                 32)


@dataclass(frozen=True)
class Keys:
    """One meter's keys for one role: that role's 32-byte key (``master``: the meter's master
    for the operator, role_master's for the others) and the four keys derived from it."""

    meter_id: int
    master: bytes = field(repr=False)
    k_down_mac: bytes = field(repr=False)
    k_up_mac: bytes = field(repr=False)
    k_down_enc: bytes = field(repr=False)
    k_up_enc: bytes = field(repr=False)
    role: int = ROLE_OPERATOR

    @classmethod
    def derive(cls, meter_id: int, master: bytes, role: int = ROLE_OPERATOR) -> Keys:
        """Role ``role``'s keys from the meter's master key."""
        if len(master) != 32:
            raise ValueError("master key must be 32 bytes")
        if not 0 <= meter_id <= _U64_MAX:
            raise ValueError("meter id must be a u64")
        return cls.of_role_key(meter_id, role_master(meter_id, master, role), role)

    @classmethod
    def of_role_key(cls, meter_id: int, master: bytes, role: int) -> Keys:
        """Role ``role``'s keys from that role's own 32-byte key (all a role's keystore holds)."""
        if len(master) != 32:
            raise ValueError("role key must be 32 bytes")
        if not 0 <= role < len(ROLE_NAMES):
            raise ValueError(f"unknown role {role}")
        salt = meter_id.to_bytes(8, "big")
        return cls(
            meter_id=meter_id,
            role=role,
            master=bytes(master),
            k_down_mac=_hkdf(master, salt, b"wan down mac", 32),
            k_up_mac=_hkdf(master, salt, b"wan up mac", 32),
            k_down_enc=_hkdf(master, salt, b"wan down enc", 16),
            k_up_enc=_hkdf(master, salt, b"wan up enc", 16),
        )

    def mac_key(self, up: bool) -> bytes:
        return self.k_up_mac if up else self.k_down_mac

    def enc_key(self, up: bool) -> bytes:
        return self.k_up_enc if up else self.k_down_enc


@dataclass(frozen=True)
class Frame:
    """An opened frame; ``payload`` is the plaintext, ``encrypted`` whether it travelled as ENC."""

    kind: int
    flags: int
    ctr: int
    ref: int
    payload: bytes
    encrypted: bool

    @property
    def up(self) -> bool:
        return bool(self.flags & FLAG_RESP)

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, f"0x{self.kind:02x}")


def aes_ctr(key: bytes, meter_id: int, ctr: int, data: bytes) -> bytes:
    """AES-128-CTR with the initial counter block meter(8) | ctr(4) | 00000000."""
    block0 = meter_id.to_bytes(8, "big") + ctr.to_bytes(4, "big") + bytes(4)
    enc = Cipher(algorithms.AES(key), modes.CTR(block0)).encryptor()
    return enc.update(data) + enc.finalize()


def _mac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()[:MAC_LEN]


def seal(keys: Keys, up: bool, kind: int, ctr: int, ref: int, payload: bytes,
         encrypt: bool = False) -> bytes:
    """One frame. ``up=False``: a command (down keys); ``up=True``: a response (RESP, up keys)."""
    if len(payload) > PAYLOAD_CAP:
        raise WireError(E_TOO_BIG, f"payload of {len(payload)} bytes over {PAYLOAD_CAP}", ref=ref)
    if not 0 < ctr <= _U32_MAX:
        raise ValueError("ctr must be 1..2^32-1")
    if not 0 <= ref <= _U32_MAX or (ref and not up):
        raise ValueError("ref must be a u32, and 0 in a command")
    if not 0 <= kind <= 0xFF:
        raise ValueError("kind must be a u8")
    flags = (FLAG_RESP if up else 0) | keys.role << ROLE_SHIFT
    body = bytes(payload)
    if encrypt:
        flags |= FLAG_ENC
        body = aes_ctr(keys.enc_key(up), keys.meter_id, ctr, body)
    head = _HDR.pack(VER, kind, flags, keys.meter_id, ctr, ref, len(body)) + body
    return head + _mac(keys.mac_key(up), head)


def open_frame(keys: Keys, up: bool, frame: bytes) -> Frame:
    """Check and open one frame. ``up=True``: a response; ``up=False``: a command.

    Raises :class:`WireError`. Does not check counters (the caller keeps them)."""
    size = len(frame)
    ctr = int.from_bytes(frame[11:15], "big") if size >= 15 else 0
    if size < HEADER + MAC_LEN:
        raise WireError(E_MALFORMED, f"short frame ({size} bytes)", ref=ctr)
    ver, kind, flags, meter, ctr, ref, n = _HDR.unpack_from(frame)
    if ver != VER:
        raise WireError(E_MALFORMED, f"version {ver}", ref=ctr)
    if HEADER + n + MAC_LEN != size:
        raise WireError(E_MALFORMED, f"len field {n} but {size - HEADER - MAC_LEN} bytes",
                        ref=ctr)
    if n > PAYLOAD_CAP:
        raise WireError(E_TOO_BIG, f"payload of {n} bytes over {PAYLOAD_CAP}", ref=ctr)
    if meter != keys.meter_id:
        raise WireError(0, f"meter id {meter} is not {keys.meter_id}", silent=True, ref=ctr)
    if bool(flags & FLAG_RESP) != up:
        raise WireError(0, "wrong direction (reflected frame)", silent=True, ref=ctr)
    end = HEADER + n
    if not hmac.compare_digest(_mac(keys.mac_key(up), bytes(frame[:end])), bytes(frame[end:])):
        raise WireError(0, "bad MAC", silent=True, ref=ctr)
    if ctr == 0:
        raise WireError(E_MALFORMED, "ctr 0")
    if flags & ~FLAGS_KNOWN:
        raise WireError(E_MALFORMED, f"reserved flags 0x{flags:02x}", ref=ctr)
    if (flags & ROLE_MASK) >> ROLE_SHIFT != keys.role:
        # authentic under these keys but naming another role: nothing of ours
        raise WireError(E_MALFORMED, f"role {(flags & ROLE_MASK) >> ROLE_SHIFT}, not "
                        f"{keys.role}", ref=ctr)
    if ref and not up:
        raise WireError(E_MALFORMED, "command with a ref", ref=ctr)
    payload = bytes(frame[HEADER:end])
    encrypted = bool(flags & FLAG_ENC)
    if encrypted:
        payload = aes_ctr(keys.enc_key(up), keys.meter_id, ctr, payload)
    return Frame(kind=kind, flags=flags, ctr=ctr, ref=ref, payload=payload, encrypted=encrypted)


def to_line(frame: bytes) -> bytes:
    """frame -> b"~<escaped frame>\\n" (docs/PROTOCOL.md "Lines"). Raises :class:`WireError`
    TOO_BIG when the line would exceed LINE_CAP characters."""
    line = b"~" + _NEEDS_ESCAPE.sub(_escape, bytes(frame))
    if len(line) > LINE_CAP:
        raise WireError(E_TOO_BIG, f"line of {len(line)} characters over {LINE_CAP}")
    return line + b"\n"


def line_length(frame: bytes) -> int:
    """The characters of ``frame``'s line, "~" included, line end excluded."""
    return 1 + len(frame) + len(_NEEDS_ESCAPE.findall(bytes(frame)))


def from_line(line: bytes | bytearray) -> bytes:
    """b"~<escaped frame>\\r\\n" ("~" and line end optional) -> frame. Only the canonical
    escaping passes: no raw Ctrl-A..Ctrl-E, CR or LF inside, every ESC followed by one of the
    escaped bytes XOR 0x40."""
    raw = bytes(line).rstrip(b"\r\n")
    if raw.startswith(b"~"):
        raw = raw[1:]
    if len(raw) + 1 > LINE_CAP:
        raise WireError(E_TOO_BIG, f"line of {len(raw) + 1} characters over {LINE_CAP}")
    bad = _RAW_NEVER.search(raw)
    if bad is not None:
        raise WireError(E_MALFORMED, f"unescaped byte 0x{raw[bad.start()]:02x} at {bad.start()}")
    if not _CANONICAL.fullmatch(raw):
        what = "truncated escape" if raw.endswith(bytes((ESC,))) else "bad escape"
        raise WireError(E_MALFORMED, what)
    return _ESCAPE_PAIR.sub(_unescape, raw)


def error_payload(code: int, detail: ErrorDetail = None) -> bytes:
    """ERROR payload: code u8, then the detail: an int (REPLAY: the highest ctr the meter has
    consumed) as u32 big-endian, a str as UTF-8, bytes as they are."""
    if not 0 < code <= 0xFF:
        raise ValueError("error code must be 1..255")
    if detail is None:
        rest = b""
    elif isinstance(detail, int):
        rest = detail.to_bytes(4, "big")
    elif isinstance(detail, str):
        rest = detail.encode()
    else:
        rest = bytes(detail)
    return bytes((code,)) + rest[: PAYLOAD_CAP - 1]


def parse_error(payload: bytes) -> tuple[int, ErrorDetail]:
    """ERROR payload -> (code, detail): None when absent, an int for REPLAY (the highest ctr
    the meter consumed: 4 bytes, or 8 with :func:`replay_changed`), else the text (bytes when
    it is not UTF-8)."""
    if not payload:
        raise WireError(E_MALFORMED, "empty error payload")
    code, rest = payload[0], bytes(payload[1:])
    if not rest:
        return code, None
    if code == E_REPLAY and len(rest) in (4, 8):
        return code, int.from_bytes(rest[:4], "big")
    try:
        return code, rest.decode()
    except UnicodeDecodeError:
        return code, rest


def replay_changed(payload: bytes) -> int | None:
    """The counter of the last command that may have changed the meter, from a REPLAY
    payload (its second u32); None when the meter did not say. A command whose counter is
    above it was not carried out (docs/SECURITY.md, "The WAN: answers and counters")."""
    if len(payload) == 9 and payload[0] == E_REPLAY:
        return int.from_bytes(payload[5:9], "big")
    return None


def describe_error(payload: bytes) -> str:
    """A one-line account of an ERROR payload, e.g. "REPLAY (resync above 41)"."""
    code, detail = parse_error(payload)
    name = ERROR_NAMES.get(code, f"error {code}")
    if code == E_REPLAY and isinstance(detail, int):
        return f"{name} (resync above {detail})"
    if detail is None:
        return name
    return f"{name}: {detail.hex() if isinstance(detail, bytes) else detail}"


class LineReader:
    """Split raw serial bytes (any chunking) into frame lines.

    :meth:`feed` returns the complete lines that start with "~", without the line end ("\\r"s
    before the newline are stripped). Other lines (boot banners, prints, tracebacks) are counted in
    ``ignored`` and passed to ``on_text``. A frame line over LINE_CAP characters is dropped, counted
    in ``dropped`` and reported to ``on_drop`` with its length. At most LINE_CAP + 1 bytes are ever
    held, whatever arrives.
    """

    def __init__(self, on_drop: Callable[[int], None] | None = None,
                 on_text: Callable[[bytes], None] | None = None) -> None:
        self.on_drop = on_drop
        self.on_text = on_text
        self.dropped = 0
        self.ignored = 0
        self._buf = bytearray()
        self._len = 0  # length of the current line so far, held or not
        self._trail_cr = 0  # "\r"s at its end

    @property
    def pending(self) -> int:
        """Bytes of the current, unfinished line held."""
        return len(self._buf)

    def reset(self) -> None:
        self._buf.clear()
        self._len = 0
        self._trail_cr = 0

    def feed(self, data: bytes | bytearray) -> list[bytes]:
        out: list[bytes] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            self._add(data[start: len(data) if nl < 0 else nl])
            if nl < 0:
                return out
            line = self._finish()
            if line is not None:
                out.append(line)
            start = nl + 1

    def _add(self, chunk: bytes | bytearray) -> None:
        if not chunk:
            return
        stripped = chunk.rstrip(b"\r")
        self._trail_cr = len(chunk) - len(stripped) + (0 if stripped else self._trail_cr)
        self._len += len(chunk)
        room = LINE_CAP + 1 - len(self._buf)
        if room > 0:
            self._buf += chunk[:room]

    def _finish(self) -> bytes | None:
        length = self._len - self._trail_cr
        text = bytes(self._buf[: min(length, LINE_CAP)])
        self.reset()
        if text.startswith(b"~"):
            if length <= LINE_CAP:
                return text
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop(length)
            return None
        if length:
            self.ignored += 1
            if self.on_text is not None:
                self.on_text(text)
        return None
