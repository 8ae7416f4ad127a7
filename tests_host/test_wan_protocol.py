"""WAN protocol v1: the firmware codec (firmware/lib/wan.py, on CPython and on the real
MicroPython VM) against the independent head-end codec (host_tools/headend/wire.py), AES-CTR and
HKDF against `cryptography`, every bad input, the line reader, and the worked example in
docs/PROTOCOL.md."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import wan
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from host_tools.headend import wire

Run = Callable[..., str]
ROOT = Path(__file__).resolve().parent.parent
PROTOCOL_MD = ROOT / "docs" / "PROTOCOL.md"



def _firmware_const(rel: str, name: str) -> int:
    """A micropython.const() of a firmware file, as the board compiles it."""
    found = re.search(rf"^{name} = const\((\d+)\)", (ROOT / "firmware" / rel).read_text(), re.M)
    assert found, f"firmware/{rel}: no {name}"
    return int(found.group(1))


MASTER = bytes.fromhex("5be0d1c4a3f2e1d0c9b8a7f6e5d4c3b2a1908f7e6d5c4b3a2918f7e6d5c4b3a2")
METER = 0x0000_00A1_B2C3_D4E5
OTHER_METER = METER + 1


# ---------------------------------------------------------------- the two codecs, one surface


class Codec:
    """One implementation behind a common surface, for tests that run on both."""

    name = ""
    error: type[Exception] = Exception

    def __init__(self, meter_id: int, master: bytes) -> None:
        self.meter_id = meter_id
        self.master = master

    def seal(self, up: bool, kind: int, ctr: int, ref: int, payload: bytes,
             encrypt: bool = False) -> bytes:
        raise NotImplementedError

    def open(self, up: bool, frame: bytes) -> tuple[int, int, int, int, bytes]:
        raise NotImplementedError

    def from_line(self, line: bytes | bytearray) -> bytes:
        raise NotImplementedError

    def to_line(self, frame: bytes) -> bytes:
        raise NotImplementedError

    def keys(self) -> tuple[bytes, bytes, bytes, bytes]:
        raise NotImplementedError


class Firmware(Codec):
    name = "firmware"
    error = wan.WanError

    def __init__(self, meter_id: int, master: bytes) -> None:
        super().__init__(meter_id, master)
        self._keys = wan.derive_keys(meter_id, master)

    def seal(self, up: bool, kind: int, ctr: int, ref: int, payload: bytes,
             encrypt: bool = False) -> bytes:
        return wan.seal(self._keys, self.meter_id, up, kind, ctr, ref, payload, encrypt)  # type: ignore[no-any-return]

    def open(self, up: bool, frame: bytes) -> tuple[int, int, int, int, bytes]:
        return wan.open_frame(self._keys, self.meter_id, up, frame)  # type: ignore[no-any-return]

    def from_line(self, line: bytes | bytearray) -> bytes:
        return wan.line_to_frame(line)  # type: ignore[no-any-return]

    def to_line(self, frame: bytes) -> bytes:
        return wan.frame_to_line(frame)  # type: ignore[no-any-return]

    def keys(self) -> tuple[bytes, bytes, bytes, bytes]:
        return self._keys  # type: ignore[no-any-return]


class Host(Codec):
    name = "host"
    error = wire.WireError

    def __init__(self, meter_id: int, master: bytes, role: int = wire.ROLE_OPERATOR) -> None:
        super().__init__(meter_id, master)
        self._keys = wire.Keys.derive(meter_id, master, role)

    def seal(self, up: bool, kind: int, ctr: int, ref: int, payload: bytes,
             encrypt: bool = False) -> bytes:
        return wire.seal(self._keys, up, kind, ctr, ref, payload, encrypt)

    def open(self, up: bool, frame: bytes) -> tuple[int, int, int, int, bytes]:
        f = wire.open_frame(self._keys, up, frame)
        assert f.encrypted == bool(f.flags & wire.FLAG_ENC)
        return f.kind, f.flags, f.ctr, f.ref, f.payload

    def from_line(self, line: bytes | bytearray) -> bytes:
        return wire.from_line(line)

    def to_line(self, frame: bytes) -> bytes:
        return wire.to_line(frame)

    def keys(self) -> tuple[bytes, bytes, bytes, bytes]:
        k = self._keys
        return k.k_down_mac, k.k_up_mac, k.k_down_enc, k.k_up_enc


CODECS: dict[str, type[Codec]] = {"firmware": Firmware, "host": Host}


@pytest.fixture(params=sorted(CODECS))
def codec(request: pytest.FixtureRequest) -> Codec:
    return CODECS[request.param](METER, MASTER)


Outcome = tuple[Any, ...]


def outcome(codec: Codec, fn: Callable[[], Any]) -> Outcome:
    """("ok", result) or ("err", code, silent, ref)."""
    try:
        return ("ok", fn())
    except codec.error as e:
        return ("err", e.code, e.silent, e.ref)  # type: ignore[attr-defined]


def try_open(codec: Codec, up: bool, frame: bytes) -> Outcome:
    return outcome(codec, lambda: codec.open(up, frame))


def try_line(codec: Codec, line: bytes) -> Outcome:
    return outcome(codec, lambda: codec.from_line(line))


def ref_keys(meter_id: int, master: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    salt = meter_id.to_bytes(8, "big")

    def hk(info: bytes, n: int) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=n, salt=salt, info=info).derive(master)

    return (hk(b"wan down mac", 32), hk(b"wan up mac", 32), hk(b"wan down enc", 16),
            hk(b"wan up enc", 16))


def ref_mac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()[:16]


def forge(mac_key: bytes, *, ver: int = 1, kind: int = wan.K_READ, flags: int = 0,
          meter: int = METER, ctr: int = 5, ref: int = 0, payload: bytes = b"{}",
          len_field: int | None = None) -> bytes:
    """A frame with any header fields and a valid MAC (what a key holder could send)."""
    n = len(payload) if len_field is None else len_field
    head = struct.pack(">BBBQIIH", ver, kind, flags, meter, ctr, ref, n) + payload
    return head + ref_mac(mac_key, head)


def payload_of(seed: int, n: int) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


# ---------------------------------------------------------------- keys, AES-CTR, MAC


def test_hkdf_keys_match_cryptography() -> None:
    rng = random.Random(5869)
    cases = [(0, bytes(32)), (2**64 - 1, b"\xff" * 32), (METER, MASTER)]
    cases += [(rng.randrange(2**64), rng.randbytes(32)) for _ in range(20)]
    for meter_id, master in cases:
        want = ref_keys(meter_id, master)
        assert wan.derive_keys(meter_id, master) == want
        k = wire.Keys.derive(meter_id, master)
        assert (k.k_down_mac, k.k_up_mac, k.k_down_enc, k.k_up_enc) == want
        assert k.meter_id == meter_id and k.master == master
        assert master.hex() not in repr(k) and want[0].hex() not in repr(k)


def test_bad_master_or_meter_id_refused() -> None:
    for meter_id, master in [(1, bytes(31)), (1, bytes(33)), (-1, bytes(32)), (2**64, bytes(32))]:
        with pytest.raises(ValueError):
            wan.derive_keys(meter_id, master)
        with pytest.raises(ValueError):
            wire.Keys.derive(meter_id, master)


@pytest.mark.parametrize("up", [False, True])
def test_aes_ctr_and_mac_match_cryptography(codec: Codec, up: bool) -> None:
    rng = random.Random(128 + up)
    kdm, kum, kde, kue = ref_keys(METER, MASTER)
    mac_key, enc_key = (kum, kue) if up else (kdm, kde)
    for n in [0, 1, 15, 16, 17, 31, 32, 33, 200, 1023, 1024]:
        payload = rng.randbytes(n)
        ctr = rng.randrange(1, 2**32)
        ref = rng.randrange(2**32) if up else 0
        frame = codec.seal(up, wan.K_PROFILE, ctr, ref, payload, encrypt=True)
        assert len(frame) == 21 + n + 16
        assert frame[:21] == struct.pack(">BBBQIIH", 1, wan.K_PROFILE, 1 | (2 if up else 0), METER,
                                         ctr, ref, n)
        block0 = METER.to_bytes(8, "big") + ctr.to_bytes(4, "big") + bytes(4)
        enc = Cipher(algorithms.AES(enc_key), modes.CTR(block0)).encryptor()
        assert frame[21:21 + n] == enc.update(payload) + enc.finalize()
        # the counter block: meter | ctr | block index (big-endian), by hand with ECB
        ecb = Cipher(algorithms.AES(enc_key), modes.ECB()).encryptor()
        stream = b"".join(ecb.update(METER.to_bytes(8, "big") + ctr.to_bytes(4, "big")
                                     + i.to_bytes(4, "big")) for i in range((n + 15) // 16))
        assert frame[21:21 + n] == bytes(a ^ b for a, b in zip(payload, stream, strict=False))
        assert frame[21 + n:] == ref_mac(mac_key, frame[:21 + n])
        plain = codec.seal(up, wan.K_PROFILE, ctr, ref, payload)
        assert plain[21:21 + n] == payload
        assert plain[2] == (2 if up else 0)
        assert plain[21 + n:] == ref_mac(mac_key, plain[:21 + n])


def test_ct_equal() -> None:
    assert wan.ct_equal(b"", b"")
    assert wan.ct_equal(bytes(16), bytearray(16))
    assert not wan.ct_equal(bytes(16), bytes(15))
    for i in range(16):
        for bit in range(8):
            b = bytearray(16)
            b[i] ^= 1 << bit
            assert not wan.ct_equal(bytes(16), b)


# ---------------------------------------------------------------- firmware <-> host


@pytest.mark.parametrize("up", [False, True])
@pytest.mark.parametrize("encrypt", [False, True])
def test_cross_seal_open(up: bool, encrypt: bool) -> None:
    fw, host = Firmware(METER, MASTER), Host(METER, MASTER)
    rng = random.Random(f"{up}{encrypt}")
    lengths = [0, 1, 16, 1024] + [rng.randrange(0, 1025) for _ in range(40)]
    kinds = [wan.K_INFO, wan.K_READ, wan.K_PROFILE, wan.K_LOGS, wan.K_TIME_SET,
             wan.K_CALIBRATE, wan.K_STATS, wan.K_ERROR, 0x00, 0xFF]
    for n in lengths:
        payload = rng.randbytes(n)
        kind = rng.choice(kinds)
        ctr = rng.choice([1, 2**32 - 1, rng.randrange(1, 2**32)])
        ref = rng.randrange(2**32) if up else 0
        a = fw.seal(up, kind, ctr, ref, payload, encrypt)
        b = host.seal(up, kind, ctr, ref, payload, encrypt)
        assert a == b  # deterministic: the same bytes from both
        flags = (wan.FLAG_ENC if encrypt else 0) | (wan.FLAG_RESP if up else 0)
        want = (kind, flags, ctr, ref, payload)
        assert host.open(up, a) == want
        assert fw.open(up, b) == want
        f = wire.open_frame(wire.Keys.derive(METER, MASTER), up, a)
        assert f.encrypted is encrypt and f.up is up
        line_a, line_b = fw.to_line(a), host.to_line(a)
        assert line_a == line_b
        assert host.from_line(line_a) == a and fw.from_line(line_b) == a
        assert fw.from_line(line_a.replace(b"\n", b"\r\n")) == a
        assert host.from_line(line_a.replace(b"\n", b"\r\n")) == a
        assert fw.from_line(line_a[1:]) == a and host.from_line(line_a[1:-1]) == a
        assert fw.from_line(bytearray(line_a)) == a and host.from_line(bytearray(line_a)) == a


NEVER_RAW = frozenset({0x01, 0x02, 0x03, 0x04, 0x05, 0x0A, 0x0D})


def escaped_ok(line: bytes) -> bool:
    """Every ESC in the line starts a pair standing for one of the escaped bytes."""
    i = line.find(b"\x1b")
    while i >= 0:
        if i + 1 >= len(line) or line[i + 1] ^ 0x40 not in NEVER_RAW | {0x1B}:
            return False
        i = line.find(b"\x1b", i + 2)
    return True


def test_lines_never_hold_control_keys_and_cost_one_byte_per_escape() -> None:
    rng = random.Random(64)
    fw = Firmware(METER, MASTER)
    for n in [0, 1, 2, 3, 1022, 1023, 1024] + [rng.randrange(1025) for _ in range(100)]:
        frame = fw.seal(rng.random() < 0.5, rng.randrange(256), rng.randrange(1, 2**32), 0,
                        rng.randbytes(n), rng.random() < 0.5)
        escapes = sum(b in NEVER_RAW or b == 0x1B for b in frame)
        for line in (bytes(wan.frame_to_line(frame)), wire.to_line(frame)):
            assert line[:1] == b"~" and line[-1:] == b"\n"
            assert not NEVER_RAW & set(line[:-1]), line
            assert escaped_ok(line[1:-1])
            assert len(line) == 2 + len(frame) + escapes
            assert len(line) == 1 + wire.line_length(frame) and len(line) - 1 <= wan.LINE_CAP


def test_every_byte_value_round_trips_both_codecs() -> None:
    # each of the 256 byte values alone, in pairs with every escaped one, and runs of them
    escaped = sorted(NEVER_RAW | {0x1B})
    frames = [bytes([b]) for b in range(256)] + [bytes(range(256)) * 4]
    frames += [bytes([e, b]) for e in escaped for b in range(256)]
    frames += [bytes([e]) * 7 for e in escaped] + [bytes(escaped) * 50]
    for frame in frames:
        a, b = bytes(wan.frame_to_line(frame)), wire.to_line(frame)
        assert a == b
        assert bytes(wan.line_to_frame(a)) == frame and wire.from_line(a) == frame
    # all escaped: twice the bytes, so 749 of them still fit a line, 750 do not
    for codec_line in (wan.frame_to_line, wire.to_line):
        assert len(codec_line(bytes(749))) == 751  # zero bytes travel as they are
        assert len(codec_line(b"\n" * 749)) == 2 + 2 * 749
    assert outcome(Firmware(METER, MASTER), lambda: wan.frame_to_line(b"\n" * 750))[:2] == (
        "err", wan.E_TOO_BIG)
    assert outcome(Host(METER, MASTER), lambda: wire.to_line(b"\n" * 750))[:2] == (
        "err", wan.E_TOO_BIG)


def test_constants_agree() -> None:
    # Every kind and error code is the same number on both sides, and named on the host.
    kinds = sorted(n for n in dir(wire) if n.startswith("K_"))
    assert kinds == sorted(n for n in dir(wan) if n.startswith("K_"))
    names = [*kinds, "VER", "HEADER", "MAC_LEN", "PAYLOAD_CAP", "LINE_CAP", "FLAG_ENC",
             "FLAG_RESP", "E_MALFORMED", "E_TOO_BIG", "E_REPLAY", "E_UNKNOWN_KIND", "E_POLICY",
             "E_BAD_ARGS", "E_FAILED", "E_NOT_PROVISIONED", "UNPROVISIONED_MASTER"]
    for name in names:
        assert getattr(wan, name) == getattr(wire, name), name
    assert (wan.VER, wan.HEADER, wan.MAC_LEN, wan.PAYLOAD_CAP, wan.LINE_CAP) == (1, 21, 16, 1024,
                                                                                 1500)
    assert set(wan.ENC_RESPONSE_KINDS) == wire.ENC_RESPONSE_KINDS == {0x10, 0x11, 0x12}
    assert wire.KIND_NAMES == {getattr(wire, k): k[2:] for k in kinds}
    assert {0x01: "INFO", 0x10: "READ", 0x11: "PROFILE", 0x12: "LOGS", 0x13: "TIME_SET",
            0x14: "CALIBRATE", 0x15: "STATS", 0x7F: "ERROR"}.items() <= wire.KIND_NAMES.items()
    assert wire.ERROR_NAMES == {1: "MALFORMED", 2: "TOO_BIG", 3: "REPLAY", 4: "UNKNOWN_KIND",
                                5: "POLICY", 6: "BAD_ARGS", 7: "FAILED", 8: "NOT_PROVISIONED"}


def test_error_payloads() -> None:
    cases: list[tuple[int, Any, bytes, Any]] = [
        (wan.E_MALFORMED, None, b"\x01", None),
        (wan.E_REPLAY, 40, b"\x03\x00\x00\x00\x28", 40),
        (wan.E_REPLAY, 2**32 - 1, b"\x03\xff\xff\xff\xff", 2**32 - 1),
        (wan.E_BAD_ARGS, "max: out of range", b"\x06max: out of range", "max: out of range"),
        (wan.E_FAILED, "flash full é", b"\x07flash full \xc3\xa9", "flash full é"),
        (wan.E_POLICY, b"\xff\xfe", b"\x05\xff\xfe", b"\xff\xfe"),
    ]
    for code, detail, payload, parsed in cases:
        assert wan.error_payload(code, detail) == payload
        assert wire.error_payload(code, detail) == payload
        assert wan.parse_error(payload) == (code, parsed)
        assert wire.parse_error(payload) == (code, parsed)
    assert len(wan.error_payload(wan.E_FAILED, "x" * 5000)) == wan.PAYLOAD_CAP
    assert len(wire.error_payload(wan.E_FAILED, "x" * 5000)) == wan.PAYLOAD_CAP
    assert wire.describe_error(b"\x03\x00\x00\x00\x28") == "REPLAY (resync above 40)"
    assert wire.describe_error(b"\x05") == "POLICY"
    for bad in (0, 256):
        with pytest.raises(ValueError):
            wan.error_payload(bad)
        with pytest.raises(ValueError):
            wire.error_payload(bad)
    with pytest.raises(wan.WanError):
        wan.parse_error(b"")
    with pytest.raises(wire.WireError):
        wire.parse_error(b"")


def test_seal_refuses_bad_fields(codec: Codec) -> None:
    with pytest.raises(codec.error) as e:
        codec.seal(True, wan.K_LOGS, 9, 3, bytes(wan.PAYLOAD_CAP + 1))
    assert e.value.code == wan.E_TOO_BIG  # type: ignore[attr-defined]
    for up, kind, ctr, ref in [(False, 1, 0, 0), (False, 1, 2**32, 0), (False, 1, 1, 5),
                               (True, 1, 1, -1), (True, 1, 1, 2**32), (True, 256, 1, 0),
                               (True, -1, 1, 0)]:
        with pytest.raises(ValueError):
            codec.seal(up, kind, ctr, ref, b"")


# ---------------------------------------------------------------- bad input, on both codecs


def test_bit_flip_anywhere_is_silent_or_malformed(codec: Codec) -> None:
    for up in (False, True):
        for encrypt in (False, True):
            frame = codec.seal(up, wan.K_LOGS, 0x01020304, 9 if up else 0, b"0123456789", encrypt)
            assert codec.open(up, frame)[4] == b"0123456789"
            for pos in range(len(frame)):
                for bit in range(8):
                    bad = bytearray(frame)
                    bad[pos] ^= 1 << bit
                    got = try_open(codec, up, bytes(bad))
                    ctr = int.from_bytes(bad[11:15], "big")
                    if pos == 0 or pos in (19, 20):  # version, len field: caught before the MAC
                        assert got == ("err", wan.E_MALFORMED, False, ctr), (pos, bit)
                    else:  # meter, direction, or the MAC (incl. ENC and reserved flag bits)
                        assert got == ("err", 0, True, ctr), (pos, bit)


def test_wrong_meter_and_reflected_are_silent(codec: Codec) -> None:
    other = type(codec)(OTHER_METER, MASTER)
    other_key = type(codec)(METER, bytes(32))
    for up in (False, True):
        frame = codec.seal(up, wan.K_READ, 77, 0, b"{}", True)
        # another meter's codec (its own id and keys)
        assert try_open(other, up, frame) == ("err", 0, True, 77)
        # the right id, another key
        assert try_open(other_key, up, frame) == ("err", 0, True, 77)
        # a frame for another meter with a valid MAC under this meter's key
        k = codec.keys()
        forged = forge(k[1] if up else k[0], meter=OTHER_METER, ctr=78,
                       flags=wan.FLAG_RESP if up else 0, ref=0)
        assert try_open(codec, up, forged) == ("err", 0, True, 78)
        # reflected: a command fed back as a response and vice versa
        assert try_open(codec, not up, frame) == ("err", 0, True, 77)
        # the direction bit flipped by a key holder (valid MAC under the other direction's key)
        refl = forge(k[0] if up else k[1], flags=0 if not up else wan.FLAG_RESP, ctr=79)
        assert try_open(codec, not up, refl) == ("err", 0, True, 79)


def test_truncated_at_every_length_is_malformed(codec: Codec) -> None:
    for encrypt in (False, True):
        frame = codec.seal(True, wan.K_PROFILE, 0xA0B0C0D0, 3, bytes(range(40)), encrypt)
        for n in range(len(frame)):
            want_ref = 0xA0B0C0D0 if n >= 15 else 0
            got = try_open(codec, True, frame[:n])
            assert got == ("err", wan.E_MALFORMED, False, want_ref), n
        for extra in (b"\x00", bytes(16)):
            got = try_open(codec, True, frame + extra)
            assert got == ("err", wan.E_MALFORMED, False, 0xA0B0C0D0)


def test_len_field_lies_is_malformed(codec: Codec) -> None:
    k = codec.keys()
    payload = bytes(30)
    for lie in (0, 29, 31, 1024, 1025, 0xFFFF):
        frame = forge(k[0], payload=payload, len_field=lie, ctr=12)
        got = try_open(codec, False, frame)
        assert got == ("err", wan.E_MALFORMED, False, 12), lie
    frame = forge(k[0], payload=payload, ver=2, ctr=12)
    assert try_open(codec, False, frame) == ("err", wan.E_MALFORMED, False, 12)


def test_oversize_payload_is_too_big(codec: Codec) -> None:
    k = codec.keys()
    frame = forge(k[0], payload=bytes(wan.PAYLOAD_CAP + 1), ctr=13)
    assert try_open(codec, False, frame) == ("err", wan.E_TOO_BIG, False, 13)
    # such a frame still fits a line (1025 + 37 bytes and an escape or two, + "~")
    line = wire.to_line(frame)
    assert len(line) - 1 <= wan.LINE_CAP
    assert codec.from_line(line) == frame
    # exactly at the cap it is fine
    frame = forge(k[0], payload=bytes(wan.PAYLOAD_CAP), ctr=14)
    assert codec.open(False, frame)[4] == bytes(wan.PAYLOAD_CAP)


def test_ctr_zero_reserved_flags_and_command_ref_are_malformed(codec: Codec) -> None:
    kdm, kum, _, _ = codec.keys()
    bad: list[tuple[bool, bytes, int]] = [
        (False, forge(kdm, ctr=0), 0),
        (True, forge(kum, ctr=0, flags=wan.FLAG_RESP, ref=4), 0),
        (False, forge(kdm, ctr=6, flags=0x10), 6),  # bits 2-3: the role, known
        (True, forge(kum, ctr=6, flags=0x80 | wan.FLAG_RESP), 6),
        (False, forge(kdm, ctr=6, ref=5), 6),
    ]
    for up, frame, ref in bad:
        got = try_open(codec, up, frame)
        assert got == ("err", wan.E_MALFORMED, False, ref)
    # the same forged frames without the defect open fine
    assert codec.open(False, forge(kdm, ctr=6))[2] == 6
    assert codec.open(True, forge(kum, ctr=6, flags=wan.FLAG_RESP, ref=5))[3] == 5


def test_line_caps(codec: Codec) -> None:
    def line_of(n: int, fill: bytes = b"\xa5") -> bytes:  # "~" + n - 1 bytes
        return b"~" + fill * (n - 1)

    # 1500 characters: at the cap, with any line end
    for end in (b"", b"\n", b"\r\n", b"\r\r\n"):
        assert codec.from_line(line_of(1500) + end) == b"\xa5" * 1499
    # escapes count as the two characters they are
    assert codec.from_line(line_of(1498) + b"\x1b\x4a") == b"\xa5" * 1497 + b"\n"
    assert try_line(codec, line_of(1499) + b"\x1b\x4a")[:2] == ("err", wan.E_TOO_BIG)
    for n in (1501, 1502, 5000, 100_000):
        for end in (b"", b"\n", b"\r\n"):
            got = try_line(codec, line_of(n) + end)
            assert got == ("err", wan.E_TOO_BIG, False, 0), (n, end)
    # without the "~", the cap counts it anyway
    assert try_line(codec, b"A" * 1500)[:2] == ("err", wan.E_TOO_BIG)
    assert codec.from_line(b"A" * 1499) == b"A" * 1499


BAD_LINES = [
    # an unescaped forbidden byte anywhere inside: Ctrl-A..Ctrl-E, CR, LF
    *(b"~AB" + bytes([c]) + b"CD" for c in (1, 2, 3, 4, 5, 13)),
    b"~\x03", b"~AB\nCD", b"~\r\x1b\x4d", b"~\x1b\x4d\rA",
    # a truncated escape: ESC last (before the line end)
    b"~\x1b", b"~ABC\x1b", b"~\x1b\x41\x1b", b"~\x1b\r\n",
    # an escape of a byte that travels as itself, or of nothing known: not canonical
    b"~\x1b\x40", b"~\x1b\x46", b"~\x1b\x1b\x5b", b"~\x1bA\x1bZ", b"~\x1b\x00",
    b"~\x1b\x01", b"~\x1b\x0a\x0a", b"~\x1b\xc1", b"~\x1b~",
]


@pytest.mark.parametrize("line", BAD_LINES)
def test_bad_lines_are_malformed(codec: Codec, line: bytes) -> None:
    assert try_line(codec, line) == ("err", wan.E_MALFORMED, False, 0)


def test_empty_and_odd_lines(codec: Codec) -> None:
    # an empty body decodes to an empty frame, which open_frame calls MALFORMED
    for line in (b"~", b"~\n", b"~\r\n", b""):
        assert codec.from_line(line) == b""
    assert try_open(codec, False, b"")[:3] == ("err", wan.E_MALFORMED, False)
    assert codec.from_line(b"~AAAA\r\r\n") == b"AAAA"
    # bytes no terminal key needs travel as they are: NUL, DEL, XON/XOFF, 0x80..0xff, "~"
    odd = b"\x00\x7f\x11\x13\x80\xff~\x06\x1a\x1c"
    assert codec.from_line(b"~" + odd + b"\n") == odd


# ---------------------------------------------------------------- LineReader


def test_line_reader_any_chunking() -> None:
    host = Host(METER, MASTER)
    frames = [host.seal(True, wan.K_READ, i + 1, i, payload_of(i, i * 37 % 1025), True)
              for i in range(12)]
    stream = b"MicroPython v1.29 on 2026-01-01; linux\r\nType \"help()\"\r\n"
    want: list[bytes] = []
    texts: list[bytes] = [b"MicroPython v1.29 on 2026-01-01; linux", b"Type \"help()\""]
    for i, f in enumerate(frames):
        line = wire.to_line(f)
        want.append(line[:-1])
        stream += line if i % 2 else line[:-1] + b"\r\n"
        if i % 3 == 0:
            stream += b"print from a task %d\n\n" % i
            texts.append(b"print from a task %d" % i)
    rng = random.Random(7)
    for trial in range(30):
        got_text: list[bytes] = []
        reader = wire.LineReader(on_text=got_text.append)
        got: list[bytes] = []
        pos = 0
        while pos < len(stream):
            step = 1 if trial == 0 else rng.randrange(1, 700)
            got += reader.feed(stream[pos:pos + step])
            pos += step
        assert got == want
        assert got_text == texts
        assert reader.ignored == len(texts) and reader.dropped == 0 and reader.pending == 0
        assert [host.open(True, wire.from_line(line))[2] for line in got] == list(range(1, 13))


def test_line_reader_caps_memory_and_reports_drops() -> None:
    drops: list[int] = []
    reader = wire.LineReader(on_drop=drops.append)
    at_cap = b"~" + b"A" * (wan.LINE_CAP - 1)
    over = at_cap + b"A"
    assert reader.feed(at_cap + b"\r\n") == [at_cap]
    assert reader.feed(at_cap + b"\r\r\n") == [at_cap]
    assert reader.feed(over + b"\n" + b"~AAAA\n") == [b"~AAAA"]
    assert drops == [wan.LINE_CAP + 1] and reader.dropped == 1
    # garbage without a newline: memory stays bounded, the line is dropped at its end
    for _ in range(1000):
        assert reader.feed(b"~" + b"x" * 999) == []
        assert reader.pending <= wan.LINE_CAP + 1
    assert reader.feed(b"\r\n~AAAA\n") == [b"~AAAA"]
    assert reader.dropped == 2 and drops[-1] == 1000 * 1000
    # a long non-frame line is ignored, also bounded
    texts: list[bytes] = []
    reader = wire.LineReader(on_text=texts.append)
    for _ in range(100):
        reader.feed(b"y" * 1000)
        assert reader.pending <= wan.LINE_CAP + 1
    assert reader.feed(b"\n") == []
    assert texts == [b"y" * wan.LINE_CAP] and reader.ignored == 1 and reader.dropped == 0
    # the "\r" before the newline arrives in its own chunk
    reader = wire.LineReader()
    got = [x for c in (at_cap, b"\r", b"\r", b"\n") for x in reader.feed(c)]
    assert got == [at_cap]


# ---------------------------------------------------------------- docs/PROTOCOL.md


def doc_example() -> tuple[dict[str, str], str]:
    text = PROTOCOL_MD.read_text()
    section = text.split("## Worked example", 1)[1]
    blocks = re.findall(r"```text\n(.*?)```", section, re.S)
    values: dict[str, str] = {}
    fields = ""
    for block in blocks:
        values.update(re.findall(r"^(\w+)\s*=\s*(\S+)\s*$", block, re.M))
        if "ver 1" in block:
            fields = "".join(re.findall(r"^([0-9a-f]+)\s{2,}", block, re.M))
    return values, fields


def test_worked_example_in_protocol_md() -> None:
    values, fields = doc_example()
    master = bytes.fromhex(values["K"])
    meter_id = int(values["meter_id"])
    keys = wan.derive_keys(meter_id, master)
    assert [k.hex() for k in keys] == [values["k_down_mac"], values["k_up_mac"],
                                      values["k_down_enc"], values["k_up_enc"]]
    hk = wire.Keys.derive(meter_id, master)

    cmd = wan.seal(keys, meter_id, False, wan.K_READ, 7, 0, b"{}", True)
    assert cmd == wire.seal(hk, False, wire.K_READ, 7, 0, b"{}", encrypt=True)
    assert cmd.hex() == values["command_frame"]
    assert fields == values["command_frame"]
    command_line = bytes.fromhex(values["command_line"])
    assert wan.frame_to_line(cmd) == command_line == wire.to_line(cmd)
    assert wire.open_frame(hk, False, wire.from_line(command_line)).payload == b"{}"

    resp_payload = wire.error_payload(wire.E_REPLAY, 40)
    assert resp_payload.hex() == "0300000028"
    resp = wan.seal(keys, meter_id, True, wan.K_ERROR, 42, 7, resp_payload)
    assert resp == wire.seal(hk, True, wire.K_ERROR, 42, 7, resp_payload)
    assert resp.hex() == values["response_frame"]
    response_line = bytes.fromhex(values["response_line"])
    assert wire.to_line(resp) == response_line == wan.frame_to_line(resp)
    got = wire.open_frame(hk, True, wire.from_line(response_line))
    assert (got.kind, got.ctr, got.ref, wire.parse_error(got.payload)) == (
        wire.K_ERROR, 42, 7, (wire.E_REPLAY, 40))


# ---------------------------------------------------------------- on the MicroPython VM


VM_PRELUDE = f"""
import wan
h = bytes.fromhex
M = {METER}
K = wan.derive_keys(M, h({MASTER.hex()!r}))
def show(up, line):
    try:
        r = wan.open_frame(K, M, up, wan.line_to_frame(line))
        print("ok", r[0], r[1], r[2], r[3], r[4].hex())
    except wan.WanError as e:
        print("err", e.code, int(e.silent), e.ref)
"""


def host_show(up: bool, line: bytes) -> str:
    keys = wire.Keys.derive(METER, MASTER)
    try:
        f = wire.open_frame(keys, up, wire.from_line(line))
        return f"ok {f.kind} {f.flags} {f.ctr} {f.ref} {f.payload.hex()}"
    except wire.WireError as e:
        return f"err {e.code} {int(e.silent)} {e.ref}"


def run_lines_on_vm(micropython: Run, tmp_path: Path, cases: list[tuple[bool, bytes]]) -> list[str]:
    """Each (up, line) through wan.line_to_frame + wan.open_frame on the VM, read from a file."""
    path = tmp_path / "lines.txt"
    path.write_bytes(b"".join((b"U" if up else b"D") + line + b"\n" for up, line in cases))
    code = VM_PRELUDE + f"""
with open({str(path)!r}, "rb") as f:
    while True:
        line = f.readline()
        if not line:
            break
        show(line[0] == 85, line[1:])
"""
    return micropython(code).splitlines()


def test_vm_opens_host_frames(micropython: Run, tmp_path: Path) -> None:
    host = Host(METER, MASTER)
    rng = random.Random(2040)
    cases: list[tuple[bool, bytes]] = []
    for n in [0, 1, 16, 17, 200, 1024] + [rng.randrange(1025) for _ in range(6)]:
        for up in (False, True):
            for encrypt in (False, True):
                frame = host.seal(up, rng.randrange(256), rng.randrange(1, 2**32),
                                  rng.randrange(2**32) if up else 0, rng.randbytes(n), encrypt)
                line = wire.to_line(frame)[:-1]
                cases.append((up, line + b"\r" if rng.random() < 0.5 else line))
    out = run_lines_on_vm(micropython, tmp_path, cases)
    want = [host_show(up, line) for up, line in cases]
    assert all(w.startswith("ok ") for w in want)
    assert out == want


def test_vm_bad_inputs(micropython: Run, tmp_path: Path) -> None:
    host = Host(METER, MASTER)
    other = Host(OTHER_METER, MASTER)
    kdm, kum, _, _ = host.keys()
    good = host.seal(False, wan.K_READ, 1000, 0, b'{"x": 1}', True)
    cases: list[tuple[bool, bytes]] = []

    def add(up: bool, frame: bytes) -> None:
        cases.append((up, wire.to_line(frame)[:-1]))

    for pos, bit in [(0, 0), (1, 3), (2, 0), (2, 1), (2, 7), (3, 0), (10, 7), (11, 0), (14, 7),
                     (15, 1), (19, 0), (20, 2), (21, 0), (28, 5), (29, 0), (44, 7)]:
        bad = bytearray(good)
        bad[pos] ^= 1 << bit
        add(False, bytes(bad))
    for n in (0, 1, 14, 15, 20, 21, 36, 37, len(good) - 1):
        add(False, good[:n])
    add(False, other.seal(False, wan.K_READ, 5, 0, b"{}"))           # wrong meter
    add(True, good)                                                 # reflected
    add(False, host.seal(True, wan.K_READ, 5, 1000, b"{}", True))   # a response as a command
    add(False, forge(kdm, ctr=0))                                   # ctr 0
    add(False, forge(kdm, ctr=8, len_field=3))                      # len lies
    add(False, forge(kdm, ctr=9, payload=bytes(1025)))              # payload over cap
    add(False, forge(kdm, ctr=10, flags=0x10))                      # reserved flag
    add(False, forge(kdm, ctr=11, ref=1))                           # command with a ref
    add(True, forge(kum, ctr=12, flags=wan.FLAG_RESP, ref=1))       # fine
    for line in BAD_LINES:
        if b"\n" not in line:  # the VM reads the cases as lines
            cases.append((False, line))
    cases.append((False, b"~" + b"A" * 1500))                       # line over cap
    cases.append((False, b"~" + b"A" * 1499))                       # at cap: a frame of "A"s
    out = run_lines_on_vm(micropython, tmp_path, cases)
    want = [host_show(up, line) for up, line in cases]
    assert out == want
    assert {w.split()[0] + " " + w.split()[1] for w in want} >= {
        "err 0", "err 1", "err 2", "ok 16"}


def test_host_opens_vm_frames(micropython: Run) -> None:
    rng = random.Random(4)
    params = []
    for n in [0, 1, 15, 16, 200, 1024] + [rng.randrange(1025) for _ in range(6)]:
        for up in (False, True):
            for encrypt in (False, True):
                params.append((up, rng.randrange(256), rng.randrange(1, 2**32),
                               rng.randrange(2**32) if up else 0, n, rng.randrange(256), encrypt))
    code = VM_PRELUDE + f"""
print(bytes(b"banner: sealing on the VM\\n").hex())
for up, kind, ctr, ref, n, seed, enc in {params!r}:
    p = bytes((i * 7 + seed) & 255 for i in range(n))
    print(bytes(wan.frame_to_line(wan.seal(K, M, up, kind, ctr, ref, p, enc))).hex())
try:
    wan.seal(K, M, True, 1, 1, 0, bytes(1025))
except wan.WanError as e:
    print(("too big %d\\n" % e.code).encode().hex())
"""
    # the VM's output as hex (the test runner reads text); the link carries the bytes
    # themselves (tests_device/test_link.py)
    out = b"".join(bytes.fromhex(h) for h in micropython(code).split())
    texts: list[bytes] = []
    reader = wire.LineReader(on_text=texts.append)
    lines = reader.feed(out)
    assert texts == [b"banner: sealing on the VM", b"too big 2"]
    assert len(lines) == len(params)
    host = Host(METER, MASTER)
    for line, (up, kind, ctr, ref, n, seed, enc) in zip(lines, params, strict=True):
        payload = payload_of(seed, n)
        frame = wire.from_line(line)
        assert frame == host.seal(up, kind, ctr, ref, payload, enc)
        flags = (wan.FLAG_ENC if enc else 0) | (wan.FLAG_RESP if up else 0)
        assert host.open(up, frame) == (kind, flags, ctr, ref, payload)


def test_vm_worked_example_and_errors(micropython: Run) -> None:
    values, _ = doc_example()
    code = f"""
import wan
m = {int(values["meter_id"])}
k = wan.derive_keys(m, bytes.fromhex({values["K"]!r}))
print(" ".join(x.hex() for x in k))
c = wan.seal(k, m, False, wan.K_READ, 7, 0, b"{{}}", True)
print(c.hex())
print(bytes(wan.frame_to_line(c)).hex())
r = wan.seal(k, m, True, wan.K_ERROR, 42, 7, wan.error_payload(wan.E_REPLAY, 40))
print(r.hex())
print(wan.parse_error(wan.open_frame(k, m, True, r)[4]))
print(wan.parse_error(wan.error_payload(wan.E_BAD_ARGS, "bad max")))
print(wan.ct_equal(b"ab", b"ab"), wan.ct_equal(b"ab", b"ac"), wan.ct_equal(b"ab", b"a"))
line = bytes.fromhex({values["command_line"]!r})
print(wan.open_frame(k, m, False, wan.line_to_frame(line[:-1] + b"\\r\\n")))
"""
    out = micropython(code).splitlines()
    assert out == [
        " ".join(values[n] for n in ("k_down_mac", "k_up_mac", "k_down_enc", "k_up_enc")),
        values["command_frame"],
        values["command_line"],
        values["response_frame"],
        "(3, 40)",
        "(6, 'bad max')",
        "True False False",
        "(16, 1, 7, 0, b'{}')",
    ]


def test_vm_timing_seal_open_200_bytes_enc(micropython: Run) -> None:
    code = VM_PRELUDE + """
import time, gc
p = bytes(range(200))
ts = []
for i in range(30):
    gc.collect()
    t0 = time.ticks_us()
    f = wan.seal(K, M, True, wan.K_READ, i + 1, 7, p, True)
    r = wan.open_frame(K, M, True, f)
    ts.append(time.ticks_diff(time.ticks_us(), t0))
    assert r[4] == p
ts.sort()
gc.collect()
print(ts[0], ts[len(ts) // 2], ts[-1], gc.mem_free())
"""
    lo, med, hi, free = (int(x) for x in micropython(code).split())
    print(f"\nMicroPython VM: seal+open of a 200-byte ENC payload: min {lo} us, "
          f"median {med} us, max {hi} us (30 runs); heap free after: {free} bytes")


# ------------------------------------------- the CS security module's answers and counters (VM)

CS_PRELUDE = """
import binascii, json, os, struct
import store
from tasks import cs_security
import wan

D = {dir!r}
cs_security.KEYS = D + "/cs_keys.json"
cs_security.COUNTERS = D + "/cs_ctr.json"
FAIL = [0]  # store.save raises OSError while set: the flash refuses the write
_save = store.save


def save(path, obj):
    if FAIL[0] and path == cs_security.COUNTERS:
        raise OSError(28)
    _save(path, obj)


store.save = save  # what cs_security calls: the store's write, with a fault hook


class Port:
    def __init__(self):
        self.out, self.logs = [], []
    def send(self, to, kind, payload=None):
        if kind == "frame_out":  # a frame: comm writes its line
            self.out.append(wan.frame_to_line(payload))
        return True
    def log(self, text):
        self.logs.append(text)
    log_flood = log


def boot():
    port = Port()
    return cs_security.CsSecurity(port, {{"info": {{"fw": "t"}}}}), port


def answers(port):
    # (ref, up ctr, kind, error code or None) of every frame the meter wrote
    got = []
    for line in port.out:
        f = wan.line_to_frame(line)
        _, kind, _, _, ctr, ref, n = struct.unpack_from(">BBBQIIH", f, 0)
        got.append([ref, ctr, kind, f[21] if kind == wan.K_ERROR else None])
    port.out.clear()
    return got
"""


def _cs_vm(micropython: Run, tmp_path: Path, body: str) -> Any:
    d = tmp_path / "data"
    d.mkdir()
    (d / "cs_keys.json").write_text("")  # replaced by store.save below
    code = CS_PRELUDE.format(dir=str(d)) + f"""
store.save(cs_security.KEYS, {{"meter": {METER}, "master": {MASTER.hex()!r}}})
""" + body
    out = micropython(code)
    return json.loads(out.strip().splitlines()[-1])


def test_an_unauthenticated_frame_gets_no_answer_bound_to_its_ref(micropython: Run,
                                                                   tmp_path: Path) -> None:
    # Issue 18 finding 6: a frame with no valid MAC got a MAC'd ERROR bound to the ref in its
    # header, which the head-end took for the answer to its own command of that counter.
    # Every frame here names counter 77 (the genuine command's); none may be answered.
    host = Host(METER, MASTER)
    kdm = host.keys()[0]
    genuine = host.seal(False, wan.K_TOPUP, 77, 0, b'{"amount_mc": 1000}')
    forged: list[bytes] = [
        genuine[:15], genuine[:30],                                  # short, ctr readable
        b"\x02" + genuine[1:],                                       # bad version
        forge(kdm, ctr=77, len_field=3),                             # len lies
        forge(kdm, ctr=77, payload=bytes(1025)),                     # payload over cap
        genuine[:-1] + bytes([genuine[-1] ^ 1]),                     # bad MAC
        Host(OTHER_METER, MASTER).seal(False, wan.K_TOPUP, 77, 0, b"{}"),  # another meter
        host.seal(True, wan.K_TOPUP, 77, 0, b"{}"),                  # reflected
    ]
    frames = [*forged, b"AAAA"]
    r = _cs_vm(micropython, tmp_path, f"""
cs, port = boot()
res = {{"forged": []}}
for frame in {frames!r}:
    cs.handle("comm", "frame_in", frame)
    res["forged"].append(answers(port))
# the lines comm could not make a frame of: over the cap, a bad escape (e.g. "~!\x1b!")
cs.handle("comm", "frame_err", wan.E_TOO_BIG)
cs.handle("comm", "frame_err", wan.E_MALFORMED)
res["bad_lines"] = answers(port)
res["bad_line_logs"] = port.logs[-2:]
res["rejected"] = cs.rejected
# after the MAC: ctr 0 and a reserved flag are the head-end's own frames: answered, bound to
# their own counter
for f in ({forge(kdm, ctr=0)!r}, {forge(kdm, ctr=78, flags=0x10)!r}):
    cs.handle("comm", "frame_in", f)
res["authentic"] = answers(port)
print(json.dumps(res))
""")
    assert r["forged"] == [[]] * len(frames), r
    assert r["bad_lines"] == [] and r["rejected"] == len(frames) + 2
    assert r["bad_line_logs"] == [
        "wan: rejected (line over cap)",
        f"wan: rejected (bad line: a raw control byte or a bad escape, code {wan.E_MALFORMED})"]
    assert [(a[0], a[2], a[3]) for a in r["authentic"]] == [
        (0, wan.K_ERROR, wan.E_MALFORMED), (78, wan.K_ERROR, wan.E_MALFORMED)]


def test_replay_says_whether_a_command_of_that_counter_may_have_changed_the_meter(
        micropython: Run, tmp_path: Path) -> None:
    host = Host(METER, MASTER, wire.ROLE_SUPPLIER)  # TOPUP and READ: the supplier's
    topup = host.seal(False, wan.K_TOPUP, 5, 0, b'{"amount_mc": 1}')
    read = host.seal(False, wan.K_READ, 6, 0, b"")
    stale = host.seal(False, wan.K_TOPUP, 3, 0, b"{}")
    r = _cs_vm(micropython, tmp_path, f"""
cs, port = boot()
res = {{}}
for frame in ({topup!r}, {read!r}):
    cs.handle("comm", "frame_in", frame)
res["flash"] = store.load(cs_security.COUNTERS, None)
answers(port)
cs, port = boot()  # a reboot: every counter up to the reservation counts as used
for name, frame in (("replayed topup", {topup!r}), ("stale", {stale!r})):
    cs.handle("comm", "frame_in", frame)
    f = wan.line_to_frame(port.out[-1])
    res[name] = [answers(port)[0][0], f[21], int.from_bytes(f[22:26], "big"),
                 int.from_bytes(f[26:30], "big")]
print(json.dumps(res))
""")
    # the TOPUP's counter was on flash before it ran; the READ does not move it
    reserved = 5 + _firmware_const("tasks/cs_security.py", "RESERVE")
    # per role (lists by role id, policy.py WAN_ROLES): the supplier's here, the others' untouched
    assert r["flash"]["chg"] == [0, 0, 5] and r["flash"]["down"] == [0, 0, reserved]
    # REPLAY, bound to the frame's own counter: (ref, code, highest used, last changing)
    assert r["replayed topup"] == [5, wan.E_REPLAY, reserved, 5]
    assert r["stale"] == [3, wan.E_REPLAY, reserved, 5]


def test_a_failed_counter_write_refuses_and_no_counter_is_used_twice(micropython: Run,
                                                                     tmp_path: Path) -> None:
    # Issue 18 finding 7: the reservation moved in RAM before the write. Here the write fails
    # from the k-th reservation on, the meter is rebooted, and every frame ever sent or
    # accepted is checked: no up counter twice (AES-CTR key stream), no command accepted twice.
    host = Host(METER, MASTER)
    # counters half a reservation apart (a head-end's counter may jump): every other frame
    # needs a new reservation on flash
    step = _firmware_const("tasks/cs_security.py", "RESERVE") // 2
    # (140 are sent: 100, then 40 more after the reboot; no more are put into the VM's heap)
    frames = [host.seal(False, wan.K_INFO, 1 + step * i, 0, b"") for i in range(140)]
    r = _cs_vm(micropython, tmp_path, f"""
FRAMES = {frames!r}
res = []
for k in (1, 2, 3):
    for f in os.listdir(D):
        if f.startswith("cs_ctr"):
            os.remove(D + "/" + f)
    up_used, accepted, refused_silently = [], [], 0
    saves, armed = [0], [True]
    def counting(path, obj, _k=k):
        if path == cs_security.COUNTERS:
            saves[0] += 1
            if saves[0] >= _k and armed[0]:
                FAIL[0] = 1
        save(path, obj)
    store.save = counting
    FAIL[0] = 0
    cs, port = boot()
    sent = 0
    for i in range(100):  # up to the failure, and on through it
        acc = cs.accepted
        cs.handle("comm", "frame_in", FRAMES[sent])
        if cs.accepted > acc:
            accepted.append(sent + 1)
        got = answers(port)
        up_used += [a[1] for a in got]
        if not got:
            refused_silently += 1
        sent += 1
    failed_logs = sum("counters not persisted" in t for t in port.logs)
    # power cut; the flash works again
    armed[0], FAIL[0] = False, 0
    cs, port = boot()
    for frame in FRAMES[:sent]:  # every command again: all replays now
        acc = cs.accepted
        cs.handle("comm", "frame_in", frame)
        if cs.accepted > acc:
            accepted.append(FRAMES.index(frame) + 1)
        up_used += [a[1] for a in answers(port)]
    for frame in FRAMES[sent:sent + 40]:
        acc = cs.accepted
        cs.handle("comm", "frame_in", frame)
        if cs.accepted > acc:
            accepted.append(FRAMES.index(frame) + 1)
        up_used += [a[1] for a in answers(port)]
    res.append({{"k": k, "up": up_used, "accepted": accepted, "silent": refused_silently,
                 "failed_logs": failed_logs}})
print(json.dumps(res))
""")
    for run in r:
        up, acc = run["up"], run["accepted"]
        assert len(up) == len(set(up)), (run["k"], sorted(c for c in up if up.count(c) > 1))
        assert len(acc) == len(set(acc)), (run["k"], acc)
        # the failure was noticed: the meter went silent and said why, once the
        # reservation it had on flash was used up
        assert run["silent"] > 0 and run["failed_logs"] > 0, run
        # and it works again after the reboot: the fresh commands are accepted
        assert acc[-1] == 140 and len(up) > 100, run


def test_the_head_end_resends_after_replay_only_what_was_not_carried_out(
        tmp_path: Path) -> None:
    # The client's side of finding 6: a REPLAY answers both a counter the meter reserved across
    # a reboot (resend above it) and a genuine command that an attacker replayed after it ran
    # (its real answer suppressed). Only the REPLAY's second mark tells them apart.
    from host_tools.headend.client import MeterError, MeterLink
    from host_tools.headend.keystore import Keystore, MeterEntry

    ks = Keystore(tmp_path / "ks.json")
    ks.put(MeterEntry(METER, MASTER))
    sent: list[tuple[int, int]] = []

    def run(kind: int, changed: int | None) -> str:
        link = object.__new__(MeterLink)
        link.entry, link.keystore, link.role = MeterEntry(METER, MASTER), ks, None

        def exchange(kind: int, body: bytes, at_least: int = 0) -> wire.Frame:
            ctr = ks.next_down_ctr(METER, at_least, wire.role_of(kind))  # as _exchange
            sent.append((kind, ctr))
            if at_least:
                return wire.Frame(kind=kind, flags=0, ctr=1, ref=ctr, payload=b"{}",
                                  encrypted=False)
            highest = ctr + 31
            mark = ctr if changed is None else changed
            raise MeterError(wire.E_REPLAY, highest, "REPLAY", ctr,
                             None if changed is None and kind == wire.K_READ else mark)

        link._exchange = exchange  # type: ignore[method-assign]
        sent.clear()
        try:
            link._resyncing(kind, b"")
            return "resent"
        except MeterError as e:
            return str(e)

    # a TOPUP whose counter the meter's last changing command reached: never resent
    out = run(wire.K_TOPUP, None)
    assert "may have been carried out" in out and len(sent) == 1
    # the next one (the TOPUP's role's counter) is above the marks
    assert ks.next_down_ctr(METER, role=wire.role_of(wire.K_TOPUP)) > sent[0][1] + 1
    # a TOPUP above the meter's last changing command (a reboot's reservation): resent once
    assert run(wire.K_TOPUP, 0) == "resent" and len(sent) == 2 and sent[1][1] > sent[0][1]
    # a read is always safe to resend
    assert run(wire.K_READ, None) == "resent" and len(sent) == 2


def test_a_meter_without_keys_answers_not_provisioned_only_with_a_counter_on_flash(
        micropython: Run, tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    frame = Host(METER, MASTER).seal(False, wan.K_INFO, 9, 0, b"")
    out = micropython(CS_PRELUDE.format(dir=str(d)) + f"""
cs, port = boot()
FAIL[0] = 1
cs.handle("comm", "frame_in", {frame!r})
res = {{"failing": answers(port)}}
FAIL[0] = 0
cs.handle("comm", "frame_in", {frame!r})
res["working"] = answers(port)
print(json.dumps(res))
""")
    r = json.loads(out.strip().splitlines()[-1])
    assert r["failing"] == []  # no crash, no frame with an up counter flash does not hold
    assert [(a[0], a[2], a[3]) for a in r["working"]] == [(9, wan.K_ERROR,
                                                           wan.E_NOT_PROVISIONED)]


# ------------------------------------------- the comm task: each line made its frame in place (VM)

ESCAPED = (0x01, 0x02, 0x03, 0x04, 0x05, 0x0A, 0x0D, 0x1B)  # what travels as ESC + byte ^ 0x40

COMM_PRELUDE = """
import gc, hashlib, micropython
from tasks.comm import Comm


class Link:
    # the WAN link comm reads: bytes given, or a file's (no copy of what is left per read)
    def __init__(self, data=b"", path=None):
        self.mv, self.at = memoryview(data), 0
        self.f = open(path, "rb") if path else None
    def readinto(self, buf):
        if self.f:
            return self.f.readinto(buf) or 0
        n = min(len(buf), len(self.mv) - self.at)
        buf[:n] = self.mv[self.at:self.at + n]
        self.at += n
        return n
    def write(self, b):
        pass


def said(kind, payload):
    # a message of comm's as one line: the frame as a digest (printed at once, not kept: a
    # list of them would leave the heap in pieces between the frames' garbage)
    if kind == "frame_in":
        return "%s %s %s" % (kind, type(payload) is bytes,
                             hashlib.sha256(payload).digest()[:8].hex())
    return "%s %d" % (kind, payload)


class ToCs:
    # comm's port as the kernel routes it: "frame_in" / "frame_err" to cs_security's handler
    # (with cs None: printed, "GOT " + said())
    def __init__(self, cs=None):
        self.cs = cs
    def send(self, to, kind, payload=None):
        assert to == "cs_security" and kind in ("frame_in", "frame_err"), (to, kind)
        if self.cs is not None:
            self.cs.handle("comm", kind, payload)
        else:
            print("GOT " + said(kind, payload))
        return True
    def log(self, text):
        pass
"""


def _comm_lines(rng: random.Random) -> list[bytes]:
    """Lines as a WAN brings them, none with a raw Ctrl-A..Ctrl-E (comm drops what came before
    one: test_seal_firmware.py): whole frames with every escapable byte, malformed escapes, raw
    CRs inside, over the cap, and lines that are no frame lines."""
    def some(n: int) -> bytes:  # bytes with every escapable one frequent
        return bytes(rng.choice(ESCAPED) if rng.random() < 0.3 else rng.randrange(256)
                     for _ in range(n))

    frames = [bytes(range(256)) * 4, bytes(ESCAPED) * 93, b"", bytes(ESCAPED), b"\x1b" * 700]
    frames += [some(rng.randrange(1100)) for _ in range(60)]
    lines = [wire.to_line(f) for f in frames]
    lines.append(b"~" + b"A" * 1499 + b"\n")                  # at the cap: a frame of "A"s
    lines.append(b"~" + b"A" * 1499 + b"\r\n")                # and a terminal's CR after it
    lines.append(b"~" + b"A" * 1500 + b"\n")                  # one over: TOO_BIG
    lines.append(b"~" + b"B" * 1600 + b"\r\n")                # over comm's buffer: TOO_BIG
    for _ in range(40):  # malformed: a raw CR inside, a truncated escape, a needless escape
        body = wire.to_line(some(1 + rng.randrange(400)))[1:-1]
        at = rng.randrange(len(body))
        how = rng.randrange(3)
        if how == 0:
            body = body[:at] + b"\r" + body[at:] + b"x"
        elif how == 1:
            body += b"\x1b"
        else:
            b = rng.choice([c for c in range(256) if c ^ 0x40 not in ESCAPED
                            and c not in (1, 2, 3, 4, 5, 10)])
            body = body[:at] + bytes((0x1B, b)) + body[at:]
        lines.append(b"~" + body + b"\n")
    lines += [b"\n", b"\r\n", b"hello\n", b"x~" + wire.to_line(b"abc")]  # not frame lines
    rng.shuffle(lines)
    # a terminal's CR before the LF on some (never more than comm's buffer takes: one)
    return [ln[:-1] + b"\r\n" if ln[-2:-1] != b"\r" and rng.random() < 0.3 else ln
            for ln in lines]


def _expected(line: bytes) -> str | None:
    """What comm must send for ``line`` (as COMM_PRELUDE's said() prints it) by the firmware
    codec, checked against the head-end's (None: not a frame line, nothing sent)."""
    if line[:1] != b"~":
        return None
    try:
        frame = bytes(wan.line_to_frame(line))
    except wan.WanError as e:
        with pytest.raises(wire.WireError) as host:
            wire.from_line(line)
        assert host.value.code == e.code, line
        return f"frame_err {e.code}"
    assert wire.from_line(line) == frame
    return f"frame_in True {hashlib.sha256(frame).digest()[:8].hex()}"


def test_comm_makes_each_line_the_frame_line_to_frame_makes_in_place(micropython: Run,
                                                                    tmp_path: Path) -> None:
    # comm undoes the escapes in its own line buffer (wan.unescape_into with dst = src):
    # every frame it sends must be line_to_frame's, byte for byte, over a stream of lines
    # that reuse the buffer; a line that line_to_frame refuses goes as frame_err with its code.
    lines = _comm_lines(random.Random(1500))
    stream = tmp_path / "stream.bin"
    stream.write_bytes(b"".join(lines))
    want = [e for e in (_expected(ln) for ln in lines) if e is not None]
    assert {w.split()[0] for w in want} == {"frame_in", "frame_err"}
    assert {w for w in want if w.startswith("frame_err")} == {
        f"frame_err {wan.E_MALFORMED}", f"frame_err {wan.E_TOO_BIG}"}
    out = micropython(COMM_PRELUDE + f"""
import wan
Comm(ToCs(), {{"wan": Link(path={str(stream)!r})}}).step()
# line_to_frame's answers on the VM, line by line from the same stream
with open({str(stream)!r}, "rb") as f:
    for line in f:
        if line[:1] != b"~":
            continue
        try:
            print("WANT " + said("frame_in", bytes(wan.line_to_frame(line))))
        except wan.WanError as e:
            print("WANT " + said("frame_err", e.code))
""")
    got = [ln[4:] for ln in out.splitlines() if ln.startswith("GOT ")]
    assert [ln[5:] for ln in out.splitlines() if ln.startswith("WANT ")] == want  # as CPython
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, (i, g, w)


@pytest.mark.parametrize("line", [ln for ln in BAD_LINES if b"\n" not in ln])
def test_a_malformed_line_reaches_cs_security_only_as_frame_err(micropython: Run,
                                                                tmp_path: Path,
                                                                line: bytes) -> None:
    # Through comm into the real CS security module: no frame, a logged refusal, silence.
    # A line with a raw Ctrl-A..Ctrl-E never gets that far: comm drops what came before one.
    fed = line + b"\n"
    r = _cs_vm(micropython, tmp_path, COMM_PRELUDE + f"""
cs, port = boot()
seen = []
class Spy(ToCs):
    def send(self, to, kind, payload=None):
        seen.append([kind, payload if kind == "frame_err" else "a frame"])
        return ToCs.send(self, to, kind, payload)
Comm(Spy(cs), {{"wan": Link({fed!r})}}).step()
print(json.dumps({{"seen": seen, "logs": port.logs, "out": answers(port),
                  "accepted": cs.accepted, "rejected": cs.rejected}}))
""")
    assert r["out"] == [] and r["accepted"] == 0, r
    if any(c in line for c in (1, 2, 3, 4, 5)):
        assert r["seen"] == [] and r["logs"] == [] and r["rejected"] == 0, r
    else:
        assert r["seen"] == [["frame_err", wan.E_MALFORMED]], r
        assert r["rejected"] == 1
        assert r["logs"] == ["wan: rejected (bad line: a raw control byte or a bad escape, "
                             f"code {wan.E_MALFORMED})"]


def _heap_map(dump: str) -> str:
    """micropython.mem_info(1)'s block table as one character a block ("." free, "=" a tail,
    any other the head of an allocation): its lines of 64 blocks, and "(N lines all free)"."""
    cells: list[str] = []
    for ln in dump.splitlines():
        if m := re.fullmatch(r"[0-9a-f]{8}: (\S*)", ln.strip()):
            cells.append(m[1])
        elif m := re.fullmatch(r"\((\d+) lines all free\)", ln.strip()):
            cells.append("." * 64 * int(m[1]))
    return "".join(cells)


def _new_allocations(before: str, after: str) -> list[int]:
    """The allocations (lengths in blocks) in ``after`` that ``before`` does not hold."""
    runs = []
    i = 0
    while i < len(after):
        if after[i] in ".=":
            i += 1
            continue
        j = i + 1
        while j < len(after) and after[j] == "=":
            j += 1
        # new unless ``before`` has the same head and tails and ends it there too (not by
        # what follows it in ``after``: an allocation next to it is that one's news)
        if before[i:j] != after[i:j] or (j < len(before) and before[j] == "="):
            runs.append(j - i)
        i = j
    return runs


def test_a_frame_through_comm_and_cs_security_takes_one_frame_sized_block(
        micropython: Run, tmp_path: Path) -> None:
    # The Pyboard's heap, in pieces, had 15 KB free but not 1 KB in one piece for a 25-member
    # GROUP_KEYS (payload 1011 B) when comm copied the line, cs_security made the frame of it
    # and open_frame copied the payload: three blocks of a frame's size for one request. Now
    # comm makes the frame in its own buffer and sends one copy, and cs_security routes the
    # payload as a view into it (two blocks, then one). Counted in the VM's block table with
    # the collector off (nothing freed or reused): every allocation of the request, from the
    # line's bytes to the routed payload, the second of two alike (the first grows the VM's
    # tables: names, dicts, the pending requests, as a meter's first requests after boot do).
    host = Host(METER, MASTER, wire.ROLE_AGGREGATOR)  # GROUP_KEYS: the aggregator's
    payload = bytes(ESCAPED) + random.Random(1011).randbytes(1011 - len(ESCAPED))
    lines = [wire.to_line(host.seal(False, wan.K_GROUP_KEYS, ctr, 0, payload))
             for ctr in (5, 6)]
    d = tmp_path / "data"
    d.mkdir()
    out = micropython(CS_PRELUDE.format(dir=str(d)) + COMM_PRELUDE + f"""
store.save(cs_security.KEYS, {{"meter": {METER}, "master": {MASTER.hex()!r}}})
routed = []
class Routed(Port):
    def send(self, to, kind, payload=None):
        routed.append([to, kind, payload[0], payload[1], payload[2]])  # compared after the count
        return Port.send(self, to, kind, payload)
cs = cs_security.CsSecurity(Routed(), {{"info": {{"fw": "t"}}}})
first = Comm(ToCs(cs), {{"wan": Link({lines[0]!r})}})
comm = Comm(ToCs(cs), {{"wan": Link({lines[1]!r})}})
first.step()
cs._pending.clear()  # dc_security's answer: nothing waits on it
gc.collect()
gc.disable()
print("HEAP BEFORE")
micropython.mem_info(1)
print("\\nHEAP END")
comm.step()
print("HEAP AFTER")
micropython.mem_info(1)
print("\\nHEAP END")
gc.enable()
for r in routed:
    r[4] = bytes(r[4]) == {payload!r}
print(json.dumps({{"routed": routed, "rejected": cs.rejected}}))
""")
    r = json.loads(out.strip().splitlines()[-1])
    assert r["routed"] == [["dc_security", "group_keys", ctr, METER, True] for ctr in (5, 6)], r
    assert r["rejected"] == 0
    dumps = re.findall(r"HEAP (?:BEFORE|AFTER)\n(.*?)\nHEAP END", out, re.S)
    assert len(dumps) == 2
    total = re.search(r"GC: total: (\d+)", dumps[0])
    assert total
    before, after = _heap_map(dumps[0]), _heap_map(dumps[1])
    block = int(total[1]) // len(before)
    assert block in (16, 32) and len(before) == len(after)  # a 32- or 64-bit VM's GC block
    new = _new_allocations(before, after)
    big = sorted(n * block for n in new if n * block >= 1000)
    print(f"\nMicroPython VM: one {len(payload)}-byte-payload frame (line {len(lines[1])} B) "
          f"through comm into cs_security: {len(new)} allocations, {sum(new) * block} B; "
          f"those of >= 1000 B: {big}")
    assert len(big) == 1, big  # the frame's copy, routed as a view: no second block
