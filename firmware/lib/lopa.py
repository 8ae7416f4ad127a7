# LoPA pure math (BRIEF.md, "LoPA, precisely"), shared by the meter firmware
# (MicroPython) and the host tools/tests (CPython).
#
#   K_ij   = HKDF-SHA256(ikm = X25519(sk_i, pk_j), salt = gid,
#                        info = b"lopa" + id_min (8 B BE) + id_max (8 B BE)), 32 bytes
#   PRF(K, t) = int(first 4 bytes, BE, of HMAC-SHA256(K, gid + t (8 B BE)))
#   b_i(t) = sum_{j != i} s_ij * PRF(K_ij, t) mod 2^32, s_ij = +1 if id_i < id_j else -1
#   c_i(t) = (x + b_i(t)) mod 2^32
#
# Ids and round numbers are public, so branching on them is fine.
from hmac_sha256 import hkdf_sha256, hmac_pads, hmac_sha256_pads

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):  # type: ignore[misc]  # the CPython stand-in
        return x


_MASK32 = const(0xFFFFFFFF)
_U64_MAX = const(0xFFFFFFFFFFFFFFFF)


def _u64(v, what):
    if v < 0 or v > _U64_MAX:
        raise ValueError(what + " must fit in 64 bits")
    return v.to_bytes(8, "big")


def pair_info(id_i, id_j):
    """HKDF info for the pair: b"lopa" + id_min + id_max (8 bytes big-endian each)."""
    if id_i == id_j:
        raise ValueError("lopa: a member has no pair key with itself")
    if id_i > id_j:
        id_i, id_j = id_j, id_i
    return b"lopa" + _u64(id_i, "member id") + _u64(id_j, "member id")


def pair_key(sk_i, pk_j, gid, id_i, id_j):
    """K_ij (32 bytes); equal to K_ji computed by member j. ValueError for a
    malformed or low-order public key, equal ids, or ids outside 64 bits."""
    # x25519 is imported here, not at the top: on the meter only a group set-up needs it
    # (tasks/dc_setup.py), and its code is then in RAM only while the set-up runs.
    from x25519 import shared_secret

    info = pair_info(id_i, id_j)
    return hkdf_sha256(shared_secret(sk_i, pk_j), gid, info, 32)


def round_msg(gid, t):
    """The HMAC message of round t: gid + t (8 bytes big-endian). Build it once
    per round and pass it to prf_msg() / blinding_msg() for every pair key."""
    return bytes(gid) + _u64(t, "round")


def prf_msg(k, msg):
    """PRF for a prebuilt round message. k: 32-byte key, or its hmac_pads()
    (see prepare_keys)."""
    pads = k if isinstance(k, tuple) else hmac_pads(k)
    return int.from_bytes(hmac_sha256_pads(pads, msg)[:4], "big")


def prf(k, gid, t):
    """PRF(K, t): first 4 bytes (big-endian int) of HMAC-SHA256(K, gid + t)."""
    return prf_msg(k, round_msg(gid, t))


def prepare_keys(pair_keys):
    """Optional: [(id_j, K_ij)] -> [(id_j, hmac pads)], accepted everywhere a
    pair-key list is. Saves re-deriving the HMAC pads every round at the cost
    of 128 instead of 32 bytes per member."""
    return [(j, hmac_pads(k)) for j, k in pair_keys]


def blinding_msg(pair_keys, my_id, msg, only=None):
    """b_i for a prebuilt round_msg(gid, t); see blinding()."""
    b = 0
    for id_j, k in pair_keys:
        if id_j == my_id:
            continue
        if only is not None and id_j not in only:
            continue
        v = prf_msg(k, msg)
        if my_id < id_j:
            b += v
        else:
            b -= v
    return b & _MASK32


def blinding(pair_keys, my_id, gid, t, only=None):
    """b_i(t) = sum over (id_j, K_ij) in pair_keys, j != i, of s_ij * PRF(K_ij, t)
    mod 2^32. With `only` (a set/list of ids), sum over those members only: that
    is the DREAM round-2 term sum_{j in S} s_ij * PRF(K_ij, t)."""
    return blinding_msg(pair_keys, my_id, round_msg(gid, t), only)


def encrypt(x, b):
    """c = (x + b) mod 2^32."""
    return (x + b) & _MASK32


def aggregate(ciphertexts):
    """Sum of ciphertexts mod 2^32 (= sum of readings when every member reported)."""
    s = 0
    for c in ciphertexts:
        s += c
    return s & _MASK32


# -- distributed noise (DREAM section 4.1) -------------------------------------------
# Each of the N - M members that report adds n_i = round(G1 - G2), G1, G2 independent
# Gamma(shape 1/(N-M), scale lambda): the sum of N - M such differences is Laplace(lambda)
# (a Laplace variable is the difference of two exponentials, and an exponential is the sum
# of k Gamma(1/k) variables). `rnd` is a function returning a float uniform in (0, 1):
# the meter builds one on its board's entropy (uniform_u32), tests pass a seeded one.
# Floats are single precision on the RP2040 port: shares are rounded to whole mWh anyway.
_TWO_PI = 6.283185307179586
_INV_2_32 = 1.0 / 4294967296.0


def uniform_u32(u):
    """A u32 -> a float in (0, 1): (u + 0.5) / 2^32 (never 0, so log() is defined)."""
    return (u + 0.5) * _INV_2_32


def normal(rnd):
    """A standard normal variate (Box-Muller) from two uniforms."""
    import math

    return math.sqrt(-2.0 * math.log(rnd())) * math.cos(_TWO_PI * rnd())


def gamma(shape, scale, rnd):
    """A Gamma(shape, scale) variate, shape > 0 (Marsaglia and Tsang 2000; for shape < 1
    the boost Gamma(a) = Gamma(a + 1) * U^(1/a))."""
    import math

    if shape <= 0:
        raise ValueError("gamma: shape must be > 0")
    boost = shape < 1.0
    a = shape + 1.0 if boost else shape
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = normal(rnd)
        v = 1.0 + c * x
        if v <= 0.0:
            continue
        v = v * v * v
        u = rnd()
        if math.log(u) < 0.5 * x * x + d - d * v + d * math.log(v):
            g = d * v
            break
    if boost:
        e = math.log(rnd()) / shape  # U^(1/a) in log space: underflows to 0, never raises
        g = g * math.exp(e) if e > -700.0 else 0.0
    return g * scale


def noise_share(n, m, lam, rnd):
    """This member's noise share n_i = round(G1 - G2), G1, G2 ~ Gamma(1/(n-m), lam);
    0 when lam is 0 (no noise). An int (may be negative): add it mod 2^32."""
    if lam <= 0:
        return 0
    k = n - m
    if k < 1:
        raise ValueError("noise: n - m must be at least 1")
    shape = 1.0 / k
    return int(round(gamma(shape, lam, rnd) - gamma(shape, lam, rnd)))


def sign(id_i, id_j):
    """s_ij: +1 if id_i < id_j, else -1."""
    return 1 if id_i < id_j else -1
