"""Binary payloads of the LoPA kinds (docs/PROTOCOL.md, "LoPA kinds (DC security module)").

Both directions, so that the head-end (commands out, responses in) and the simulated meters
of :mod:`host_tools.headend.lopa.sim` (commands in, responses out) share one codec. Every
parser checks the exact length and raises :class:`CodecError` otherwise. Big-endian
throughout; a ``gid`` travels as ``gid_len u8`` + ``gid`` (1..16 bytes).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from host_tools.headend import wire

PK_LEN = 32
GID_MAX = 16
CHUNK_MAX = 25  # members per GROUP_KEYS chunk: 25 x 40 B + 20 B fits the 1024-byte cap
N_MIN = 3
N_MAX = 512
MASK32 = 0xFFFF_FFFF
_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF


class CodecError(ValueError):
    """A LoPA payload that does not have the shape the protocol gives it."""


def _need(payload: bytes, size: int, what: str) -> None:
    if len(payload) != size:
        raise CodecError(f"{what}: {len(payload)} bytes, expected {size}")


def check_gid(gid: bytes) -> bytes:
    if not 1 <= len(gid) <= GID_MAX:
        raise CodecError(f"gid must be 1..{GID_MAX} bytes, not {len(gid)}")
    return bytes(gid)


def enc_gid(gid: bytes) -> bytes:
    return bytes((len(check_gid(gid)),)) + gid


def dec_gid(payload: bytes) -> tuple[bytes, bytes]:
    """(gid, rest of the payload)."""
    if not payload:
        raise CodecError("no gid")
    n = payload[0]
    if not 1 <= n <= GID_MAX or len(payload) < 1 + n:
        raise CodecError(f"bad gid length {n}")
    return bytes(payload[1:1 + n]), bytes(payload[1 + n:])


# -- commands (head-end -> meter) ---------------------------------------------------------
def keygen_cmd(replace: bool = False) -> bytes:
    return bytes((1 if replace else 0,))


def group_begin_cmd(gid: bytes, n: int, m: int, lam: float) -> bytes:
    return enc_gid(gid) + struct.pack(">HBf", n, m, lam)


def group_keys_cmd(gid: bytes, seq: int, members: list[tuple[int, bytes]]) -> bytes:
    if not 1 <= len(members) <= CHUNK_MAX:
        raise CodecError(f"a chunk holds 1..{CHUNK_MAX} members, not {len(members)}")
    out = bytearray(enc_gid(gid) + struct.pack(">HB", seq, len(members)))
    for mid, pk in members:
        if len(pk) != PK_LEN:
            raise CodecError(f"member {mid}: public key of {len(pk)} bytes")
        out += mid.to_bytes(8, "big") + pk
    return bytes(out)


def key_chunks(gid: bytes, members: list[tuple[int, bytes]], most: int = CHUNK_MAX
               ) -> list[list[tuple[int, bytes]]]:
    """``members`` cut into GROUP_KEYS chunks of at most ``most`` members each, and fewer where
    a chunk's line would not fit LINE_CAP (docs/PROTOCOL.md "Lines": a byte such as LF travels
    as two, and a member's public key is its own to choose: 25 keys of LF bytes would make a
    line of ~1,800). Counted as if the frame's header and MAC were all escaped."""
    if not 1 <= most <= CHUNK_MAX:
        raise CodecError(f"a chunk holds 1..{CHUNK_MAX} members, not {most}")
    frame_most = 2 * (wire.HEADER + wire.MAC_LEN)  # header and MAC, every byte escaped
    out: list[list[tuple[int, bytes]]] = []
    for mid, pk in members:
        cur = out[-1] if out else None
        if cur is not None and len(cur) < most:
            body = group_keys_cmd(gid, len(out) - 1, [*cur, (mid, pk)])
            if wire.line_length(body) + frame_most <= wire.LINE_CAP:
                cur.append((mid, pk))
                continue
        out.append([(mid, pk)])
    return out


def group_commit_cmd(gid: bytes, tag: bytes = b"") -> bytes:
    """gid, and the neutral registrar's tag for this meter (32 bytes) if it has one."""
    if len(tag) not in (0, 32):
        raise CodecError("a registrar tag is 32 bytes")
    return enc_gid(gid) + tag


def ciphertext_cmd(gid: bytes, t: int) -> bytes:
    return enc_gid(gid) + struct.pack(">I", t)


def recover_cmd(gid: bytes, t: int, missing: list[int]) -> bytes:
    return (enc_gid(gid) + struct.pack(">IH", t, len(missing))
            + b"".join(i.to_bytes(8, "big") for i in missing))


def group_delete_cmd(gid: bytes) -> bytes:
    return enc_gid(gid)


# -- decoding commands (what a meter does; used by the simulated meters) ----------------------
def parse_group_begin_cmd(p: bytes) -> tuple[bytes, int, int, float]:
    gid, rest = dec_gid(p)
    _need(rest, 7, "GROUP_BEGIN")
    n, m, lam = struct.unpack(">HBf", rest)
    return gid, n, m, lam


def parse_group_keys_cmd(p: bytes) -> tuple[bytes, int, list[tuple[int, bytes]]]:
    gid, rest = dec_gid(p)
    if len(rest) < 3:
        raise CodecError("GROUP_KEYS: short")
    seq, count = struct.unpack_from(">HB", rest)
    body = rest[3:]
    if len(body) != count * (8 + PK_LEN):
        raise CodecError(f"GROUP_KEYS: count {count} does not match {len(body)} bytes")
    members = [(int.from_bytes(body[k:k + 8], "big"), bytes(body[k + 8:k + 40]))
               for k in range(0, len(body), 40)]
    return gid, seq, members


def parse_ciphertext_cmd(p: bytes) -> tuple[bytes, int]:
    gid, rest = dec_gid(p)
    _need(rest, 4, "CIPHERTEXT")
    return gid, int.from_bytes(rest, "big")


def parse_recover_cmd(p: bytes) -> tuple[bytes, int, list[int]]:
    gid, rest = dec_gid(p)
    if len(rest) < 6:
        raise CodecError("RECOVER: short")
    t, count = struct.unpack_from(">IH", rest)
    body = rest[6:]
    if len(body) != 8 * count:
        raise CodecError(f"RECOVER: count {count} does not match {len(body)} bytes")
    return gid, t, [int.from_bytes(body[k:k + 8], "big") for k in range(0, len(body), 8)]


# -- responses (meter -> head-end) ----------------------------------------------------------
@dataclass(frozen=True)
class KeyAnswer:
    pk: bytes
    us: int
    created: bool


@dataclass(frozen=True)
class KeysAnswer:
    received: int
    derived: int
    us: int


@dataclass(frozen=True)
class CommitAnswer:
    n: int
    us: int
    persisted: int


def keygen_resp(pk: bytes, us: int, created: bool) -> bytes:
    return pk + struct.pack(">IB", us & MASK32, 1 if created else 0)


def parse_keygen(p: bytes) -> KeyAnswer:
    _need(p, PK_LEN + 5, "KEYGEN answer")
    us, created = struct.unpack_from(">IB", p, PK_LEN)
    return KeyAnswer(bytes(p[:PK_LEN]), us, bool(created))


def pubkey_resp(pk: bytes, us: int) -> bytes:
    return pk + struct.pack(">I", us & MASK32)


def parse_pubkey(p: bytes) -> KeyAnswer:
    _need(p, PK_LEN + 4, "PUBKEY answer")
    return KeyAnswer(bytes(p[:PK_LEN]), int.from_bytes(p[PK_LEN:], "big"), False)


def us_resp(us: int) -> bytes:
    return struct.pack(">I", us & MASK32)


def parse_us(p: bytes, what: str = "GROUP_BEGIN answer") -> int:
    _need(p, 4, what)
    return int.from_bytes(p, "big")


def group_keys_resp(received: int, derived: int, us: int) -> bytes:
    return struct.pack(">HHI", received, derived, us & MASK32)


def parse_group_keys(p: bytes) -> KeysAnswer:
    _need(p, 8, "GROUP_KEYS answer")
    return KeysAnswer(*struct.unpack(">HHI", p))


def group_commit_resp(n: int, us: int, persisted: int) -> bytes:
    return struct.pack(">HII", n, us & MASK32, persisted & MASK32)


def parse_group_commit(p: bytes) -> CommitAnswer:
    _need(p, 10, "GROUP_COMMIT answer")
    return CommitAnswer(*struct.unpack(">HII", p))


def value_resp(t: int, v: int) -> bytes:
    return struct.pack(">II", t & MASK32, v & MASK32)


def parse_value(p: bytes, what: str) -> tuple[int, int]:
    """CIPHERTEXT and RECOVER answers: (t, value)."""
    _need(p, 8, what)
    t, v = struct.unpack(">II", p)
    return int(t), int(v)
