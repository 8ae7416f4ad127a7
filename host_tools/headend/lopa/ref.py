"""Reference LoPA math on CPython (``cryptography`` for X25519 and HKDF, stdlib ``hmac``).

Written apart from the firmware's ``firmware/lib/lopa.py`` so that tests can cross-check the
two (BRIEF "LoPA, precisely", "Robust rounds", "Distributed noise"):

- ``K_ij = HKDF-SHA256(X25519(sk_i, pk_j), salt=gid, info=b"lopa" + id_min + id_max)``
- ``PRF(K, t)`` = first 4 bytes, big-endian, of ``HMAC-SHA256(K, gid + t (8 B))``
- ``b_i(t) = sum_{j != i} s_ij * PRF(K_ij, t) mod 2^32``, ``s_ij = +1`` if ``id_i < id_j``
- ``c_i(t) = x_i + n_i + b_i(t) + C_i(t) mod 2^32``; the robust answer
  ``r_i = C_i(t) + sum_{j in S} s_ij * PRF(K_ij, t) mod 2^32``
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
from collections.abc import Callable, Iterable, Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MASK32 = 0xFFFF_FFFF
PK_LEN = 32


class BadPublicKey(ValueError):
    """A public key of the wrong length, or a low-order point (X25519 output all zero)."""


def check_public_key(pk: bytes) -> bytes:
    """``pk`` if it is a usable X25519 public key; :class:`BadPublicKey` otherwise.

    X25519 clamps every scalar to a multiple of the cofactor 8, so its output is all zero for
    every private key exactly when ``pk`` is a point of order dividing 8: one exchange with a
    throw-away key finds those (``cryptography`` raises on an all-zero shared secret)."""
    if len(pk) != PK_LEN:
        raise BadPublicKey(f"public key of {len(pk)} bytes, not {PK_LEN}")
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(pk))
    except ValueError:
        raise BadPublicKey("low-order public key (X25519 output all zero)") from None
    return bytes(pk)


def keypair(seed: bytes | None = None) -> tuple[bytes, bytes]:
    """(sk, pk); from a 32-byte ``seed`` when given (tests), else random."""
    sk = X25519PrivateKey.from_private_bytes(seed) if seed else X25519PrivateKey.generate()
    raw = sk.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
    return raw, sk.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)


def pair_info(id_i: int, id_j: int) -> bytes:
    if id_i == id_j:
        raise ValueError("a member has no pair key with itself")
    lo, hi = sorted((id_i, id_j))
    return b"lopa" + lo.to_bytes(8, "big") + hi.to_bytes(8, "big")


def pair_key(sk_i: bytes, pk_j: bytes, gid: bytes, id_i: int, id_j: int) -> bytes:
    """K_ij, 32 bytes (= K_ji). :class:`BadPublicKey` for a low-order ``pk_j``."""
    try:
        shared = X25519PrivateKey.from_private_bytes(sk_i).exchange(
            X25519PublicKey.from_public_bytes(pk_j))
    except ValueError:
        raise BadPublicKey("low-order public key (X25519 output all zero)") from None
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=gid,
                info=pair_info(id_i, id_j)).derive(shared)


def prf(k: bytes, gid: bytes, t: int) -> int:
    return int.from_bytes(hmac.new(k, gid + t.to_bytes(8, "big"), hashlib.sha256).digest()[:4],
                          "big")


def sign(id_i: int, id_j: int) -> int:
    return 1 if id_i < id_j else -1


def blinding(pair_keys: Mapping[int, bytes], my_id: int, gid: bytes, t: int,
             only: Iterable[int] | None = None) -> int:
    """sum over j (all of ``pair_keys``, or those in ``only``) of s_ij * PRF(K_ij, t) mod 2^32."""
    ids = pair_keys.keys() if only is None else [j for j in only if j in pair_keys]
    b = 0
    for j in ids:
        if j != my_id:
            b += sign(my_id, j) * prf(pair_keys[j], gid, t)
    return b & MASK32


def noise_share(rng: random.Random, n: int, m: int, lam: float) -> int:
    """DREAM 4.1: round(G1 - G2), G1, G2 ~ Gamma(shape 1/(n-m), scale lambda); 0 without noise.

    The sum of the shares of any n-m members is Laplace(lambda) (up to the rounding)."""
    if lam <= 0:
        return 0
    k = 1.0 / (n - m)
    return round(rng.gammavariate(k, lam) - rng.gammavariate(k, lam))


def signed32(v: int) -> int:
    """A u32 read as two's complement: how an aggregate error (noise) is shown."""
    v &= MASK32
    return v - (1 << 32) if v >= 1 << 31 else v


def aggregate(ciphertexts: Iterable[int], answers: Iterable[int] = ()) -> int:
    """(sum c_i - sum r_i) mod 2^32."""
    return (sum(ciphertexts) - sum(answers)) & MASK32


def laplace_cdf(x: float, lam: float) -> float:
    """CDF of Laplace(0, lambda)."""
    if x < 0:
        return 0.5 * math.exp(x / lam)
    return 1.0 - 0.5 * math.exp(-x / lam)


def ks_statistic(samples: Iterable[float], cdf: Callable[[float], float]) -> float:
    """One-sample Kolmogorov-Smirnov D = sup |F_n(x) - F(x)|."""
    xs = sorted(samples)
    n = len(xs)
    d = 0.0
    for k, x in enumerate(xs):
        fx = cdf(x)
        d = max(d, (k + 1) / n - fx, fx - k / n)
    return d


def ks_critical(n: int, alpha: float = 0.01) -> float:
    """Asymptotic KS critical value c(alpha) / sqrt(n)."""
    return math.sqrt(-0.5 * math.log(alpha / 2)) / math.sqrt(n)
