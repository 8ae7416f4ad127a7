# X25519 (RFC 7748) in pure Python on ints: the ladder and the inversion that lib/x25519.py
# runs where no machine code for the CPU is in the image (CPython, the unix VM, a port without
# the inline assembler). A board's image leaves it out when the board's machine code always
# runs there (host_tools/flash/build.py, x25519_modules).
#
# Pure Python: field elements are plain Python ints. Reduction uses the special form of
# p = 2^255 - 19: since 2^255 = 19 (mod p), a product x folds as
#     x = (x & M) + 19 * (x >> 255)        (M = 2^255 - 1)
# which is congruent to x and much cheaper than `% p` on MicroPython (on the
# unix VM: multiply+`% p` 3.1 us, multiply+two folds 2.4 us, multiply+one fold
# 1.8 us). Only the final result is reduced with `% p`.
#
# Bounds (checked by interval arithmetic on worst-case upper bounds):
# the ladder state x2, z2, x3, z3 always stays below B = 2^255 + 2^48 (< 2p).
# Sums of two state values are < 2^257; differences are formed as
# `a + k*p - b` with k*p >= the bound of b, so everything stays non-negative.
# - aa, bb, da, cb: product of two values < 2^258, ONE fold -> < 2^263.
# - e = aa - bb + 2^8*p < 2^264; aa + 121665*e < 2^281.
# - x3 = (da + cb)^2, x2 = aa*bb, z2 = e*(aa + a24*e): TWO folds -> < 2^255 + 2^43.
# - z3 = x1 * fold1((da - cb + 2^7*p)^2): TWO folds -> < 2^255 + 2^29.
# So 13 folds per ladder step instead of 20 (about 20% faster than folding
# twice after every multiply: 6.1 ms against 7.5 ms in one A/B run on the unix
# VM). One X25519 takes ~4.5 ms (median of 5; 4.3-5.7 ms across runs) on the
# MicroPython unix VM on an x86-64 host.
#
#
# Not constant-time in the strict sense (lib/x25519.py, "Side channels").

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):  # type: ignore[misc]  # the CPython stand-in
        return x


_P = const(2**255 - 19)
_M = const(2**255 - 1)
_P1 = const((2**255 - 19) << 1)  # 2p  >= any ladder state value
_P7 = const((2**255 - 19) << 7)  # 2^7 p >= cb
_P8 = const((2**255 - 19) << 8)  # 2^8 p >= bb
_A24 = const(121665)


def _sqn(x, n):
    # n squarings, each followed by two folds (x < 2^256 in, < 2^255 + 2^13 out).
    for _ in range(n):
        x = x * x
        x = (x & _M) + 19 * (x >> 255)
        x = (x & _M) + 19 * (x >> 255)
    return x


def _mul(a, b):
    x = a * b
    x = (x & _M) + 19 * (x >> 255)
    return (x & _M) + 19 * (x >> 255)


def _inv(z):
    # z^(p-2) by the standard addition chain: 254 squarings, 11 multiplies.
    # Measured on the MicroPython unix VM: 0.38-0.67 ms, against 0.72-1.0 ms for
    # pow(z, p - 2, p) (about twice as fast; same ordering in every run), so the
    # chain is kept.
    # Returns 0 for z = 0 (mod p), as RFC 7748 requires.
    z2 = _mul(z, z)  # 2
    z9 = _mul(_sqn(z2, 2), z)  # 9
    z11 = _mul(z9, z2)  # 11
    z5 = _mul(_mul(z11, z11), z9)  # 2^5 - 1
    z10 = _mul(_sqn(z5, 5), z5)  # 2^10 - 1
    z20 = _mul(_sqn(z10, 10), z10)  # 2^20 - 1
    t = _mul(_sqn(z20, 20), z20)  # 2^40 - 1
    z50 = _mul(_sqn(t, 10), z10)  # 2^50 - 1
    z100 = _mul(_sqn(z50, 50), z50)  # 2^100 - 1
    t = _mul(_sqn(z100, 100), z100)  # 2^200 - 1
    t = _mul(_sqn(t, 50), z50)  # 2^250 - 1
    return _mul(_sqn(t, 5), z11)  # 2^255 - 21 = p - 2


def _ladder(k, x1):
    # RFC 7748 section 5 Montgomery ladder. k: clamped scalar, 32 bytes
    # little-endian (indexed only by the public loop counter); x1: u < 2^255.
    # Returns the projective (x2, z2).
    x2 = 1
    z2 = 0
    x3 = x1
    z3 = 1
    swap = 0
    for t in range(254, -1, -1):
        kt = (k[t >> 3] >> (t & 7)) & 1
        swap ^= kt
        mask = 0 - swap  # 0 or -1 (all ones)
        d = mask & (x2 ^ x3)
        x2 ^= d
        x3 ^= d
        d = mask & (z2 ^ z3)
        z2 ^= d
        z3 ^= d
        swap = kt
        a = x2 + z2
        aa = a * a
        aa = (aa & _M) + 19 * (aa >> 255)
        b = x2 + _P1 - z2
        bb = b * b
        bb = (bb & _M) + 19 * (bb >> 255)
        e = aa + _P8 - bb
        d = (x3 + _P1 - z3) * a  # DA
        d = (d & _M) + 19 * (d >> 255)
        c = (x3 + z3) * b  # CB
        c = (c & _M) + 19 * (c >> 255)
        x3 = d + c
        x3 = x3 * x3
        x3 = (x3 & _M) + 19 * (x3 >> 255)
        x3 = (x3 & _M) + 19 * (x3 >> 255)
        z3 = d + _P7 - c
        z3 = z3 * z3
        z3 = x1 * ((z3 & _M) + 19 * (z3 >> 255))
        z3 = (z3 & _M) + 19 * (z3 >> 255)
        z3 = (z3 & _M) + 19 * (z3 >> 255)
        x2 = aa * bb
        x2 = (x2 & _M) + 19 * (x2 >> 255)
        x2 = (x2 & _M) + 19 * (x2 >> 255)
        z2 = e * (aa + _A24 * e)
        z2 = (z2 & _M) + 19 * (z2 >> 255)
        z2 = (z2 & _M) + 19 * (z2 >> 255)
    mask = 0 - swap
    d = mask & (x2 ^ x3)
    x2 ^= d
    d = mask & (z2 ^ z3)
    z2 ^= d
    return x2, z2


def x25519(k, u32):
    """X25519 with the clamped scalar ``k`` (32 bytes) and the u-coordinate ``u32``."""
    x2, z2 = _ladder(k, int.from_bytes(u32, "little") & _M)
    return (_mul(x2, _inv(z2)) % _P).to_bytes(32, "little")
