"""firmware/lib crypto on the real MicroPython VM (192 KB heap): the RFC vectors, random
cross-checks against `cryptography` computed on the host, and a LoPA round that must agree
with CPython."""

from __future__ import annotations

import random
from collections.abc import Callable

import lopa

from .test_crypto_cpython import (
    ALICE_PK,
    ALICE_SK,
    BOB_PK,
    BOB_SK,
    DH_SHARED,
    HKDF_VECTORS,
    HMAC_VECTORS,
    LOW_ORDER_U,
    X25519_ITERATED,
    X25519_VECTORS,
    ref_blinding,
    ref_hkdf,
    ref_hmac,
    ref_pair_key,
    ref_public_key,
    ref_x25519,
)

Run = Callable[..., str]


def vm_lines(micropython: Run, code: str) -> list[str]:
    return micropython(code).splitlines()


def test_vm_x25519_rfc7748(micropython: Run) -> None:
    code = f"""
import x25519
h = bytes.fromhex
for k, u in {[(k, u) for k, u, _ in X25519_VECTORS]!r}:
    print(x25519.x25519(h(k), h(u)).hex())
print(x25519.x25519(x25519.BASE_POINT, x25519.BASE_POINT).hex())
print(x25519.public_key(h({ALICE_SK!r})).hex())
print(x25519.public_key(h({BOB_SK!r})).hex())
print(x25519.shared_secret(h({ALICE_SK!r}), h({BOB_PK!r})).hex())
print(x25519.shared_secret(h({BOB_SK!r}), h({ALICE_PK!r})).hex())
"""
    want = [out for _, _, out in X25519_VECTORS]
    want += [X25519_ITERATED[1], ALICE_PK, BOB_PK, DH_SHARED, DH_SHARED]
    assert vm_lines(micropython, code) == want


def test_vm_x25519_rfc7748_iterated_1000(micropython: Run) -> None:
    code = """
import x25519
k = u = x25519.BASE_POINT
for _ in range(1000):
    k, u = x25519.x25519(k, u), k
print(k.hex())
"""
    assert vm_lines(micropython, code) == [X25519_ITERATED[1000]]


def test_vm_x25519_low_order_and_bad_lengths_rejected(micropython: Run) -> None:
    code = f"""
import x25519
sk = bytes(range(32))
for u in {LOW_ORDER_U!r} + ["09" * 31, "09" * 33]:
    try:
        x25519.shared_secret(sk, bytes.fromhex(u))
        print("accepted")
    except ValueError:
        print("rejected")
"""
    assert vm_lines(micropython, code) == ["rejected"] * (len(LOW_ORDER_U) + 2)


def test_vm_hmac_hkdf_rfc_vectors(micropython: Run) -> None:
    hkdf_in = [(ikm, salt, info, n) for ikm, salt, info, n, _, _ in HKDF_VECTORS]
    code = f"""
import hmac_sha256 as hs
h = bytes.fromhex
for key, data in {[(k, d) for k, d, _ in HMAC_VECTORS]!r}:
    print(hs.hmac_sha256(h(key), h(data)).hex())
for ikm, salt, info, n in {hkdf_in!r}:
    print(hs.hkdf_extract(h(salt), h(ikm)).hex())
    print(hs.hkdf_sha256(h(ikm), h(salt), h(info), n).hex())
"""
    want = [mac for _, _, mac in HMAC_VECTORS]
    for _, _, _, _, prk, okm in HKDF_VECTORS:
        want += [prk, okm]
    assert vm_lines(micropython, code) == want


def test_vm_matches_cryptography(micropython: Run) -> None:
    rng = random.Random(1729)
    xs = [(rng.randbytes(32), rng.randbytes(32)) for _ in range(20)]
    hm = [(rng.randbytes(rng.randrange(0, 150)), rng.randbytes(rng.randrange(0, 300)))
          for _ in range(20)]
    hk = [(rng.randbytes(rng.randrange(0, 80)), rng.randbytes(rng.randrange(0, 80)),
           rng.randbytes(rng.randrange(0, 80)), rng.randrange(1, 200)) for _ in range(20)]
    code = f"""
import x25519, hmac_sha256 as hs
h = bytes.fromhex
for sk, u in {[(a.hex(), b.hex()) for a, b in xs]!r}:
    print(x25519.x25519(h(sk), h(u)).hex(), x25519.public_key(h(sk)).hex())
for key, msg in {[(a.hex(), b.hex()) for a, b in hm]!r}:
    print(hs.hmac_sha256(h(key), h(msg)).hex())
for ikm, salt, info, n in {[(a.hex(), b.hex(), c.hex(), n) for a, b, c, n in hk]!r}:
    print(hs.hkdf_sha256(h(ikm), h(salt), h(info), n).hex())
"""
    want = [ref_x25519(sk, u).hex() + " " + ref_public_key(sk).hex() for sk, u in xs]
    want += [ref_hmac(k, m).hex() for k, m in hm]
    want += [ref_hkdf(i, s, f, n).hex() for i, s, f, n in hk]
    assert vm_lines(micropython, code) == want


def test_vm_lopa_round_agrees_with_cpython(micropython: Run) -> None:
    rng = random.Random(32)
    n = 3
    gid = rng.randbytes(12)
    ids = [2**64 - 1, 7, rng.randrange(8, 2**63)]
    sks = [rng.randbytes(32) for _ in range(n)]
    readings = [rng.randrange(2**32) for _ in range(n)]
    t = 1_700_000_123
    code = f"""
import x25519, lopa
h = bytes.fromhex
gid = h({gid.hex()!r})
ids = {ids!r}
sks = [h(s) for s in {[s.hex() for s in sks]!r}]
readings = {readings!r}
pks = [x25519.public_key(sk) for sk in sks]
cts = []
for i in range({n}):
    keys = [(ids[j], lopa.pair_key(sks[i], pks[j], gid, ids[i], ids[j]))
            for j in range({n}) if j != i]
    print(pks[i].hex(), " ".join(k.hex() for _, k in keys))
    cts.append(lopa.encrypt(readings[i], lopa.blinding(keys, ids[i], gid, {t})))
print(" ".join(str(c) for c in cts))
print(lopa.aggregate(cts))
"""
    out = vm_lines(micropython, code)

    pks = [ref_public_key(sk) for sk in sks]
    want, cts = [], []
    for i in range(n):
        keys = [(ids[j], ref_pair_key(sks[i], pks[j], gid, ids[i], ids[j]))
                for j in range(n) if j != i]
        want.append(pks[i].hex() + " " + " ".join(k.hex() for _, k in keys))
        blind = lopa.blinding(keys, ids[i], gid, t)
        assert blind == ref_blinding(keys, ids[i], gid, t)
        cts.append(lopa.encrypt(readings[i], blind))
    want.append(" ".join(str(c) for c in cts))
    want.append(str(sum(readings) % 2**32))
    assert out == want
