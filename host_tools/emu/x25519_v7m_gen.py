"""Generate firmware/lib/x25519_v7m.py: the X25519 ladder, inversion and final reduction in
ARMv7E-M machine code (Thumb-2 with UMAAL), for MicroPython on the Cortex-M4 (STM32F4, the
Pyboard) and the Cortex-M33 (RP2350, the Pico 2); a Cortex-M7 needs cache maintenance first
(docs/emulated.md).

Why machine code in a bytes constant: as for the ARMv6-M code (host_tools/emu/x25519_gen.py).
MicroPython's inline assembler also lacks the instruction this code is built on: v1.28.0's
py/emitinlinethumb.c accepts, of the long multiplies and divides, only ``sdiv`` and ``udiv``
(under ``ARMV7M``, lines 810-820); there is no ``umull`` or ``umaal``, and the native emitter
(py/asmthumb.c) emits none either. So GNU as assembles the code here for
``-march=armv7e-m`` (the Cortex-M4's instruction set without its FPU; the Cortex-M33 with its
DSP extension runs the same encodings) and the module carries the bytes, with the same
8-instruction trampoline and the same state layout and op codes as x25519_thumb, so that
firmware/lib/x25519.py uses either through one code path.

UMAAL RdLo, RdHi, Rn, Rm computes RdHi:RdLo = Rn * Rm + RdLo + RdHi, which cannot overflow 64
bits: one instruction (one cycle on the M4) for a 32x32 product, its column's accumulator and
the carry of the previous column. The multiply is operand scanning over 8 words, two rows at a
time: rows i and i+1 add a_i * b and a_(i+1) * b to a window of 8 accumulator registers with a
carry register each, so each b_j is loaded once for both; the window slides two words per pair
of rows (the generator renames registers instead of moving values), the final low words go to
the stack, and the high half (still in registers at the end) is folded with 2^256 = 38
(mod p) by 8 more UMAALs. The squaring computes the 28 cross products once, the same way,
doubles them and adds the 8 squares in one carry chain. Field elements are 32 bytes,
little-endian, any value below 2^256 until the final, branch-free reduction, as in the ARMv6-M
code.

Constant time: the only branches are on the op code and on public loop counters; the
conditional swap is masked; no address depends on data; UMAAL and UMULL take one cycle
whatever the operands on the Cortex-M4 (its technical reference manual, 3.3.1; the M3's UMULL
terminates early, and the M3 has no UMAAL), and the M33 is taken to be the same (docs/SECURITY.md).

    python -m host_tools.emu gen-x25519     # rewrites x25519_thumb.py and x25519_v7m.py
"""

from __future__ import annotations

from pathlib import Path

from host_tools.emu import mcode
from host_tools.emu.build import REPO

OUT = REPO / "firmware" / "lib" / "x25519_v7m.py"

# The state layout and op codes are x25519_thumb's (host_tools/emu/x25519_gen.py), so that
# x25519.py drives either module the same way; they are written out here, not imported, so that
# either generator can change without the other's module going stale silently
# (tests_host/test_x25519_v7m.py checks that the two modules agree).
X1, X2, Z2, X3, Z3 = 0, 32, 64, 96, 128
A, B, C, D, AA, BB, E, DA, CB, T = (160 + 32 * i for i in range(10))
K = 544  # the clamped scalar (op 3)
STATE_SIZE = 576
RES = A  # op 1 leaves X2 / Z2 here
OP_STEP, OP_FINISH, OP_CSWAP, OP_LADDER = 0, 1, 2, 3
LAYOUT = {"state_size": STATE_SIZE, "x1": X1, "x2": X2, "z2": Z2, "x3": X3, "z3": Z3,
          "res": RES, "k": K, "op_ladder": OP_LADDER, "op_step": OP_STEP,
          "op_finish": OP_FINISH, "op_cswap": OP_CSWAP}

# Calling convention of the routines below: r0 = dst, r1 = a, r2 = b (pointers into the state),
# r3 = the state's base, which every routine preserves; everything else may be clobbered.
BASE = "r3"


class Asm:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.n = 0

    def __call__(self, line: str) -> None:
        self.lines.append("    " + line)

    def label(self, name: str) -> None:
        self.lines.append(f"{name}:")

    def fresh(self, stem: str) -> str:
        self.n += 1
        return f".L{stem}{self.n}"

    def ptr(self, reg: str, off: int) -> None:
        """reg = state base + off (one ADD/ADDW: offsets below 4096)."""
        self(f"add {reg}, {BASE}, #{off}")


def _fold_carry(a: Asm, words: list[str], carry: str, k38: str) -> None:
    """words (8 registers, low first) += carry * 38 with the carry chain; a carry out of that
    adds 38 once more, which cannot carry again (the value wrapped, so it is below
    38 * 2^7 + 38). Leaves the flags clobbered; k38 holds 38; carry is clobbered."""
    a(f"mul {carry}, {carry}, {k38}")
    a(f"adds {words[0]}, {words[0]}, {carry}")
    for w in words[1:]:
        a(f"adcs {w}, {w}, #0")
    a(f"mov {carry}, #0")
    a(f"adc {carry}, {carry}, #0")
    a(f"mul {carry}, {carry}, {k38}")
    a(f"add {words[0]}, {words[0]}, {carry}")


def _fold_high(a: Asm, hi: dict[int, str], free: list[str], dst_off: int) -> None:
    """The product's low half is on the stack (8 words at sp), its high half in registers
    (hi[w] = word 8 + w); the destination pointer is on the stack at sp + dst_off. Stores
    lo + 38 * hi, reduced below 2^256, at the destination."""
    k38 = free.pop()
    carry = free.pop()
    a(f"mov {k38}, #38")
    a(f"mov {carry}, #0")
    out: list[str] = []
    for w in range(8):
        lo = free.pop(0)
        a(f"ldr {lo}, [sp, #{4 * w}]")
        a(f"umaal {lo}, {carry}, {hi[w]}, {k38}")
        out.append(lo)
        free.append(hi.pop(w))
    _fold_carry(a, out, carry, k38)
    a(f"ldr {carry}, [sp, #{dst_off}]")
    for w in range(0, 8, 2):
        a(f"strd {out[w]}, {out[w + 1]}, [{carry}, #{4 * w}]")


def fe_mul(a: Asm) -> None:
    """fe_mul: r0 = dst, r1 = a, r2 = b; dst = a * b mod p (< 2^256). dst may be a or b.

    Operand scanning, two rows at a time: rows i and i + 1 each add a_i * b (resp.
    a_(i+1) * b) to a window of 8 accumulator words with their own carry register, so each
    b_j is loaded once for both rows. A word receives its two rows' products in either order
    (every UMAAL is exact), and each carry chain runs upwards. After the pair of rows words i
    and i + 1 are final and go to the stack; the two carries become words i + 8 and i + 9."""
    a.label("fe_mul")
    a("push {r0, r1, r3, lr}")  # [sp + 32] dst, [sp + 36] a once the product's 32 bytes are below
    a("sub sp, sp, #32")
    ai, ai1, bj = "r10", "r11", "r12"
    window = ["r0", "r1", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "lr"]  # 10 registers
    acc = {w: window[w] for w in range(8)}  # word -> register
    c0, c1 = window[8], window[9]
    for r in window:
        a(f"mov {r}, #0")
    for i in range(0, 8, 2):
        a(f"ldr {c0}, [sp, #36]")  # the pointer to a, in a carry register not yet in use
        a(f"ldrd {ai}, {ai1}, [{c0}, #{4 * i}]")
        a(f"mov {c0}, #0")
        for j in range(8):
            a(f"ldr {bj}, [r2, #{4 * j}]")
            a(f"umaal {acc[i + j]}, {c0}, {ai}, {bj}")
            if j == 7:
                acc[i + 8] = c0  # row i's carry out is word i + 8, where row i + 1 adds next
            a(f"umaal {acc[i + 1 + j]}, {c1}, {ai1}, {bj}")
        acc[i + 9] = c1
        a(f"strd {acc[i]}, {acc[i + 1]}, [sp, #{4 * i}]")  # words i and i + 1 are final
        c0, c1 = acc.pop(i), acc.pop(i + 1)
        if i < 6:
            a(f"mov {c1}, #0")  # c0 is zeroed after it has served as the pointer to a
    hi = {w - 8: acc[w] for w in range(8, 16)}
    free = [r for r in [*window, ai, ai1, bj, "r2"] if r not in hi.values()]
    _fold_high(a, hi, free, 32)
    a("add sp, sp, #32")
    a("pop {r0, r1, r3, pc}")


def fe_sq(a: Asm) -> None:
    """fe_sq: r0 = dst, r1 = a; dst = a^2 mod p. The 28 cross products a_i * a_j (i < j) by
    rows of UMAALs (the triangle T), then 2 * T + the squares a_w^2 in one carry chain over
    the 16 words; the low 8 go through the stack, the high 8 stay in registers for the fold."""
    a.label("fe_sq")
    a("push {r0, r3, lr}")
    a("sub sp, sp, #32")
    pool = ["r0", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11", "r12", "lr"]
    ai, ai1, aj, aj1 = "r12", "lr", "r10", "r11"  # a_i, a_(i+1); a pair of a's words
    free = [r for r in pool if r not in (ai, ai1, aj, aj1)]
    acc: dict[int, str] = {}  # triangle word -> register, while rows still add to it
    high: dict[int, str] = {}  # final triangle words 8..14

    def word(k: int) -> str:
        if k not in acc:
            acc[k] = free.pop(0)
            a(f"mov {acc[k]}, #0")
        return acc[k]

    # Row i adds a_i * a_j (j = i+1..7) to words 2i+1 .. i+7 and its carry to word i+8. Rows
    # go in pairs (i, i+1), as in fe_mul: two carry chains, each a_j loaded once for both.
    # No later pair reaches a word below 2i+5, so those are final: words 1..7 go to the stack.
    for i in (0, 2, 4, 6):
        c0 = free.pop(0)
        a(f"mov {c0}, #0")
        if i < 6:
            a(f"ldrd {ai}, {ai1}, [r1, #{4 * i}]")
            c1 = free.pop(0)
            a(f"mov {c1}, #0")
        else:
            a(f"ldrd {ai}, {ai1}, [r1, #{4 * i}]")  # a_6, a_7: one product
        a(f"umaal {word(2 * i + 1)}, {c0}, {ai}, {ai1}")  # a_i * a_(i+1)
        for j in range(i + 2, 8):
            if j % 2 == 0:
                a(f"ldrd {aj}, {aj1}, [r1, #{4 * j}]")
            x = aj if j % 2 == 0 else aj1
            a(f"umaal {word(i + j)}, {c0}, {ai}, {x}")
            if j == 7:
                acc[i + 8] = c0  # row i's carry out is word i + 8, where row i + 1 adds next
            a(f"umaal {word(i + 1 + j)}, {c1}, {ai1}, {x}")
        if i < 6:
            acc[i + 9] = c1
        else:
            acc[i + 8] = c0
        for k in sorted(acc):
            if k <= 2 * i + 4:
                reg = acc.pop(k)
                if k < 8:
                    a(f"str {reg}, [sp, #{4 * k}]")
                    free.append(reg)
                else:
                    high[k] = reg
    assert not acc and sorted(high) == list(range(8, 15)), (acc, high)
    # 2T + squares: word k of 2T is T_k << 1 | T_(k-1) >> 31 (shifts, which leave the carry
    # flag alone), added with ADCS to word k of the squares (lo, hi of a_(k/2)^2). Word 0 of
    # T and word 15 are zero.
    free = [r for r in pool if r not in high.values() and r != ai]
    sqlo, sqhi, dbl, bit, tl = (free.pop(0) for _ in range(5))
    hi: dict[int, str] = {}
    for w in range(8):
        a(f"ldr {ai}, [r1, #{4 * w}]")
        a(f"umull {sqlo}, {sqhi}, {ai}, {ai}")
        for half, sq in ((0, sqlo), (1, sqhi)):
            k = 2 * w + half
            if k == 0:
                a(f"str {sq}, [sp]")
                continue
            if k == 15:
                a(f"adcs {sq}, {sq}, {bit}")
                hi[7] = sq
                continue
            t = tl if k < 8 else high[k]
            if k < 8:
                a(f"ldr {t}, [sp, #{4 * k}]")
            if k == 1:
                a(f"lsl {dbl}, {t}, #1")
            else:
                a(f"orr {dbl}, {bit}, {t}, lsl #1")
            a(f"lsr {bit}, {t}, #31")
            if k < 8:
                a(f"{'adds' if k == 1 else 'adcs'} {sq}, {sq}, {dbl}")
                a(f"str {sq}, [sp, #{4 * k}]")
            else:
                a(f"adcs {t}, {sq}, {dbl}")
                hi[k - 8] = t
    free = [r for r in [*pool, "r1"] if r not in hi.values()]
    _fold_high(a, hi, free, 32)
    a("add sp, sp, #32")
    a("pop {r0, r3, pc}")


def fe_add(a: Asm) -> None:
    """fe_add: r0 = dst, r1 = a, r2 = b; dst = a + b mod p (< 2^256)."""
    a.label("fe_add")
    a("push {r3, lr}")
    a("ldm r1, {r4-r11}")
    ws = [f"r{i}" for i in range(4, 12)]
    for w in range(0, 8, 2):
        a(f"ldrd r12, lr, [r2, #{4 * w}]")
        a(f"{'adds' if w == 0 else 'adcs'} {ws[w]}, {ws[w]}, r12")
        a(f"adcs {ws[w + 1]}, {ws[w + 1]}, lr")
    a("mov r12, #0")
    a("adc r12, r12, #0")
    a("mov lr, #38")
    _fold_carry(a, ws, "r12", "lr")
    a("stm r0, {r4-r11}")
    a("pop {r3, pc}")


def fe_sub(a: Asm) -> None:
    """fe_sub: r0 = dst, r1 = a, r2 = b; dst = a - b mod p (< 2^256). A borrow means the
    stored value is a - b + 2^256, so 38 is taken off (twice at most; the second time the
    value is at least 2^256 - 38 and cannot borrow)."""
    a.label("fe_sub")
    a("push {r3, lr}")
    a("ldm r1, {r4-r11}")
    ws = [f"r{i}" for i in range(4, 12)]
    for w in range(0, 8, 2):
        a(f"ldrd r12, lr, [r2, #{4 * w}]")
        a(f"{'subs' if w == 0 else 'sbcs'} {ws[w]}, {ws[w]}, r12")
        a(f"sbcs {ws[w + 1]}, {ws[w + 1]}, lr")
    for last in (False, True):
        a("sbc r12, r12, r12")  # 0 or -1 (a borrow)
        a("and r12, r12, #38")
        if last:
            a(f"sub {ws[0]}, {ws[0]}, r12")
        else:
            a(f"subs {ws[0]}, {ws[0]}, r12")
            for reg in ws[1:]:
                a(f"sbcs {reg}, {reg}, #0")
    a("stm r0, {r4-r11}")
    a("pop {r3, pc}")


def fe_mul121665(a: Asm) -> None:
    """fe_mul121665: r0 = dst, r1 = a; dst = 121665 * a mod p: per word one
    UMAAL w, carry, w, 121664 (= w * 121665 + carry)."""
    a.label("fe_mul121665")
    a("push {r3, lr}")
    a("ldm r1, {r4-r11}")
    ws = [f"r{i}" for i in range(4, 12)]
    a("movw r12, #(121664 & 0xffff)")
    a("movt r12, #(121664 >> 16)")
    a("mov lr, #0")
    for w in ws:
        a(f"umaal {w}, lr, {w}, r12")
    a("mov r12, #38")
    _fold_carry(a, ws, "lr", "r12")
    a("stm r0, {r4-r11}")
    a("pop {r3, pc}")


def cswap(a: Asm) -> None:
    """cswap: r2 = 0 or 1 (the swap bit); swaps (X2, Z2) with (X3, Z3) by masking."""
    a.label("cswap")
    a("push {r3, lr}")
    a("rsb r2, r2, #0")  # mask: 0 or all ones
    for p, q in ((X2, X3), (Z2, Z3)):
        for half in (0, 16):
            a.ptr("r0", p + half)
            a.ptr("r1", q + half)
            a("ldm r0, {r4-r7}")
            a("ldm r1, {r8-r11}")
            for x, y in zip(("r4", "r5", "r6", "r7"), ("r8", "r9", "r10", "r11"), strict=True):
                a(f"eor r12, {x}, {y}")
                a("and r12, r12, r2")
                a(f"eor {x}, {x}, r12")
                a(f"eor {y}, {y}, r12")
            a("stm r0, {r4-r7}")
            a("stm r1, {r8-r11}")
    a("pop {r3, pc}")


def fe_freeze(a: Asm) -> None:
    """fe_freeze: r0 = x (< 2^256); x = x mod p, fully reduced, without a branch: two folds of
    bit 255 (x < 2^255 after them), then the carry of x + 19 into bit 255 says whether
    x >= p, and by mask x + 19 - 2^255 replaces x."""
    a.label("fe_freeze")
    a("push {r3, lr}")
    a("ldm r0, {r4-r11}")
    ws = [f"r{i}" for i in range(4, 12)]
    a("mov lr, #19")
    for _ in range(2):
        a("lsr r12, r11, #31")
        a("bic r11, r11, #0x80000000")
        a("mul r12, r12, lr")
        a("adds r4, r4, r12")
        for w in ws[1:]:
            a(f"adcs {w}, {w}, #0")
    a("adds r12, r4, #19")
    for w in ws[1:]:
        a(f"adcs r12, {w}, #0")
    a("asr r12, r12, #31")  # all ones when x + 19 >= 2^255, that is x >= p
    a("and r12, r12, #19")
    a("adds r4, r4, r12")
    for w in ws[1:]:
        a(f"adcs {w}, {w}, #0")
    a("bic r11, r11, #0x80000000")
    a("stm r0, {r4-r11}")
    a("pop {r3, pc}")


def call(a: Asm, fn: str, *slots: int) -> None:
    for reg, off in zip(("r0", "r1", "r2"), slots, strict=False):
        a.ptr(reg, off)
    a(f"bl {fn}")


def op_step(a: Asm) -> None:
    """One Montgomery ladder step (RFC 7748 section 5), after the conditional swap by r2."""
    a.label("op_step")
    a("push {r3, lr}")
    a("bl cswap")
    call(a, "fe_add", A, X2, Z2)
    call(a, "fe_sub", B, X2, Z2)
    call(a, "fe_add", C, X3, Z3)
    call(a, "fe_sub", D, X3, Z3)
    call(a, "fe_mul", DA, D, A)
    call(a, "fe_mul", CB, C, B)
    call(a, "fe_sq", AA, A)
    call(a, "fe_sq", BB, B)
    call(a, "fe_add", X3, DA, CB)
    call(a, "fe_sq", X3, X3)
    call(a, "fe_sub", Z3, DA, CB)
    call(a, "fe_sq", Z3, Z3)
    call(a, "fe_mul", Z3, X1, Z3)
    call(a, "fe_mul", X2, AA, BB)
    call(a, "fe_sub", E, AA, BB)
    call(a, "fe_mul121665", T, E)
    call(a, "fe_add", T, AA, T)
    call(a, "fe_mul", Z2, E, T)
    a("pop {r3, pc}")


def op_ladder(a: Asm) -> None:
    """The whole ladder: for t = 254 .. 0, kt = bit t of the scalar in slot K, swap ^= kt,
    cswap and step, swap = kt; then the last cswap. t (public) and swap live on the stack;
    the byte load's address depends on t alone."""
    a.label("op_ladder")
    a("push {r3, lr}")
    a("mov r4, #254")
    a("mov r5, #0")
    a("push {r4, r5}")  # [sp] = t, [sp + 4] = swap
    a.label(".Lladder")
    a("ldr r4, [sp]")
    a("lsr r5, r4, #3")
    a.ptr("r6", K)
    a("ldrb r5, [r6, r5]")
    a("and r6, r4, #7")
    a("lsr r5, r5, r6")
    a("and r5, r5, #1")  # kt
    a("ldr r2, [sp, #4]")
    a("eor r2, r2, r5")  # swap ^ kt
    a("str r5, [sp, #4]")
    a("bl op_step")
    a("ldr r4, [sp]")
    a("subs r4, r4, #1")
    a("str r4, [sp]")
    a("bpl .Lladder")
    a("ldr r2, [sp, #4]")
    a("bl cswap")
    a("add sp, sp, #8")
    a("pop {r3, pc}")


def sqn(a: Asm, dst: int, src: int, n: int) -> None:
    """dst = src^(2^n): one squaring from src, then n - 1 in place (the public counter on the
    stack)."""
    call(a, "fe_sq", dst, src)
    if n == 1:
        return
    loop = a.fresh("sq")
    a(f"mov r4, #{n - 1}")
    a("str r4, [sp]")
    a.label(loop)
    call(a, "fe_sq", dst, dst)
    a("ldr r4, [sp]")
    a("subs r4, r4, #1")
    a("str r4, [sp]")
    a(f"bne {loop}")


def op_finish(a: Asm) -> None:
    """RES = X2 / Z2 = X2 * Z2^(p-2) mod p, fully reduced, by the standard addition chain
    (254 squarings, 11 multiplies). Z2 = 0 gives 0, as RFC 7748 requires."""
    a.label("op_finish")
    a("push {r3, lr}")
    a("sub sp, sp, #8")  # [sp]: the squaring loop's counter
    s1, z9, z11, z5, z10, z20, z50, z100, t = A, B, C, D, AA, BB, E, DA, T
    sqn(a, s1, Z2, 1)  # z^2
    sqn(a, t, s1, 2)  # z^8
    call(a, "fe_mul", z9, t, Z2)  # z^9
    call(a, "fe_mul", z11, z9, s1)  # z^11
    sqn(a, t, z11, 1)
    call(a, "fe_mul", z5, t, z9)  # 2^5 - 1
    sqn(a, t, z5, 5)
    call(a, "fe_mul", z10, t, z5)  # 2^10 - 1
    sqn(a, t, z10, 10)
    call(a, "fe_mul", z20, t, z10)  # 2^20 - 1
    sqn(a, t, z20, 20)
    call(a, "fe_mul", t, t, z20)  # 2^40 - 1
    sqn(a, t, t, 10)
    call(a, "fe_mul", z50, t, z10)  # 2^50 - 1
    sqn(a, t, z50, 50)
    call(a, "fe_mul", z100, t, z50)  # 2^100 - 1
    sqn(a, t, z100, 100)
    call(a, "fe_mul", t, t, z100)  # 2^200 - 1
    sqn(a, t, t, 50)
    call(a, "fe_mul", t, t, z50)  # 2^250 - 1
    sqn(a, t, t, 5)
    call(a, "fe_mul", t, t, z11)  # 2^255 - 21 = p - 2
    call(a, "fe_mul", RES, X2, t)
    call(a, "fe_freeze", RES)
    a("add sp, sp, #8")
    a("pop {r3, pc}")


def source() -> str:
    """The assembly: entry(r0 = op, r1 = state, r2 = argument) at offset 0."""
    a = Asm()
    a.lines += [".syntax unified", ".arch armv7e-m", ".thumb", ".text", ".align 2",
                ".global entry", ".thumb_func"]
    a.label("entry")
    a("push {r4-r11, lr}")
    a(f"mov {BASE}, r1")
    for op, fn in ((OP_STEP, "op_step"), (OP_FINISH, "op_finish"), (OP_CSWAP, "cswap"),
                   (OP_LADDER, "op_ladder")):
        nxt = a.fresh("op")
        a(f"cmp r0, #{op}")
        a(f"bne {nxt}")
        a(f"bl {fn}")
        a("b .Ldone")
        a.label(nxt)
    a.label(".Ldone")
    a("mov r0, #0")
    a("pop {r4-r11, pc}")
    for gen in (op_ladder, op_step, op_finish, cswap, fe_add, fe_sub, fe_mul121665, fe_freeze,
                fe_sq, fe_mul):
        gen(a)
    return "\n".join(a.lines) + "\n"


def assemble(asm: str, cpu: str = "-march=armv7e-m") -> bytes:
    """Machine code of ``asm`` by arm-none-eabi-as (``cpu``: -march=armv7e-m, or
    -mcpu=cortex-m33 to check that the M33 takes the same encodings)."""
    if cpu != "-march=armv7e-m":  # the .arch directive would override the command line
        asm = asm.replace(".arch armv7e-m\n", "")
    return mcode.assemble(asm, cpu)


HEADER = '''\
# X25519 field arithmetic in ARMv7E-M machine code (Thumb-2 with UMAAL), for MicroPython on
# the Cortex-M4 (STM32F4) and M33 (RP2350). GENERATED by `python -m host_tools.emu
# gen-x25519` from host_tools/emu/x25519_v7m_gen.py (the assembly, and why it is machine
# code); do not edit.
#
# Data only, with the layout, op codes and trampoline of x25519_thumb (the ARMv6-M code):
# x25519.py imports this module instead where the core has UMAAL (docs/emulated.md), compiles
# TRAMPOLINE, copies CODE into a bytearray and drops this module, and calls
# run(code, op, state, arg).
# Ops: {op_ladder} = the whole ladder with the clamped scalar in slot K, {op_step} = cswap by
# the bit arg then one ladder step, {op_finish} = RES = X2 / Z2 mod p (fully reduced),
# {op_cswap} = cswap by arg only. The state buffer: STATE_SIZE bytes, 32-byte little-endian
# slots at these offsets.
'''


def render(code: bytes) -> str:
    return mcode.render(HEADER, code, LAYOUT)


def generate(out: Path = OUT) -> int:
    """Write the module; returns the machine code's size in bytes."""
    code = assemble(source())
    out.write_text(render(code))
    return len(code)


# --- a cycle estimate from the Cortex-M4's instruction timings --------------------------------

# Cycles per instruction, Cortex-M4 Technical Reference Manual (ARM DDI 0439B), section 3.3.1
# "Cortex-M4 instruction set summary", zero wait states: ALU, MUL, UMULL and UMAAL 1; LDR/STR 2,
# or 1 after another single load or store (pipelined); LDRD/STRD 3 (1 + N); LDM/STM/PUSH/POP
# 1 + N; a taken branch or BL 1 + P, with P (the pipeline refill, 1-3) taken as 3.
REFILL = 3
_SINGLE = ("ldr", "ldrb", "str")


def _cycles(op: str, args: str, prev: str) -> int:
    if op in _SINGLE:
        return 1 if prev in _SINGLE else 2
    if op in ("ldrd", "strd"):
        return 3
    if op in ("ldm", "stm", "push", "pop"):
        regs = args[args.index("{") + 1:args.index("}")]
        n = sum(int(r.split("-")[1][1:]) - int(r.split("-")[0][1:]) + 1 if "-" in r else 1
                for r in regs.replace(" ", "").split(","))
        return 1 + n + (REFILL if op == "pop" and "pc" in regs else 0)
    return 1


M4 = mcode.Timing(_cycles, bl=1 + REFILL, taken=1 + REFILL, not_taken=1, bx_lr=1 + REFILL)


def trace_counts(asm: str | None = None) -> tuple[int, int]:
    """(instructions, estimated M4 cycles) of one X25519's machine code: op 3 (the ladder) and
    op 1 (inversion and final reduction), entry and dispatch included, the trampoline not. A
    walk of the assembly's control flow, which depends only on public counters: calls,
    returns, and the loops on the counter kept at [sp] (op_ladder, the squaring loops)."""
    insns, cycles, _ = mcode.walk(asm or source(), (OP_LADDER, OP_FINISH), M4)
    return insns, cycles
