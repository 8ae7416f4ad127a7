# X25519 (RFC 7748) for MicroPython (RP2040, STM32) and CPython.
#
# Implementations of one ladder, the same results (tests: RFC 7748 and Wycheproof vectors and
# the `cryptography` package, on CPython, the unix VM and the emulated boards):
# - ARMv7E-M machine code (x25519_v7m, from host_tools/emu/x25519_v7m_gen.py: UMULL/UMAAL on
#   32-bit words) where the core has UMAAL: the Cortex-M4 (Pyboard), M33 (Pico 2). One
#   X25519: 0.57 M instructions on the emulated M4 and M33, about 0.88 M M4 cycles;
# - ARMv6-M machine code (x25519_thumb, generated from host_tools/emu/x25519_gen.py) on the
#   other Cortex-M MicroPythons with the inline assembler. Field elements in fixed 32-byte
#   buffers, Karatsuba over 32x32-bit products of four MULS, no branch or address on secret
#   data. One X25519: 3.05 M instructions on the emulated Cortex-M0+, 3.76 M cycles on the
#   rp2040js model (30 ms at 125 MHz; docs/BENCH.md);
# - pure Python on ints (x25519_py) everywhere else (CPython, the unix VM, a port without the
#   inline assembler): 36.6 M instructions, 51.5 M cycles on the same boards.
#
# A board's image holds only the code its CPU runs (host_tools/flash/build.py x25519_modules:
# a Pico x25519_thumb, a Pyboard or Pico 2 x25519_v7m, the virtual board x25519_py); this
# module chooses among what is there at import and, if nothing can run, raises ImportError
# saying so, never a wrong answer.
#
# Side channels (docs/SECURITY.md has the whole account): both variants always run all 255
# ladder steps and swap by masking; no branch and no table index depends on a key bit. The
# pure-Python variant's big-int operations take time depending on the operands' sizes
# (an int whose top digits happen to be zero is shorter, a fold whose high part is zero is
# cheaper, allocation and GC timing vary), so it is *not* constant-time in the strict
# sense; the machine code is, final reduction included.

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
    # even imported there) or when the image has neither, and then the Python code
    # (x25519_py).
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
            import x25519_thumb as t  # none in the image: the Python code
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


_PY = None  # the Python code's x25519(k, u), once loaded


def _python():
    # The Python code's x25519(k, u) (lib/x25519_py.py), or the reason there is none. Its
    # module is held by this one alone, not by sys.modules: it leaves RAM with this module
    # (the DC security task drops x25519 after a set-up, lazy.drop("x25519")).
    global _PY
    if _PY is None:
        import sys

        try:
            from x25519_py import x25519 as f
        except ImportError:
            raise ImportError("x25519: no X25519 code for this CPU in the image: flash the "
                              "board's own (meterctl flash)") from None
        sys.modules.pop("x25519_py", None)
        _PY = f
    return _PY


# Which code x25519() runs: "armv7e-m" (UMAAL), "armv6-m" or "python".
IMPL = "python"
_THUMB = _load_thumb()


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
    return _python()(k, u32)


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


if _THUMB is None:
    _python()  # no code that runs here: the import fails now, not at the first key
    # Nor is the machine code's loader and runner needed: deleted, their code leaves the heap
    # (on a 100 KB heap, while a set-up runs, every few hundred bytes count)
    del _SCB_READ, _has_umaal, _load_thumb, _ladder_thumb
