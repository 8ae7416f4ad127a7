"""firmware/lib crypto (X25519, HMAC/HKDF-SHA256, LoPA) on CPython: RFC vectors, and
cross-checks against the `cryptography` package and the stdlib."""

from __future__ import annotations

import hashlib
import hmac as std_hmac
import random

import hmac_sha256
import lopa
import pytest
import x25519
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import hmac as c_hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# RFC 7748 section 5.2: (scalar, u, output)
X25519_VECTORS = [
    ("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
     "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
     "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"),
    ("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
     "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
     "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"),
]
# RFC 7748 section 5.2, iterated k = X25519(k, u), u = old k, from k = u = 9
X25519_ITERATED = {
    1: "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079",
    1000: "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51",
}
# RFC 7748 section 6.1
ALICE_SK = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
ALICE_PK = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
BOB_SK = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
BOB_PK = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
DH_SHARED = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"

# u-coordinates of small-order points (and non-canonical encodings of them): X25519 gives 0.
_P = 2**255 - 19
LOW_ORDER_U = [
    (0).to_bytes(32, "little").hex(),
    (1).to_bytes(32, "little").hex(),
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    (_P - 1).to_bytes(32, "little").hex(),
    _P.to_bytes(32, "little").hex(),
    (_P + 1).to_bytes(32, "little").hex(),
]

# RFC 4231 HMAC-SHA256 test cases 1-4, 6, 7: (key hex, data hex, mac hex)
HMAC_VECTORS = [
    ("0b" * 20, b"Hi There".hex(),
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe".hex(), b"what do ya want for nothing?".hex(),
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    ("aa" * 20, "dd" * 50,
     "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    (bytes(range(1, 26)).hex(), "cd" * 50,
     "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    ("aa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First".hex(),
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    ("aa" * 131,
     b"This is a test using a larger than block-size key and a larger than block-size data. "
     b"The key needs to be hashed before being used by the HMAC algorithm.".hex(),
     "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
]

# RFC 5869 test cases 1-3: (ikm, salt, info, length, prk, okm), all hex
HKDF_VECTORS = [
    ("0b" * 22, bytes(range(13)).hex(), bytes(range(0xF0, 0xFA)).hex(), 42,
     "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
     "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"),
    (bytes(range(0x50)).hex(), bytes(range(0x60, 0xB0)).hex(), bytes(range(0xB0, 0x100)).hex(),
     82,
     "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
     "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41"
     "c65e590e09da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87"),
    ("0b" * 22, "", "", 42,
     "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
     "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"),
]


# --- reference implementations on `cryptography` / the stdlib ---------------------------------

def ref_x25519(sk: bytes, u: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(sk).exchange(X25519PublicKey.from_public_bytes(u))


def ref_public_key(sk: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(sk).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def ref_hmac(key: bytes, msg: bytes) -> bytes:
    h = c_hmac.HMAC(key, hashes.SHA256())
    h.update(msg)
    return h.finalize()


def ref_hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, salt, info).derive(ikm)


def ref_pair_key(sk_i: bytes, pk_j: bytes, gid: bytes, id_i: int, id_j: int) -> bytes:
    lo, hi = min(id_i, id_j), max(id_i, id_j)
    info = b"lopa" + lo.to_bytes(8, "big") + hi.to_bytes(8, "big")
    return ref_hkdf(ref_x25519(sk_i, pk_j), gid, info, 32)


def ref_prf(k: bytes, gid: bytes, t: int) -> int:
    mac = std_hmac.new(k, gid + t.to_bytes(8, "big"), hashlib.sha256).digest()
    return int.from_bytes(mac[:4], "big")


def ref_blinding(keys: list[tuple[int, bytes]], my_id: int, gid: bytes, t: int) -> int:
    return sum((1 if my_id < j else -1) * ref_prf(k, gid, t) for j, k in keys) % 2**32


# --- X25519 ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("k", "u", "out"), X25519_VECTORS)
def test_x25519_rfc7748_vectors(k: str, u: str, out: str) -> None:
    assert x25519.x25519(bytes.fromhex(k), bytes.fromhex(u)).hex() == out


@pytest.mark.parametrize("n", sorted(X25519_ITERATED))
def test_x25519_rfc7748_iterated(n: int) -> None:
    k = u = x25519.BASE_POINT
    for _ in range(n):
        k, u = x25519.x25519(k, u), k
    assert k.hex() == X25519_ITERATED[n]


def test_x25519_rfc7748_diffie_hellman() -> None:
    a, b = bytes.fromhex(ALICE_SK), bytes.fromhex(BOB_SK)
    assert x25519.public_key(a).hex() == ALICE_PK
    assert x25519.public_key(b).hex() == BOB_PK
    assert x25519.shared_secret(a, bytes.fromhex(BOB_PK)).hex() == DH_SHARED
    assert x25519.shared_secret(b, bytes.fromhex(ALICE_PK)).hex() == DH_SHARED


def test_x25519_matches_cryptography() -> None:
    rng = random.Random(7748)
    for _ in range(50):
        sk, u, sk2 = rng.randbytes(32), rng.randbytes(32), rng.randbytes(32)
        assert x25519.x25519(sk, u) == ref_x25519(sk, u)
        assert x25519.public_key(sk) == ref_public_key(sk)
        pk2 = ref_public_key(sk2)
        assert x25519.shared_secret(sk, pk2) == ref_x25519(sk, pk2)


@pytest.mark.parametrize("u", LOW_ORDER_U)
def test_x25519_low_order_point_rejected(u: str) -> None:
    sk = bytes(range(32))
    assert x25519.x25519(sk, bytes.fromhex(u)) == bytes(32)
    with pytest.raises(ValueError):
        x25519.shared_secret(sk, bytes.fromhex(u))


def test_x25519_rejects_bad_lengths() -> None:
    sk = bytes(range(32))
    for bad in (b"", bytes(31), bytes(33)):
        with pytest.raises(ValueError):
            x25519.shared_secret(sk, bad)
        with pytest.raises(ValueError):
            x25519.x25519(bad, x25519.BASE_POINT)


def test_x25519_clamps_and_masks_top_bit() -> None:
    rng = random.Random(1)
    sk, u = rng.randbytes(32), bytearray(rng.randbytes(32))
    clamped = bytearray(sk)
    clamped[0] &= 248
    clamped[31] = (clamped[31] & 127) | 64
    u_hi = bytearray(u)
    u_hi[31] |= 0x80
    u[31] &= 0x7F
    assert x25519.x25519(sk, bytes(u)) == x25519.x25519(bytes(clamped), bytes(u_hi))


# --- HMAC / HKDF -------------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "data", "mac"), HMAC_VECTORS)
def test_hmac_rfc4231(key: str, data: str, mac: str) -> None:
    assert hmac_sha256.hmac_sha256(bytes.fromhex(key), bytes.fromhex(data)).hex() == mac


@pytest.mark.parametrize(("ikm", "salt", "info", "length", "prk", "okm"), HKDF_VECTORS)
def test_hkdf_rfc5869(ikm: str, salt: str, info: str, length: int, prk: str, okm: str) -> None:
    ikm_b, salt_b, info_b = bytes.fromhex(ikm), bytes.fromhex(salt), bytes.fromhex(info)
    assert hmac_sha256.hkdf_extract(salt_b, ikm_b).hex() == prk
    assert hmac_sha256.hkdf_sha256(ikm_b, salt_b, info_b, length).hex() == okm


def test_hmac_and_hkdf_match_cryptography() -> None:
    rng = random.Random(2104)
    for _ in range(50):
        key, msg = rng.randbytes(rng.randrange(0, 150)), rng.randbytes(rng.randrange(0, 300))
        assert hmac_sha256.hmac_sha256(key, msg) == ref_hmac(key, msg)
        ikm, salt, info = (rng.randbytes(rng.randrange(0, 80)) for _ in range(3))
        length = rng.randrange(1, 200)
        assert hmac_sha256.hkdf_sha256(ikm, salt, info, length) == ref_hkdf(ikm, salt, info,
                                                                             length)


def test_hkdf_rejects_too_long_output() -> None:
    with pytest.raises(ValueError):
        hmac_sha256.hkdf_sha256(b"k", b"s", b"i", 255 * 32 + 1)
    assert len(hmac_sha256.hkdf_sha256(b"k", b"s", b"i", 255 * 32)) == 255 * 32


# --- LoPA --------------------------------------------------------------------------------------

def make_group(rng: random.Random, n: int) -> tuple[list[int], list[bytes], list[bytes]]:
    ids: list[int] = []
    while len(ids) < n:
        v = rng.randrange(2**64)
        if v not in ids:
            ids.append(v)
    sks = [rng.randbytes(32) for _ in range(n)]
    return ids, sks, [ref_public_key(sk) for sk in sks]


def test_lopa_round_five_members() -> None:
    rng = random.Random(2011)
    gid = b"group-7"
    ids, sks, pks = make_group(rng, 5)
    keys = {}
    for i in range(5):
        for j in range(5):
            if i != j:
                keys[i, j] = lopa.pair_key(sks[i], pks[j], gid, ids[i], ids[j])
    for i in range(5):
        for j in range(i + 1, 5):
            assert keys[i, j] == keys[j, i]
            assert keys[i, j] == ref_pair_key(sks[i], pks[j], gid, ids[i], ids[j])
    pair_keys = [[(ids[j], keys[i, j]) for j in range(5) if j != i] for i in range(5)]
    for t in (0, 1, 96, 2**40 + 3):
        readings = [rng.randrange(2**32) for _ in range(4)] + [2**32 - 1]
        blind = [lopa.blinding(pair_keys[i], ids[i], gid, t) for i in range(5)]
        assert blind == [ref_blinding(pair_keys[i], ids[i], gid, t) for i in range(5)]
        cts = [lopa.encrypt(x, b) for x, b in zip(readings, blind, strict=True)]
        assert all(0 <= c < 2**32 for c in cts)
        assert all(c != x for c, x in zip(cts, readings, strict=True))
        assert lopa.aggregate(cts) == sum(readings) % 2**32
        # precomputed HMAC pads give the same blinding
        prepared = [lopa.prepare_keys(pk) for pk in pair_keys]
        assert [lopa.blinding(prepared[i], ids[i], gid, t) for i in range(5)] == blind


def test_lopa_prf_and_subset_sums() -> None:
    rng = random.Random(5)
    k, gid = rng.randbytes(32), b"\x00\x01gid"
    for t in (0, 1, 2**64 - 1):
        assert lopa.prf(k, gid, t) == ref_prf(k, gid, t)
    ids, sks, pks = make_group(rng, 4)
    keys = [(ids[j], lopa.pair_key(sks[0], pks[j], gid, ids[0], ids[j])) for j in (1, 2, 3)]
    only = {ids[1], ids[3]}
    want = ref_blinding([(j, kk) for j, kk in keys if j in only], ids[0], gid, 9)
    assert lopa.blinding(keys, ids[0], gid, 9, only=only) == want


def test_lopa_rejects_bad_ids() -> None:
    sk, pk = bytes(range(32)), ref_public_key(bytes(range(1, 33)))
    with pytest.raises(ValueError):
        lopa.pair_key(sk, pk, b"g", 4, 4)
    with pytest.raises(ValueError):
        lopa.pair_key(sk, pk, b"g", 4, 2**64)
    with pytest.raises(ValueError):
        lopa.pair_key(sk, bytes(32), b"g", 4, 5)


def test_x25519_machine_code_that_cannot_run_leaves_no_module_in_ram(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Cortex-M MicroPython without the inline assembler (the virtual Pico's unix VM) runs
    the Python ladder, and the machine-code module it imported first leaves sys.modules again:
    its code stayed in the heap for as long as the board ran (8.5 KB on the virtual Pico after
    a group's set-up; the soak's heap trend, issue 17)."""
    import sys
    import types

    armv6m = types.SimpleNamespace(**vars(sys.implementation))
    armv6m._mpy = (4 << 10) | 6  # what the RP2040's MicroPython says: ARMv6-M, .mpy v6
    monkeypatch.setattr(sys, "implementation", armv6m)
    monkeypatch.delitem(sys.modules, "x25519_thumb", raising=False)
    # a micropython module without the inline assembler's asm_thumb
    monkeypatch.setitem(sys.modules, "micropython", types.ModuleType("micropython"))
    imported: list[str] = []
    real_import = __import__

    def spy(name: str, *args: object, **kw: object) -> object:
        imported.append(name)
        return real_import(name, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr("builtins.__import__", spy)
    # a fresh x25519 module, imported as the board imports it (its loader runs at import and
    # is deleted where the Python code runs)
    import importlib.util

    spec = importlib.util.spec_from_file_location("x25519_fresh", x25519.__file__)
    assert spec is not None and spec.loader is not None
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    assert fresh.IMPL == "python"  # CPython runs no asm_thumb: the Python code
    assert "x25519_thumb" in imported  # ... after importing the machine code
    assert "x25519_thumb" not in sys.modules and "x25519_v7m" not in sys.modules
