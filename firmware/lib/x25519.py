# X25519 (RFC 7748) for MicroPython (RP2040, STM32) and CPython.
#
# Implementations of one ladder, the same results (tests: RFC 7748 and Wycheproof vectors and
# the `cryptography` package, on CPython, the unix VM and the emulated boards):
# - ARMv7E-M machine code (x25519_v7m, from host_tools/emu/x25519_v7m_gen.py: UMULL/UMAAL on
#   32-bit words) where the core has UMAAL: the Cortex-M4 (Pyboard), M33 (Pico 2). One
#   X25519: 0.57 M instructions on the emulated M4 and M33, about 0.88 M M4 cycles;
# - ARMv6-M machine code (x25519_thumb, generated from host_tools/emu/x25519_gen.py) on the
#   other Cortex-M MicroPythons with the inline assembler. Field elements in fixed 32-byte
#   buffers, 16x16-bit limb multiply, no branch or address on secret data. One X25519:
#   3.85 M instructions on the emulated Cortex-M0+, 5.24 M cycles on the rp2040js model
#   (42 ms at 125 MHz; docs/BENCH.md);
# - pure Python on ints, below, everywhere else (CPython, the unix VM, a port without the
#   inline assembler): 36.6 M instructions, 51.5 M cycles on the same boards.
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
# Side channels (docs/SECURITY.md has the whole account): both variants always run all 255
# ladder steps and swap by masking; no branch and no table index depends on a key bit. The
# pure-Python variant's big-int operations take time depending on the operands' sizes
# (an int whose top digits happen to be zero is shorter, a fold whose high part is zero is
# cheaper, allocation and GC timing vary), so it is *not* constant-time in the strict
# sense; the machine code is, final reduction included.

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

BASE_POINT = b"\x09" + bytes(31)


# A word of the System Control Block (0xE000ED00 + offset), read by ARMv6-M instructions.
_SCB_READ = """
@micropython.asm_thumb
def scb(r0):
    mov(r1, 0xe0)
    lsl(r1, r1, 24)
    mov(r2, 0xed)
    lsl(r2, r2, 8)
    add(r1, r1, r2)
    add(r0, r0, r1)
    ldr(r0, [r0, 0])
"""


def _has_umaal(micropython):
    # A Thumb-2 build without an FPU reports armv7em (py/persistentcode.h) on a Cortex-M3 too,
    # which lacks UMAAL, so the core is asked. CPUID.PARTNO (bits 15:4): the Cortex-M3 (0xC23)
    # has no UMAAL, the M4 (0xC24) and M7 (0xC27) always have it (ARMv7E-M; their ID_ISAR
    # registers do not say so: QEMU's M4 reports the M3's). On ARMv8-M Mainline (M33 0xD21,
    # M35P, M55, M85) the DSP extension is optional and ID_ISAR2.MultU_instrs (bits 23:20) is 2
    # when it is there.
    g = {"micropython": micropython}
    exec(_SCB_READ, g)
    part = (g["scb"](0) >> 4) & 0xFFF
    if part == 0xC23:
        return False
    if part == 0xC24 or part == 0xC27:
        return True
    return (g["scb"](0x68) >> 20) & 15 >= 2


def _load_thumb():
    # The ladder and inversion in machine code where it can run: a Cortex-M port with the
    # inline assembler (sys.implementation._mpy: armv6m .. armv7emdp). The ARMv7E-M code
    # (x25519_v7m: UMAAL) where the core has UMAAL, else the ARMv6-M code (x25519_thumb),
    # which every Cortex-M runs. None elsewhere (CPython, the unix VM: neither module is
    # even imported there), and then the Python code below.
    global IMPL
    import sys

    try:
        arch = getattr(sys.implementation, "_mpy", 0) >> 10
        if arch < 4 or arch > 8:
            return None
        import micropython

        t = None
        if arch >= 6 and _has_umaal(micropython):
            try:
                import x25519_v7m as t
            except ImportError:  # an image without it: the ARMv6-M code, below
                t = None
        if t is None:
            import x25519_thumb as t
        name = t.__name__
        g = {"micropython": micropython}
        exec(t.TRAMPOLINE, g)
        layout = (t.STATE_SIZE, t.X1, t.X2, t.X3, t.Z3, t.K, t.RES, t.OP_LADDER, t.OP_FINISH)
        code = bytearray(t.CODE)  # in RAM, word-aligned
        # Drop the module: its constant (the code as bytes) is then freed.
        del sys.modules[name]
        IMPL = "armv7e-m" if name == "x25519_v7m" else "armv6-m"
        return g["run"], code, layout
    except Exception:  # no inline assembler, no machine-code module: the Python code
        # without the module imported before the failure (the virtual Pico's: its unix VM has
        # no inline assembler): its machine code, 8.5 KB there, would stay in RAM for as long
        # as the board runs, long after the set-up that imported it
        sys.modules.pop("x25519_v7m", None)
        sys.modules.pop("x25519_thumb", None)
        return None


# Which code x25519() runs: "armv7e-m" (UMAAL), "armv6-m" or "python".
IMPL = "python"
_THUMB = _load_thumb()


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


def _ladder_thumb(k, u32):
    # The same ladder and inversion in machine code: two calls, the clamped scalar handed over
    # in the state buffer, the result fully reduced mod p by the code.
    run, code, (size, x1, x2, x3, z3, ks, res, op_ladder, op_finish) = _THUMB
    st = bytearray(size)
    st[x1:x1 + 32] = u32
    st[x1 + 31] &= 127
    st[x2] = 1
    st[x3:x3 + 32] = st[x1:x1 + 32]
    st[z3] = 1
    st[ks:ks + 32] = k
    run(code, op_ladder, st, 0)
    run(code, op_finish, st, 0)
    out = bytes(st[res:res + 32])
    st[:] = bytes(size)  # wipe the key and the secret intermediate values
    return out


def x25519(sk32, u32):
    """X25519(k, u) per RFC 7748: 32-byte scalar, 32-byte u-coordinate -> 32 bytes.

    Non-canonical u (>= p) is accepted and the top bit of u is ignored, as the
    RFC requires. The result is all zeros for low-order points; use
    shared_secret() for key agreement, which rejects that."""
    if len(sk32) != 32:
        raise ValueError("x25519 scalar must be 32 bytes")
    if len(u32) != 32:
        raise ValueError("x25519 u-coordinate must be 32 bytes")
    k = bytearray(sk32)
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    if _THUMB is not None:
        return _ladder_thumb(k, u32)
    x2, z2 = _ladder(k, int.from_bytes(u32, "little") & _M)
    return (_mul(x2, _inv(z2)) % _P).to_bytes(32, "little")


def public_key(sk32):
    """The public key (32 bytes) of a 32-byte secret key."""
    return x25519(sk32, BASE_POINT)


def shared_secret(sk, pk):
    """X25519 key agreement; ValueError for a malformed public key or an
    all-zero result (low-order point, RFC 7748 section 6.1)."""
    if len(pk) != 32:
        raise ValueError("public key must be 32 bytes")
    out = x25519(sk, pk)
    acc = 0
    for v in out:  # check every byte, no early exit
        acc |= v
    if acc == 0:
        raise ValueError("x25519: all-zero shared secret (low-order public key)")
    return out
