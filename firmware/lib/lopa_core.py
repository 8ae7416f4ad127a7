# LoPA, the part the meter runs (BRIEF.md, "LoPA, precisely"): pair keys, the round message
# and the PRF. lib/lopa.py is the whole library (the head-end's sums, the noise, for the host
# tools and tests, on CPython and MicroPython) and takes these from here; the meter imports
# only this module, and lib/lopa_noise.py when a group adds noise (docs/hardware.md, "Memory").
#
#   K_ij   = HKDF-SHA256(ikm = X25519(sk_i, pk_j), salt = gid,
#                        info = b"lopa" + id_min (8 B BE) + id_max (8 B BE)), 32 bytes
#   PRF(K, t) = int(first 4 bytes, BE, of HMAC-SHA256(K, gid + t (8 B BE)))
#
# Ids and round numbers are public, so branching on them is fine.
from hmac_sha256 import hmac_pads, hmac_sha256_pads

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):  # type: ignore[misc]  # the CPython stand-in
        return x


_U64_MAX = const(0xFFFFFFFFFFFFFFFF)
_INV_2_32 = 1.0 / 4294967296.0


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
    return pair_key_pads(sk_i, pk_j, hmac_pads(gid), pair_info(id_i, id_j))


def pair_info_b(idb_i, idb_j):
    """pair_info() of two ids given as their 8 bytes big-endian (as bytes they order as the
    numbers do): a set-up's ids arrive so, and no int is made of them."""
    if idb_i == idb_j:
        raise ValueError("lopa: a member has no pair key with itself")
    return b"lopa" + (idb_i + idb_j if idb_i < idb_j else idb_j + idb_i)


def pair_key_pads(sk_i, pk_j, gid_pads, info):
    """pair_key() with the gid's HMAC pads (hmac_pads(gid): one set-up makes them once for
    all its members) and pair_info(). HKDF-SHA256 for 32 bytes of output: extract with the
    gid as the salt, then one expand block, T(1) = HMAC(PRK, info + 0x01) (RFC 5869)."""
    # x25519 is imported here, not at the top: on the meter only a group set-up needs it
    # (tasks/dc_setup.py), and its code is then in RAM only while the set-up runs.
    from x25519 import shared_secret

    prk = hmac_sha256_pads(gid_pads, shared_secret(sk_i, pk_j))
    return hmac_sha256_pads(hmac_pads(prk), info + b"\x01")


def round_msg(gid, t):
    """The HMAC message of round t: gid + t (8 bytes big-endian). Build it once
    per round and pass it to prf_msg() / blinding_msg() for every pair key."""
    return bytes(gid) + _u64(t, "round")


def prf_msg(k, msg):
    """PRF for a prebuilt round message. k: 32-byte key, or its hmac_pads()
    (see prepare_keys)."""
    pads = k if isinstance(k, tuple) else hmac_pads(k)
    return int.from_bytes(hmac_sha256_pads(pads, msg)[:4], "big")


def uniform_u32(u):
    """A u32 -> a float in (0, 1): (u + 0.5) / 2^32 (never 0, so log() is defined)."""
    return (u + 0.5) * _INV_2_32


