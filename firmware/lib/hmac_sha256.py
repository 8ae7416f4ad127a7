# HMAC-SHA256 (RFC 2104) and HKDF-SHA256 (RFC 5869) for MicroPython and CPython.
#
# MicroPython's hashlib.sha256 has update() and digest() but no copy(), so the
# keyed inner/outer states cannot be cached; instead the padded key blocks can
# be computed once (hmac_pads) and reused (hmac_sha256_pads). The pads are made
# with one big-int XOR each instead of a 64-step byte loop.
import hashlib

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):  # type: ignore[misc]  # the CPython stand-in
        return x


_BLOCK = const(64)
_HASH_LEN = const(32)
_IPAD = int.from_bytes(b"\x36" * 64, "big")
_OPAD = int.from_bytes(b"\x5c" * 64, "big")


def hmac_pads(key):
    """(key ^ ipad, key ^ opad) as two 64-byte blocks, for hmac_sha256_pads()."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    k = int.from_bytes(key, "big") << (8 * (_BLOCK - len(key)))  # zero-padded on the right
    return (k ^ _IPAD).to_bytes(_BLOCK, "big"), (k ^ _OPAD).to_bytes(_BLOCK, "big")


def hmac_sha256_pads(pads, msg):
    """HMAC-SHA256 with pads from hmac_pads()."""
    h = hashlib.sha256(pads[0])
    h.update(msg)
    inner = h.digest()
    h = hashlib.sha256(pads[1])
    h.update(inner)
    return h.digest()


def hmac_sha256(key, msg):
    """HMAC-SHA256(key, msg) -> 32 bytes (RFC 2104, block size 64)."""
    return hmac_sha256_pads(hmac_pads(key), msg)


def hkdf_extract(salt, ikm):
    """RFC 5869 HKDF-Extract; an empty/None salt means 32 zero bytes."""
    if not salt:
        salt = bytes(_HASH_LEN)
    return hmac_sha256(salt, ikm)


def hkdf_expand(prk, info, length):
    """RFC 5869 HKDF-Expand -> `length` bytes (at most 255 * 32)."""
    if length < 0 or length > 255 * _HASH_LEN:
        raise ValueError("hkdf: bad output length")
    pads = hmac_pads(prk)
    info = info or b""
    out = b""
    t = b""
    i = 1
    while len(out) < length:
        t = hmac_sha256_pads(pads, t + info + bytes((i,)))
        out += t
        i += 1
    return out[:length]


def hkdf_sha256(ikm, salt, info, length):
    """HKDF-SHA256 (RFC 5869): extract then expand."""
    return hkdf_expand(hkdf_extract(salt, ikm), info, length)
