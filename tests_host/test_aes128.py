"""firmware/lib/aes128.py, the AES-128 that the WAN codec uses where MicroPython has no
cryptolib (the official Pyboard firmware): FIPS-197 and SP 800-38A vectors and random keys
against `cryptography`, on CPython and on the MicroPython VM with cryptolib hidden; the WAN
frames it makes are the head-end's; no allocation per block; no branch on a secret.

Both AES paths of lib/wan.py stay tested: cryptolib (host_tools/mpcompat.py on CPython, the
VM's C module in test_wan_protocol.py) and this fallback (here)."""

from __future__ import annotations

import functools
import importlib.util
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import aes128
import pytest
import wan
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from host_tools.headend import wire

Run = Callable[..., str]
FIRMWARE_LIB = Path(__file__).resolve().parent.parent / "firmware" / "lib"

# FIPS-197 Appendix B and C.1: (key, plaintext, ciphertext)
FIPS197 = [
    ("2b7e151628aed2a6abf7158809cf4f3c", "3243f6a8885a308d313198a2e0370734",
     "3925841d02dc09fbdc118597196a0b32"),
    ("000102030405060708090a0b0c0d0e0f", "00112233445566778899aabbccddeeff",
     "69c4e0d86a7b0430d8cdb78070b4c55a"),
]
# SP 800-38A F.5.1 CTR-AES128.Encrypt: key, initial counter block, plaintext, ciphertext
SP800_38A_CTR = (
    "2b7e151628aed2a6abf7158809cf4f3c",
    "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710",
    "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff"
    "5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee",
)

METER = 0x0000_00A1_B2C3_D4E5
MASTER = bytes(range(32))

# On the VM: `import cryptolib` fails from here on, as on the official PYBV11 firmware.
VM_HIDE_CRYPTOLIB = """
import builtins
_imp = builtins.__import__
def _no_cryptolib(name, *a):
    if name == "cryptolib":
        raise ImportError("no module named 'cryptolib'")
    return _imp(name, *a)
builtins.__import__ = _no_cryptolib
"""


def ref_ecb(key: bytes, data: bytes) -> bytes:
    return Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(data)


def ref_ctr(key: bytes, block0: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CTR(block0)).encryptor()
    return enc.update(data) + enc.finalize()


def ctr_with(ecb: Callable[[bytes], bytes], block0: bytes, data: bytes) -> bytes:
    """CTR (SP 800-38A, the whole block as the counter) on a block cipher."""
    c = int.from_bytes(block0, "big")
    stream = b"".join(ecb(((c + i) % 2**128).to_bytes(16, "big"))
                      for i in range((len(data) + 15) // 16))
    return bytes(a ^ b for a, b in zip(data, stream, strict=False))


def random_cases(seed: int, count: int) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    return [(rng.randbytes(16), rng.randbytes(16 * rng.randrange(1, 9))) for _ in range(count)]


@pytest.fixture
def wan_fallback(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """A fresh lib/wan.py loaded where `import cryptolib` fails."""
    monkeypatch.setitem(sys.modules, "cryptolib", None)  # None: the import raises ImportError
    spec = importlib.util.spec_from_file_location("wan_without_cryptolib",
                                                  FIRMWARE_LIB / "wan.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod


# ---------------------------------------------------------------- CPython


def test_fips197_vectors() -> None:
    for key, pt, ct in FIPS197:
        h = bytes.fromhex
        assert aes128.aes(h(key), 1).encrypt(h(pt)) == h(ct) == ref_ecb(h(key), h(pt))


def test_sp800_38a_ctr_vector() -> None:
    key, block0, pt, ct = (bytes.fromhex(x) for x in SP800_38A_CTR)
    a = aes128.aes(key, 1)
    assert ctr_with(a.encrypt, block0, pt) == ct == ref_ctr(key, block0, pt)


def test_random_keys_and_lengths_match_cryptography() -> None:
    for key, data in random_cases(197, 300):
        a = aes128.aes(key, 1)
        assert a.encrypt(data) == ref_ecb(key, data)
        buf = bytearray(data)
        assert a.encrypt(buf, buf) is None  # in place, as wan.py calls it
        assert bytes(buf) == ref_ecb(key, data)
        mv = memoryview(bytearray(data))
        a.encrypt(mv, mv)
        assert bytes(mv) == ref_ecb(key, data)


def test_key_schedule_fips197_appendix_a1() -> None:
    # FIPS-197 A.1: the last round key of 2b7e1516...
    rk = aes128._expand(bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c"))
    assert bytes(rk[160:]) == bytes.fromhex("d014f9a8c9ee2589e13f0cc8b6630ca6")
    assert bytes(rk[16:20]) == bytes.fromhex("a0fafe17")


def test_bad_input_refused() -> None:
    for key in (bytes(15), bytes(17), bytes(24), bytes(32), b""):
        with pytest.raises(ValueError, match="16 bytes"):
            aes128.aes(key, 1)
    for mode in (0, 2, 6):
        with pytest.raises(ValueError, match="ECB"):
            aes128.aes(bytes(16), mode)
    a = aes128.aes(bytes(16), 1)
    for n in (1, 15, 17, 33):
        with pytest.raises(ValueError, match="multiple of 16"):
            a.encrypt(bytes(n))
    dst = bytearray(16)
    with pytest.raises(ValueError, match="too small"):
        a.encrypt(bytes(32), dst)
    assert dst == bytearray(16)  # nothing written


def test_wan_without_cryptolib_uses_the_fallback(wan_fallback: ModuleType) -> None:
    # lib/aes128.py, imported for each frame's cipher and dropped after it (RAM)
    sys.modules.pop("aes128", None)
    cipher = wan_fallback._aes(bytes(16), 1)
    assert type(cipher).__module__ == "aes128" and "aes128" not in sys.modules
    assert cipher.encrypt(bytes(16)) == aes128.aes(bytes(16), 1).encrypt(bytes(16))
    assert wan._aes is not aes128.aes  # the tests' own wan: cryptolib (host_tools/mpcompat.py)


@pytest.mark.parametrize("up", [False, True])
def test_wan_frames_without_cryptolib_are_the_head_ends(wan_fallback: ModuleType,
                                                        up: bool) -> None:
    """The fallback's frames are byte for byte the cryptolib path's and the head-end's, and
    each side opens the other's."""
    rng = random.Random(38 + up)
    keys = wan_fallback.derive_keys(METER, MASTER)
    hk = wire.Keys.derive(METER, MASTER)
    for n in [1, 15, 16, 17, 63, 64, 65, 200, 1023, 1024]:
        payload = rng.randbytes(n)
        ctr = rng.randrange(1, 2**32)
        ref = rng.randrange(2**32) if up else 0
        frame = bytes(wan_fallback.seal(keys, METER, up, wan.K_PROFILE, ctr, ref, payload,
                                        True))
        assert frame == bytes(wan.seal(keys, METER, up, wan.K_PROFILE, ctr, ref, payload, True))
        assert frame == wire.seal(hk, up, wan.K_PROFILE, ctr, ref, payload, True)
        block0 = METER.to_bytes(8, "big") + ctr.to_bytes(4, "big") + bytes(4)
        assert frame[21:21 + n] == ref_ctr(keys[3] if up else keys[2], block0, payload)
        assert wire.open_frame(hk, up, frame).payload == payload
        back = wire.seal(hk, up, wan.K_READ, ctr, ref, payload, True)
        assert wan_fallback.open_frame(keys, METER, up, back)[4] == payload


def _branch_trace(fn: Callable[[], Any]) -> list[tuple[str, int]]:
    """The lines aes128 executes in fn, in order: its control flow."""
    lines: list[tuple[str, int]] = []
    path = aes128.__file__

    def tracer(frame: FrameType, event: str, _arg: Any) -> Any:
        if frame.f_code.co_filename == path:
            if event == "line":
                lines.append((frame.f_code.co_name, frame.f_lineno))
            return tracer
        return None

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return lines


def _encrypt(key: bytes, data: bytes) -> bytes:
    return aes128.aes(key, 1).encrypt(data)  # type: ignore[no-any-return]


def test_control_flow_does_not_depend_on_key_or_data() -> None:
    """What an attacker timing branches could see: the same lines, in the same order, for
    every key and every block (keys and data chosen to differ in every bit and byte)."""
    cases = [(bytes(16), bytes(32)), (b"\xff" * 16, b"\xff" * 32)]
    cases += random_cases(4, 6)
    cases = [(k, d[:32].ljust(32, b"\x80")) for k, d in cases]
    traces = [_branch_trace(functools.partial(_encrypt, k, d)) for k, d in cases]
    assert len(traces[0]) > 1000  # the rounds were traced
    for t in traces[1:]:
        assert t == traces[0]


# ---------------------------------------------------------------- the MicroPython VM


def test_vm_fallback_matches_cryptography(micropython: Run) -> None:
    cases = [(bytes.fromhex(k), bytes.fromhex(p)) for k, p, _ in FIPS197]
    cases += random_cases(2040, 40)
    code = VM_HIDE_CRYPTOLIB + f"""
import aes128, sys, wan
print(type(wan._aes(bytes(16), 1)) is aes128.aes and "aes128" not in sys.modules)
h = bytes.fromhex
for k, d in {[(k.hex(), d.hex()) for k, d in cases]!r}:
    a = aes128.aes(h(k), 1)
    buf = bytearray(h(d))
    a.encrypt(buf, buf)
    print(a.encrypt(h(d)).hex(), buf.hex())
"""
    out = micropython(code).splitlines()
    want = ["True"] + [f"{ref_ecb(k, d).hex()} {ref_ecb(k, d).hex()}" for k, d in cases]
    assert out == want


def test_vm_wan_frames_without_cryptolib(micropython: Run) -> None:
    """lib/wan.py on the VM with cryptolib hidden: the SP 800-38A CTR vector through
    _ctr_xor (its counter block is the meter id, ctr and block index), frames the head-end
    opens, and head-end frames it opens."""
    rng = random.Random(800)
    key, block0, pt, ct = (bytes.fromhex(x) for x in SP800_38A_CTR)
    # wan's counter block: meter u64 | ctr u32 | block index u32 from 0
    meter_v, ctr_v = int.from_bytes(block0[:8], "big"), int.from_bytes(block0[8:12], "big")
    base = block0[:12] + bytes(4)
    hk = wire.Keys.derive(METER, MASTER)
    sealed = []
    for n in [1, 16, 17, 64, 65, 300, 1024]:
        payload, ctr = rng.randbytes(n), rng.randrange(1, 2**32)
        sealed.append((n, ctr, payload, wire.seal(hk, False, wan.K_READ, ctr, 0, payload, True)))
    code = VM_HIDE_CRYPTOLIB + f"""
import wan
h = bytes.fromhex
print(wan._ctr_xor(h({key.hex()!r}), {meter_v}, {ctr_v}, h({pt.hex()!r})).hex())
keys = wan.derive_keys({METER}, h({MASTER.hex()!r}))
for n, ctr, p, f in {[(n, c, p.hex(), f.hex()) for n, c, p, f in sealed]!r}:
    print(bytes(wan.seal(keys, {METER}, True, wan.K_READ, ctr, 7, h(p), True)).hex())
    print(wan.open_frame(keys, {METER}, False, h(f))[4].hex())
"""
    out = micropython(code).splitlines()
    assert out[0] == ref_ctr(key, base, pt).hex()
    assert ctr_with(aes128.aes(key, 1).encrypt, base, pt) == bytes.fromhex(out[0])
    for i, (_, ctr, payload, _) in enumerate(sealed):
        frame = bytes.fromhex(out[1 + 2 * i])
        assert frame == wire.seal(hk, True, wan.K_READ, ctr, 7, payload, True)
        assert wire.open_frame(hk, True, frame).payload == payload
        assert out[2 + 2 * i] == payload.hex()
    assert ct == ref_ctr(key, block0, pt)  # the vector itself, as published


def test_vm_heap_and_speed(micropython: Run) -> None:
    """RAM: the round keys and state per key; encrypting into a buffer allocates nothing.
    The figures (printed with -s) are the ones docs/SECURITY.md quotes."""
    code = VM_HIDE_CRYPTOLIB + """
import gc, time
gc.collect()
f0 = gc.mem_free()
import aes128
gc.collect()
f1 = gc.mem_free()
a = aes128.aes(bytes(range(16)), 1)
gc.collect()
f2 = gc.mem_free()
buf = bytearray(64)
a.encrypt(buf, buf)
gc.collect()
m0 = gc.mem_alloc()
for _ in range(8):
    a.encrypt(buf, buf)
m1 = gc.mem_alloc()
best = 1e9
for _ in range(5):  # the best of 5 runs: the least disturbed by a loaded host
    t = time.ticks_us()
    for _ in range(25):
        a.encrypt(buf, buf)
    best = min(best, time.ticks_diff(time.ticks_us(), t) / 100)
print(f0 - f1, f1 - f2, m1 - m0, best)
"""
    module, per_key, per_call, us = micropython(code).split()
    print(f"aes128 on the VM: module {module} B, per key {per_key} B, "
          f"{float(us):.1f} us per 16-byte block")
    assert int(per_call) == 0
    assert 208 <= int(per_key) <= 512  # 176 B round keys + 32 B state + object headers


def test_vm_an_import_filter_survives_the_boots_compacting_imports(micropython: Run) -> None:
    """main.py imports the firmware under lib/lazy.py's compact_imports, which replaces
    __import__ for the boot and puts it back. A filter already in place (the virtual board's
    pybv11 profile hides cryptolib with one) must stay in force through it and after it:
    MicroPython's builtins.__import__ attribute reads as the built-in one, not the filter."""
    code = VM_HIDE_CRYPTOLIB + """
import lazy
lazy.compact_imports(True)
import aes128, sys, wan
print(type(wan._aes(bytes(16), 1)) is aes128.aes and "aes128" not in sys.modules)
lazy.compact_imports(False)
try:
    import cryptolib
    print("cryptolib visible")
except ImportError:
    print("cryptolib hidden")
"""
    assert micropython(code).splitlines() == ["True", "cryptolib hidden"]
