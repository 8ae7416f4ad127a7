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
#
# The meter imports only what it runs: lib/lopa_core.py (pair keys, the round message, the PRF)
# and lib/lopa_noise.py (the noise, for a group with noise); this module offers both, and the
# head-end's sums (blinding, aggregate, ...) that the host tools and tests use.
from hmac_sha256 import hmac_pads
from lopa_core import _u64, pair_info, pair_key, prf_msg, round_msg, uniform_u32  # noqa: F401
from lopa_noise import gamma, noise_share, normal  # noqa: F401

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):  # type: ignore[misc]  # the CPython stand-in
        return x


_MASK32 = const(0xFFFFFFFF)


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


def sign(id_i, id_j):
    """s_ij: +1 if id_i < id_j, else -1."""
    return 1 if id_i < id_j else -1
