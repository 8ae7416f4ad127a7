"""Generate firmware/lib/x25519_thumb.py: the X25519 ladder, inversion and final reduction
in ARMv6-M machine code, for MicroPython on Cortex-M0+ (RP2040) and every later Cortex-M.

Why machine code in a bytes constant and not ``@micropython.asm_thumb`` source: mpy-cross
refuses an asm_thumb function for any target but ARM ("invalid arch"), so such a source file
would break the firmware's build for the virtual board (x64) and for bytecode-only images;
and the straight-line code below (about 3,400 instructions, 6.8 KB: multiply and squaring
fully unrolled, so that nothing branches on data) is far too large to compile on the device.
So the assembly is written here, assembled on the host by GNU as for ``-mcpu=cortex-m0plus``
(which rejects any instruction the M0+ lacks), and the module carries the bytes plus an
8-instruction ``@micropython.asm_thumb`` trampoline that it compiles with ``exec`` on Thumb
ports only.

Field elements are 8 words of 32 bits, little-endian, any value below 2^256 ("weakly
reduced", congruent mod p = 2^255 - 19) until the final, branch-free reduction. The M0+ has
only MULS (32 x 32 -> low 32 bits, one cycle on the RP2040), so:
- mul32: a 32 x 32 -> 64-bit product from four 16 x 16-bit MULS (17 cycles); sq32: a square
  from three (10 cycles);
- mul64 / sq64: 64 x 64 bits in registers by subtractive Karatsuba, three mul32 (sq32) and
  the middle word L + H +- |a1 - a0| |b0 - b1| (sign by mask);
- mul128 / sq128: the same over three mul64 (sq64), operands read in place (LDM through an
  address kept in r9/r10) or from the stack, products on the stack;
- fe_mul / fe_sq: the same once more over three mul128 (sq128): 27 mul32 (108 MULS) per
  multiply, 27 sq32 per squaring; then the fold of the 512-bit product with 2^256 = 38 and
  2^255 = 19 (mod p), whose last carry cannot leave the top word.
Additions and subtractions hold the 8 words in registers (r3-r6, r9-r12) and fold their carry
or borrow as 38 by a multiply or a mask; 121665 * E + AA is one pass over 16-bit limbs. The
ladder step does not swap the state: swapping exchanges A with C and B with D, which leaves
x3 and z3 the same, so only the doubling's inputs are chosen, by mask (op_step). Constant
time: the only branches are on the operation code and on public loop counters; choices are
masks; no address depends on data (tests_host/test_x25519_ct_trace.py runs the code under
unicorn and compares the traces of blocks and memory addresses over keys and points). The
products' stack frames (at most STACK_WIPE bytes below the entry's) are zeroed on return.

    python -m host_tools.emu gen-x25519     # rewrites firmware/lib/x25519_thumb.py
"""

from __future__ import annotations

from pathlib import Path

from host_tools.emu import mcode
from host_tools.emu.build import REPO

OUT = REPO / "firmware" / "lib" / "x25519_thumb.py"

# Slots of the state buffer (32 bytes each, word-aligned offsets).
X1, X2, Z2, X3, Z3 = 0, 32, 64, 96, 128
A, B, C, D, AA, BB, E, DA, CB, T = (160 + 32 * i for i in range(10))
P = 480  # 64-byte product scratch
K = 544  # the clamped scalar (op 3)
STATE_SIZE = 576
RES = A  # op 1 leaves X2 / Z2 here

OP_STEP, OP_FINISH, OP_CSWAP, OP_LADDER = 0, 1, 2, 3
LAYOUT = {"state_size": STATE_SIZE, "x1": X1, "x2": X2, "z2": Z2, "x3": X3, "z3": Z3,
          "res": RES, "k": K, "op_ladder": OP_LADDER, "op_step": OP_STEP,
          "op_finish": OP_FINISH, "op_cswap": OP_CSWAP}
# Bytes of stack the ops use below the entry's saved registers (op_ladder 16, op_step 8,
# fe_mul 144; checked by tests_host/test_x25519_ct_trace.py), wiped on return.
STACK_WIPE = 176


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
        """reg = state base (r8) + off."""
        self(f"mov {reg}, r8")
        while off > 0:
            step = min(off, 255)
            self(f"adds {reg}, #{step}")
            off -= step


def mul32(a: Asm, rl: str, rh: str, rb: str, rt: str, ru: str) -> None:
    """rh:rl = rl * rb (32 x 32 -> 64 bits) from four 16 x 16-bit MULS; rb, rt and ru are
    clobbered. 17 instructions, 17 cycles, no branch; leaves the carry flag clear."""
    a(f"lsrs {rt}, {rb}, #16")  # b_hi
    a(f"lsrs {rh}, {rl}, #16")  # a_hi
    a(f"muls {rh}, {rt}, {rh}")  # a_hi * b_hi
    a(f"uxth {rb}, {rb}")  # b_lo
    a(f"lsrs {ru}, {rl}, #16")  # a_hi
    a(f"uxth {rl}, {rl}")  # a_lo
    a(f"muls {rt}, {rl}, {rt}")  # a_lo * b_hi
    a(f"muls {ru}, {rb}, {ru}")  # a_hi * b_lo
    a(f"muls {rl}, {rb}, {rl}")  # a_lo * b_lo
    for mid in (rt, ru):  # the middle products, at bit 16
        a(f"lsrs {rb}, {mid}, #16")
        a(f"lsls {mid}, {mid}, #16")
        a(f"adds {rl}, {rl}, {mid}")
        a(f"adcs {rh}, {rb}")


# An operand: ("sp", byte offset) or (a high register holding its address, byte offset).
Src = tuple[str, int]


def load(a: Asm, regs: tuple[str, ...], src: Src, word: int) -> None:
    """regs (ascending) = the words word, word + 1, ... of src: LDR from the stack, or one LDM
    through the first of regs from an address held in a high register."""
    base, off = src
    off += 4 * word
    if base == "sp":
        for k, r in enumerate(regs):
            a(f"ldr {r}, [sp, #{off + 4 * k}]")
        return
    a(f"mov {regs[0]}, {base}")
    if off:
        a(f"adds {regs[0]}, #{off}")
    a(f"ldm {regs[0]}, {{{', '.join(regs)}}}")


def mul64(a: Asm, x0: str, x1: str, y0: str, y1: str, t: tuple[str, str, str, str]
          ) -> tuple[str, str, str, str]:
    """(x1:x0) * (y1:y0), all eight low registers in use (t: four scratch), by subtractive
    Karatsuba: L = x0 y0, H = x1 y1, M = |x1 - x0| |y0 - y1| (three 32x32 products) and the
    middle word L + H +- M. Returns the registers of the product's words, low first; r11 and
    r12 are clobbered."""
    t0, t1, t2, t3 = t
    a(f"subs {t0}, {x1}, {x0}")
    a(f"sbcs {t1}, {t1}")  # all ones when x1 < x0
    a(f"eors {t0}, {t1}")
    a(f"subs {t0}, {t0}, {t1}")
    a(f"subs {t2}, {y0}, {y1}")
    a(f"sbcs {t3}, {t3}")
    a(f"eors {t2}, {t3}")
    a(f"subs {t2}, {t2}, {t3}")
    a(f"eors {t1}, {t3}")  # s: all ones when (x1 - x0)(y0 - y1) < 0
    a(f"mov r11, {t1}")
    a(f"mov r12, {y1}")
    mul32(a, t0, t1, t2, t3, y1)  # M = t1:t0
    mul32(a, x0, t2, y0, t3, y1)  # L = t2:x0
    a(f"mov {y1}, r12")
    a(f"mov r12, {t1}")
    mul32(a, x1, y0, y1, t3, t1)  # H = y0:x1
    a(f"mov {t3}, r11")
    a(f"mov {t1}, r12")
    a(f"eors {t0}, {t3}")
    a(f"eors {t1}, {t3}")
    a(f"asrs {y1}, {t3}, #1")  # carry = s & 1: s M = (M xor s) + (s & 1), sign word s
    a(f"movs {y1}, #0")
    a(f"adcs {t0}, {x0}")
    a(f"adcs {t1}, {t2}")
    a(f"adcs {t3}, {y1}")
    a(f"adds {t0}, {t0}, {x1}")
    a(f"adcs {t1}, {y0}")
    a(f"adcs {t3}, {y1}")  # the middle word t3:t1:t0 = x0 y1 + x1 y0
    a(f"adds {t2}, {t2}, {t0}")
    a(f"adcs {x1}, {t1}")
    a(f"adcs {y0}, {t3}")
    return x0, t2, x1, y0


def mul128(a: Asm, out: int, xa: Src, xb: Src) -> None:
    """[sp + out] (8 words) = xa (4 words) * xb (4 words), by subtractive Karatsuba over
    mul64. Clobbers r0-r7, r11, r12, lr."""
    lo = ("r0", "r1", "r2", "r3")
    tmp = ("r4", "r5", "r6", "r7")
    for half in (0, 8):
        load(a, ("r0", "r1"), xa, half // 4)
        load(a, ("r2", "r3"), xb, half // 4)
        for k, r in enumerate(mul64(a, *lo, tmp)):
            a(f"str {r}, [sp, #{out + 2 * half + 4 * k}]")
    # |a23 - a01| -> r5:r4 (its mask to lr), |b01 - b23| -> r1:r0, s = the masks' xor -> lr
    load(a, ("r0", "r1"), xa, 0)
    load(a, ("r4", "r5"), xa, 2)
    a("subs r4, r4, r0")
    a("sbcs r5, r1")
    a("sbcs r6, r6")
    a("eors r4, r6")
    a("eors r5, r6")
    a("subs r4, r4, r6")
    a("sbcs r5, r6")
    a("mov lr, r6")
    load(a, ("r0", "r1", "r2", "r3"), xb, 0)
    a("subs r0, r0, r2")
    a("sbcs r1, r3")
    a("sbcs r6, r6")
    a("eors r0, r6")
    a("eors r1, r6")
    a("subs r0, r0, r6")
    a("sbcs r1, r6")
    a("mov r7, lr")
    a("eors r6, r7")
    a("mov lr, r6")
    m = mul64(a, "r4", "r5", "r0", "r1", ("r2", "r3", "r6", "r7"))
    assert m == ("r4", "r6", "r5", "r0")
    # out[2..7] += L + H + s M: the middle r7:r0:r5:r6:r4 first, then added in place.
    a("mov r7, lr")
    for r in m:
        a(f"eors {r}, r7")
    a("movs r2, #0")
    a("asrs r1, r7, #1")  # carry = s & 1
    for k, r in enumerate(m):
        a(f"ldr r1, [sp, #{out + 4 * k}]")
        a(f"adcs {r}, r1")
    a("adcs r7, r2")
    for k, r in enumerate(m):
        a(f"ldr r1, [sp, #{out + 16 + 4 * k}]")
        a(f"adds {r}, {r}, r1" if k == 0 else f"adcs {r}, r1")
    a("adcs r7, r2")
    for k, r in enumerate((*m, "r7", "r2")):
        a(f"ldr r1, [sp, #{out + 8 + 4 * k}]")
        a(f"adds r1, r1, {r}" if k == 0 else f"adcs r1, {r}")
        a(f"str r1, [sp, #{out + 8 + 4 * k}]")


def combine256(a: Asm, r_off: int, m_off: int) -> None:
    """The Karatsuba middle of a 512-bit product: R[4..15] += L + H + s M, where R (16 words
    at sp + r_off) holds L = R[0..7] and H = R[8..15], M is 8 words at sp + m_off (clobbered)
    and r4 holds s (0 or all ones: the sign of the middle product). Clobbers r0-r7."""
    # R[4..15] += L + H + s M, with s M = (M xor s) + (s & 1) - (s & 1) 2^256 (two's
    # complement): one pass over the 8 middle words, a 64-bit accumulator r6:r5. L[4 + w] is
    # R[4 + w], overwritten at step w < 4: it is kept in M's slot w (already read) for step
    # w + 4. The true sum is not negative, so the final carry word, less (s & 1), is not.
    a("movs r7, #0")
    a("rsbs r5, r4, #0")  # s & 1
    a("movs r6, #0")
    lo, hi = "r5", "r6"  # the accumulator; the two registers swap roles word by word
    for w in range(8):
        a(f"ldr r0, [sp, #{m_off + 4 * w}]")
        a("eors r0, r4")
        a(f"adds {lo}, {lo}, r0")
        a(f"adcs {hi}, r7")
        for src in (r_off + 4 * w if w < 4 else m_off + 4 * (w - 4), r_off + 32 + 4 * w,
                    r_off + 16 + 4 * w):
            a(f"ldr r0, [sp, #{src}]")
            a(f"adds {lo}, {lo}, r0")
            a(f"adcs {hi}, r7")
        if w < 4:
            a(f"str r0, [sp, #{m_off + 4 * w}]")  # L[4 + w]
        a(f"str {lo}, [sp, #{r_off + 16 + 4 * w}]")
        a(f"movs {lo}, #0")
        lo, hi = hi, lo
    a(f"adds {lo}, {lo}, r4")  # - (s & 1)
    a(f"ldr r0, [sp, #{r_off + 48}]")
    a(f"adds r0, r0, {lo}")
    a(f"str r0, [sp, #{r_off + 48}]")
    for w in (13, 14, 15):
        a(f"ldr r0, [sp, #{r_off + 4 * w}]")
        a("adcs r0, r7")
        a(f"str r0, [sp, #{r_off + 4 * w}]")


def fold512(a: Asm, lo: int, dst_at: int) -> None:
    """[dst] = R mod p below 2^256, where R is 16 words at sp + lo and dst's address is at
    [sp + dst_at]: R_lo + 38 * R_hi word by word (38 * R_hi[w] from two 16 x 6-bit MULS, the
    incoming carry added to the low one, which cannot overflow), then what stands at and above
    bit 255, e < 2^8, folded as 19 * e into the value below 2^255, which cannot carry out of
    the top word. Clobbers r0-r7."""
    a("movs r6, #38")
    a("movs r7, #0")  # zero
    a(f"ldr r5, [sp, #{dst_at}]")
    a("movs r3, #0")
    for w in range(8):
        cin, hi = ("r3", "r1") if w % 2 == 0 else ("r1", "r3")
        a(f"ldr r0, [sp, #{lo + 32 + 4 * w}]")
        a(f"lsrs {hi}, r0, #16")
        a("uxth r0, r0")
        a("muls r0, r6, r0")
        a(f"adds r0, r0, {cin}")  # < 2^22 + 2^7
        a(f"muls {hi}, r6, {hi}")
        a(f"lsls r2, {hi}, #16")
        a(f"lsrs {hi}, {hi}, #16")
        a("adds r0, r0, r2")
        a(f"adcs {hi}, r7")  # hi:r0 = 38 R_hi[w] + carry
        a(f"ldr r2, [sp, #{lo + 4 * w}]")
        a("adds r2, r2, r0")
        a(f"adcs {hi}, r7")  # the carry into the next word (< 2^7)
        if w == 7:
            a(f"lsls {hi}, {hi}, #1")
            a("lsrs r0, r2, #31")
            a(f"orrs {hi}, r0")  # e = the value's bits 255 and up
            a("lsls r2, r2, #1")
            a("lsrs r2, r2, #1")
            a("movs r0, #19")
            a(f"muls {hi}, r0, {hi}")
        a(f"str r2, [r5, #{4 * w}]")
    a("mov r2, r5")
    a("ldm r5!, {r0, r1, r4}")
    a("adds r0, r0, r3")
    a("adcs r1, r7")
    a("adcs r4, r7")
    a("stm r2!, {r0, r1, r4}")
    a("ldm r5!, {r0, r1, r3, r4}")
    for r in ("r0", "r1", "r3", "r4"):
        a(f"adcs {r}, r7")
    a("stm r2!, {r0, r1, r3, r4}")
    a("ldr r0, [r5]")
    a("adcs r0, r7")
    a("str r0, [r5]")


MUL_FRAME = 136  # R (16 words), |a1 - a0|, |b0 - b1|, M (8 words), s, padding
MR, MDA, MDB, MM, MS = 0, 64, 80, 96, 128


def fe_mul(a: Asm) -> None:
    """fe_mul: r0 = dst, r1 = a, r2 = b (state pointers); dst = a * b mod p (< 2^256); dst
    may be a or b (written last, by the fold). Subtractive Karatsuba over 128-bit halves, each
    by mul128: L = a0 b0, H = a1 b1 and M = |a1 - a0| |b0 - b1| with its sign s, then
    R = L + 2^128 (L + H + s M) + 2^256 H on the stack and the fold. Clobbers r0-r7, r9-r12
    (r9 and r10 hold the operands' addresses)."""
    a.label("fe_mul")
    a("push {r0, lr}")
    a(f"sub sp, #{MUL_FRAME}")
    a("mov r9, r1")
    a("mov r10, r2")
    mul128(a, MR, ("r9", 0), ("r10", 0))
    mul128(a, MR + 32, ("r9", 16), ("r10", 16))
    # |a1 - a0| with its sign mask (all ones when a1 < a0), then |b1 - b0| and its mask.
    for ptr, dst, first in (("r9", MDA, True), ("r10", MDB, False)):
        a(f"mov r7, {ptr}")
        a("ldm r7!, {r0, r1, r2, r3}")
        a("ldm r7, {r4, r5, r6, r7}")
        a("subs r4, r4, r0")
        a("sbcs r5, r1")
        a("sbcs r6, r2")
        a("sbcs r7, r3")
        a("sbcs r0, r0")  # 0 or all ones
        for r in ("r4", "r5", "r6", "r7"):
            a(f"eors {r}, r0")
        a("subs r4, r4, r0")
        a("sbcs r5, r0")
        a("sbcs r6, r0")
        a("sbcs r7, r0")
        a(f"add r1, sp, #{dst}")
        a("stm r1!, {r4, r5, r6, r7}")
        if first:
            a("mov r12, r0")
        else:
            # s: all ones when (a1 - a0)(b0 - b1) < 0, that is when the masks are equal (if
            # b0 = b1 the product is 0 and s does not matter)
            a("mov r1, r12")
            a("eors r0, r1")
            a("mvns r0, r0")
    a(f"str r0, [sp, #{MS}]")
    mul128(a, MM, ("sp", MDA), ("sp", MDB))
    a(f"ldr r4, [sp, #{MS}]")  # s
    combine256(a, MR, MM)
    fold512(a, MR, MUL_FRAME)
    a(f"add sp, #{MUL_FRAME + 4}")
    a("pop {pc}")


SQ_FRAME = 112  # R (16 words), |a1 - a0| (4 words), M (8 words)
SR, SDA, SM = 0, 64, 80


def sq32(a: Asm, rl: str, rh: str, rx: str, rt: str) -> None:
    """rh:rl = rx^2 from three 16 x 16-bit MULS; rx and rt are clobbered. 10 cycles."""
    a(f"uxth {rl}, {rx}")
    a(f"lsrs {rh}, {rx}, #16")
    a(f"movs {rt}, {rl}")
    a(f"muls {rt}, {rh}, {rt}")  # lo * hi
    a(f"muls {rl}, {rl}, {rl}")
    a(f"muls {rh}, {rh}, {rh}")
    a(f"lsls {rx}, {rt}, #17")  # 2 lo hi, at bit 16
    a(f"lsrs {rt}, {rt}, #15")
    a(f"adds {rl}, {rl}, {rx}")
    a(f"adcs {rh}, {rt}")


def sq64(a: Asm, x0: str, x1: str, f: tuple[str, str, str, str, str, str]
         ) -> tuple[str, str, str, str]:
    """(x1:x0)^2, all eight low registers in use (f: six scratch): L = x0^2, H = x1^2,
    D = (x0 - x1)^2 (three squares of 32 bits) and the middle word L + H - D = 2 x0 x1.
    Returns the registers of the square's words, low first."""
    d, f1, f2, f3, f4, f5 = f
    a(f"subs {d}, {x0}, {x1}")
    a(f"sbcs {f1}, {f1}")
    a(f"eors {d}, {f1}")
    a(f"subs {d}, {d}, {f1}")  # |x0 - x1|
    sq32(a, f1, f2, d, f3)  # D = f2:f1
    sq32(a, d, f3, x0, f4)  # L = f3:d
    sq32(a, x0, f4, x1, f5)  # H = f4:x0
    a(f"subs {f1}, {f1}, {d}")
    a(f"sbcs {f2}, {f3}")
    a(f"sbcs {f5}, {f5}")  # f5:f2:f1 = D - L (signed)
    a(f"subs {f1}, {x0}, {f1}")
    a(f"mov {x1}, {f4}")
    a(f"sbcs {x1}, {f2}")
    a(f"movs {f2}, #0")
    a(f"sbcs {f2}, {f5}")  # f2:x1:f1 = H - (D - L) = 2 x0 x1
    a(f"adds {f3}, {f3}, {f1}")
    a(f"adcs {x0}, {x1}")
    a(f"adcs {f4}, {f2}")
    return d, f3, x0, f4


def sq128(a: Asm, out: int, xa: Src) -> None:
    """[sp + out] (8 words) = xa (4 words)^2, by Karatsuba over sq64: a0^2, a1^2 and
    (a0 - a1)^2. Clobbers r0-r7."""
    for half in (0, 8):
        load(a, ("r0", "r1"), xa, half // 4)
        for k, r in enumerate(sq64(a, "r0", "r1", ("r2", "r3", "r4", "r5", "r6", "r7"))):
            a(f"str {r}, [sp, #{out + 2 * half + 4 * k}]")
    load(a, ("r0", "r1", "r2", "r3"), xa, 0)
    a("subs r0, r0, r2")
    a("sbcs r1, r3")
    a("sbcs r2, r2")
    a("eors r0, r2")
    a("eors r1, r2")
    a("subs r0, r0, r2")
    a("sbcs r1, r2")
    m = sq64(a, "r0", "r1", ("r2", "r3", "r4", "r5", "r6", "r7"))
    # the middle L + H - D = L + H + (D xor ~0) + 1 - 2^128, sign word r7 (all ones)
    free = [r for r in ("r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7") if r not in m]
    z, t, ones = free[0], free[1], free[2]
    a(f"movs {z}, #0")
    a(f"mvns {ones}, {z}")
    for r in m:
        a(f"eors {r}, {ones}")
    a(f"cmp {z}, {z}")  # carry = 1
    for k, r in enumerate(m):
        a(f"ldr {t}, [sp, #{out + 4 * k}]")
        a(f"adcs {r}, {t}")
    a(f"adcs {ones}, {z}")
    for k, r in enumerate(m):
        a(f"ldr {t}, [sp, #{out + 16 + 4 * k}]")
        a(f"adds {r}, {r}, {t}" if k == 0 else f"adcs {r}, {t}")
    a(f"adcs {ones}, {z}")
    for k, r in enumerate((*m, ones, z)):
        a(f"ldr {t}, [sp, #{out + 8 + 4 * k}]")
        a(f"adds {t}, {t}, {r}" if k == 0 else f"adcs {t}, {r}")
        a(f"str {t}, [sp, #{out + 8 + 4 * k}]")


def fe_sq(a: Asm) -> None:
    """fe_sq: r0 = dst, r1 = a; dst = a^2 mod p. Karatsuba over 128-bit halves: a0^2, a1^2
    and (a1 - a0)^2 by sq128, the middle L + H - D, then the fold. Clobbers r0-r7 and r9 (the
    operand's address)."""
    a.label("fe_sq")
    a("push {r0, lr}")
    a(f"sub sp, #{SQ_FRAME}")
    a("mov r9, r1")
    sq128(a, SR, ("r9", 0))
    sq128(a, SR + 32, ("r9", 16))
    a("mov r7, r9")
    a("ldm r7!, {r0, r1, r2, r3}")
    a("ldm r7, {r4, r5, r6, r7}")
    a("subs r4, r4, r0")
    a("sbcs r5, r1")
    a("sbcs r6, r2")
    a("sbcs r7, r3")
    a("sbcs r0, r0")
    for r in ("r4", "r5", "r6", "r7"):
        a(f"eors {r}, r0")
    a("subs r4, r4, r0")
    a("sbcs r5, r0")
    a("sbcs r6, r0")
    a("sbcs r7, r0")
    a(f"add r1, sp, #{SDA}")
    a("stm r1!, {r4, r5, r6, r7}")
    sq128(a, SM, ("sp", SDA))
    a("movs r4, #0")
    a("mvns r4, r4")  # s = all ones: the middle is L + H - D
    combine256(a, SR, SM)
    fold512(a, SR, SQ_FRAME)
    a(f"add sp, #{SQ_FRAME + 4}")
    a("pop {pc}")


def _fold_words(a: Asm, dst: str, add: str, k38: str, zero: str) -> None:
    """dst (8 words) += add * 38 with the carry chain; a carry out adds 38 once more (it cannot
    carry again: after a wrap the value is below 38 * 2^7). Needs k38 = 38, zero = 0;
    clobbers r4, r5 and add."""
    a(f"muls {add}, {k38}, {add}")
    a(f"ldr r4, [{dst}, #0]")
    a(f"adds r4, r4, {add}")
    a(f"str r4, [{dst}, #0]")
    for w in range(1, 8):
        a(f"ldr r4, [{dst}, #{4 * w}]")
        a(f"adcs r4, {zero}")
        a(f"str r4, [{dst}, #{4 * w}]")
    a(f"movs {add}, #0")
    a(f"adcs {add}, {zero}")
    a(f"muls {add}, {k38}, {add}")
    a(f"ldr r4, [{dst}, #0]")
    a(f"adds r4, r4, {add}")
    a(f"str r4, [{dst}, #0]")


def _addsub(a: Asm, name: str, sub: bool) -> None:
    """fe_add / fe_sub: r0 = dst, r1 = a, r2 = b; dst = a +- b mod p (< 2^256); dst may be
    a or b (everything is read first). The 8 words of a +- b are held in r9-r12 and r3-r6; a
    carry out (a borrow) means the value is 2^256 too large (small), so 38 is added
    (taken off), and once more when that carries (borrows) again, which cannot go further.
    Clobbers r0-r7, r9-r12."""
    op0, op = ("subs", "sbcs") if sub else ("adds", "adcs")
    a.label(name)
    for g, high in enumerate((("r9", "r10"), ("r11", "r12"), None)):
        a("ldm r1!, {r3, r4}")
        a("ldm r2!, {r5, r6}")
        a(f"{op0} r3, r3, r5" if g == 0 else f"{op} r3, r5")
        a(f"{op} r4, r6")
        if high:
            a(f"mov {high[0]}, r3")
            a(f"mov {high[1]}, r4")
    a("ldm r1!, {r5, r6}")
    a("ldm r2!, {r1, r7}")
    a(f"{op} r5, r1")
    a(f"{op} r6, r7")

    def k38() -> None:  # r1 = 38 if the chain carried (borrowed), else 0
        if sub:
            a("sbcs r1, r1")  # all ones on a borrow
            a("movs r2, #38")
            a("ands r1, r2")
        else:
            a("movs r1, #0")
            a("adcs r1, r1")
            a("movs r2, #38")
            a("muls r1, r2, r1")

    k38()
    a("movs r7, #0")
    a("mov r2, r9")
    a(f"{op0} r1, r2, r1")
    a("mov r2, r10")
    a(f"{op} r2, r7")
    a("stm r0!, {r1, r2}")
    a("mov r1, r11")
    a(f"{op} r1, r7")
    a("mov r2, r12")
    a(f"{op} r2, r7")
    a("stm r0!, {r1, r2}")
    for r in ("r3", "r4", "r5", "r6"):
        a(f"{op} {r}, r7")
    a("stm r0!, {r3, r4, r5, r6}")
    k38()
    a("subs r0, #32")
    a("ldr r2, [r0]")
    a(f"{op0} r2, r2, r1")
    a("str r2, [r0]")
    a("bx lr")


def fe_add(a: Asm) -> None:
    _addsub(a, "fe_add", sub=False)


def fe_sub(a: Asm) -> None:
    _addsub(a, "fe_sub", sub=True)


def fe_mul121665_add(a: Asm) -> None:
    """fe_mul121665_add: r0 = dst, r1 = a, r2 = b; dst = b + 121665 * a mod p (< 2^256).
    121665 = 2^16 + 56129, so 16-bit limb i of the sum is a_i * 56129 + a_(i-1) + b_i + carry
    (< 2^32); a_(i-1) and a_i take turns in r4 and r5. Clobbers r1-r7."""
    a.label("fe_mul121665_add")
    a("movs r3, #219")
    a("lsls r3, r3, #8")
    a("adds r3, #65")  # 0xDB41 = 56129
    a("movs r6, #0")  # carry
    a("movs r5, #0")  # a_(-1)
    for i in range(16):
        cur, prev = ("r4", "r5") if i % 2 == 0 else ("r5", "r4")
        a(f"ldrh {cur}, [r1, #{2 * i}]")
        a(f"mov r7, {cur}")
        a("muls r7, r3, r7")
        a(f"adds r7, r7, {prev}")
        a("adds r7, r7, r6")
        a(f"ldrh r6, [r2, #{2 * i}]")
        a("adds r7, r7, r6")
        a(f"strh r7, [r0, #{2 * i}]")
        a("lsrs r6, r7, #16")
    a("adds r6, r6, r5")  # the part at 2^256 (< 2^17): the carry and a_15
    a("movs r2, #38")
    a("movs r1, #0")
    _fold_words(a, "r0", "r6", "r2", "r1")
    a("bx lr")


def fe_select(a: Asm) -> None:
    """fe_select: r0 = dst, r1 = a, r2 = b, r3 = mask (0 or all ones); dst = a where the mask
    is 0, b where it is all ones: a ^ ((a ^ b) & mask) on every word. Clobbers r0-r2, r4-r7."""
    a.label("fe_select")
    for _ in range(4):
        a("ldm r1!, {r4, r5}")
        a("ldm r2!, {r6, r7}")
        a("eors r6, r4")
        a("ands r6, r3")
        a("eors r4, r6")
        a("eors r7, r5")
        a("ands r7, r3")
        a("eors r5, r7")
        a("stm r0!, {r4, r5}")
    a("bx lr")


def cswap(a: Asm) -> None:
    """cswap: r2 = 0 or 1 (the swap bit); swaps (X2, Z2) with (X3, Z3) by masking. Clobbers
    r0-r5."""
    a.label("cswap")
    a("rsbs r2, r2, #0")  # mask: 0 or all ones
    a.ptr("r0", X2)
    for w in range(8):
        for p, q in ((X2 - X2, X3 - X2), (Z2 - X2, Z3 - X2)):
            a(f"ldr r3, [r0, #{p + 4 * w}]")
            a(f"ldr r4, [r0, #{q + 4 * w}]")
            a("mov r5, r3")
            a("eors r5, r4")
            a("ands r5, r2")
            a("eors r3, r5")
            a("eors r4, r5")
            a(f"str r3, [r0, #{p + 4 * w}]")
            a(f"str r4, [r0, #{q + 4 * w}]")
    a("bx lr")


def fe_freeze(a: Asm) -> None:
    """fe_freeze: r0 = x (< 2^256); x = x mod p, fully reduced, without a branch: two folds of
    bit 255 (x < 2^255 after them), then t = x + 19 and, by mask, x = t - 2^255 when t has
    bit 255 set (that is, when x >= p). t goes through the P slot. Clobbers r1-r7."""
    a.label("fe_freeze")
    a("movs r1, #0")
    a("movs r5, #19")
    for _ in range(2):
        a("ldr r3, [r0, #28]")
        a("lsrs r4, r3, #31")
        a("lsls r3, r3, #1")
        a("lsrs r3, r3, #1")
        a("str r3, [r0, #28]")
        a("muls r4, r5, r4")
        a("ldr r3, [r0, #0]")
        a("adds r3, r3, r4")
        a("str r3, [r0, #0]")
        for w in range(1, 8):
            a(f"ldr r3, [r0, #{4 * w}]")
            a("adcs r3, r1")
            a(f"str r3, [r0, #{4 * w}]")
    a.ptr("r2", P)
    a("ldr r3, [r0, #0]")
    a("adds r3, r3, r5")
    a("str r3, [r2, #0]")
    for w in range(1, 8):
        a(f"ldr r3, [r0, #{4 * w}]")
        a("adcs r3, r1")
        a(f"str r3, [r2, #{4 * w}]")
    a("ldr r3, [r2, #28]")
    a("lsrs r6, r3, #31")
    a("rsbs r6, r6, #0")  # mask: all ones when x >= p
    a("lsls r3, r3, #1")
    a("lsrs r3, r3, #1")
    a("str r3, [r2, #28]")
    for w in range(8):
        a(f"ldr r3, [r0, #{4 * w}]")
        a(f"ldr r4, [r2, #{4 * w}]")
        a("eors r4, r3")
        a("ands r4, r6")
        a("eors r3, r4")
        a(f"str r3, [r0, #{4 * w}]")
    a("bx lr")


def call(a: Asm, fn: str, *slots: int) -> None:
    for reg, off in zip(("r0", "r1", "r2"), slots, strict=False):
        a.ptr(reg, off)
    a(f"bl {fn}")


def op_step(a: Asm) -> None:
    """One Montgomery ladder step (RFC 7748 section 5) with the conditional swap by r2 (0 or
    1) folded in. RFC 7748 swaps (x2, z2) with (x3, z3) and then computes A, B from x2, z2 and
    C, D from x3, z3; swapping exchanges A with C and B with D, so DA with CB, and the new
    x3 = (DA + CB)^2 and z3 = x1 (DA - CB)^2 are the same either way (mod p). Only the
    doubling's inputs change: AA and BB are made from A, B or from C, D, chosen by mask
    (fe_select). The state after the step is the RFC's, with half the swap's memory traffic."""
    a.label("op_step")
    a.label("op_step_body")
    a("rsbs r2, r2, #0")  # the mask: 0 or all ones
    a("push {r2, lr}")
    call(a, "fe_add", A, X2, Z2)
    call(a, "fe_sub", B, X2, Z2)
    call(a, "fe_add", C, X3, Z3)
    call(a, "fe_sub", D, X3, Z3)
    call(a, "fe_mul", DA, D, A)
    call(a, "fe_mul", CB, C, B)
    for dst, x, y in ((AA, A, C), (BB, B, D)):
        a("ldr r3, [sp]")
        call(a, "fe_select", dst, x, y)
    call(a, "fe_sq", AA, AA)
    call(a, "fe_sq", BB, BB)
    call(a, "fe_add", X3, DA, CB)
    call(a, "fe_sq", X3, X3)
    call(a, "fe_sub", Z3, DA, CB)
    call(a, "fe_sq", Z3, Z3)
    call(a, "fe_mul", Z3, X1, Z3)
    call(a, "fe_mul", X2, AA, BB)
    call(a, "fe_sub", E, AA, BB)
    call(a, "fe_mul121665_add", T, E, AA)
    call(a, "fe_mul", Z2, E, T)
    a("pop {r2, pc}")


def op_ladder(a: Asm) -> None:
    """The whole ladder: for t = 254 .. 0, kt = bit t of the scalar in slot K, swap ^= kt,
    cswap and step, swap = kt; then the last cswap. The loop counter t (public) lives at [sp],
    swap at [sp + 4]. The only key-dependent values are data: the byte load's address depends
    on t alone."""
    a.label("op_ladder")
    a("push {lr}")
    a("sub sp, #12")
    a("movs r4, #254")
    a("str r4, [sp]")
    a("movs r4, #0")
    a("str r4, [sp, #4]")
    a.label(".Lladder")
    a("ldr r4, [sp]")
    a("lsrs r5, r4, #3")
    a.ptr("r6", K)
    a("ldrb r5, [r6, r5]")
    a("movs r6, #7")
    a("ands r6, r4")
    a("lsrs r5, r6")
    a("movs r6, #1")
    a("ands r5, r6")  # kt
    a("ldr r2, [sp, #4]")
    a("eors r2, r5")  # swap ^ kt
    a("str r5, [sp, #4]")
    a("bl op_step_body")
    a("ldr r4, [sp]")
    a("subs r4, #1")
    a("str r4, [sp]")
    a("bpl .Lladder")
    a("ldr r2, [sp, #4]")
    a("bl cswap")
    a("add sp, #12")
    a("pop {pc}")


def sqn(a: Asm, dst: int, src: int, n: int) -> None:
    """dst = src^(2^n): one squaring from src, then n - 1 in place (a loop on the public n,
    its counter at [sp], in op_finish's frame)."""
    call(a, "fe_sq", dst, src)
    if n == 1:
        return
    loop = a.fresh("sq")
    a(f"movs r4, #{n - 1}")
    a("str r4, [sp]")
    a.label(loop)
    call(a, "fe_sq", dst, dst)
    a("ldr r4, [sp]")
    a("subs r4, #1")
    a("str r4, [sp]")
    a(f"bne {loop}")


def op_finish(a: Asm) -> None:
    """RES = X2 / Z2 = X2 * Z2^(p-2) mod p, fully reduced, by the standard addition chain
    (254 squarings, 11 multiplies). Z2 = 0 gives 0, as RFC 7748 requires."""
    a.label("op_finish")
    a("push {lr}")
    a("sub sp, #12")
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
    a("add sp, #12")
    a("pop {pc}")


def source() -> str:
    """The assembly: entry(r0 = op, r1 = state, r2 = argument) at offset 0."""
    a = Asm()
    a.lines += [".syntax unified", ".cpu cortex-m0plus", ".thumb", ".text", ".align 2",
                ".global entry", ".thumb_func"]
    a.label("entry")
    a("push {r4-r7, lr}")
    a("mov r4, r8")
    a("mov r5, r9")
    a("mov r6, r10")
    a("mov r7, r11")
    a("push {r4-r7}")
    a("mov r8, r1")
    for op, fn in ((OP_STEP, "op_step"), (OP_FINISH, "op_finish"), (OP_CSWAP, "cswap"),
                   (OP_LADDER, "op_ladder")):
        nxt = a.fresh("op")
        a(f"cmp r0, #{op}")
        a(f"bne {nxt}")
        a(f"bl {fn}")
        a("b .Ldone")
        a.label(nxt)
    a.label(".Ldone")
    # The products' frames below (at most STACK_DEPTH bytes) held secret intermediate values:
    # zero them before returning, as x25519.py wipes the state buffer.
    for r in ("r0", "r1", "r2", "r3"):
        a(f"movs {r}, #0")
    a("mov r4, sp")
    a(f"subs r4, #{STACK_WIPE}")
    for _ in range(STACK_WIPE // 16):
        a("stm r4!, {r0, r1, r2, r3}")
    a("pop {r4-r7}")
    a("mov r8, r4")
    a("mov r9, r5")
    a("mov r10, r6")
    a("mov r11, r7")
    a("movs r0, #0")
    a("pop {r4-r7, pc}")
    for gen in (op_ladder, op_step, op_finish, cswap, fe_select, fe_add, fe_sub,
                fe_mul121665_add, fe_freeze, fe_sq, fe_mul):
        gen(a)
    return "\n".join(a.lines) + "\n"


def _m0plus_cycles(op: str, args: str, _prev: str) -> int:
    """Cortex-M0+ cycles of one instruction, not a branch (its technical reference manual,
    3.3: loads and stores 2, LDM/STM/PUSH 1 + N, POP with PC 3 + N, MULS 1 on the RP2040's
    single-cycle multiplier, the rest 1)."""
    if op in ("ldr", "str", "ldrh", "strh", "ldrb", "strb"):
        return 2
    if op in ("ldm", "stm", "push", "pop"):
        n = len(args[args.index("{") + 1:args.index("}")].split(","))
        return 1 + n + (2 if op == "pop" and "pc" in args else 0)
    return 1


M0PLUS = mcode.Timing(_m0plus_cycles, bl=3, taken=2, not_taken=1, bx_lr=3)


def trace_counts(asm: str | None = None) -> tuple[int, int, dict[str, int]]:
    """(instructions, estimated Cortex-M0+ cycles, cycles per routine) of one X25519's
    machine code: op 3 (the ladder) and op 1 (inversion and final reduction), entry and
    dispatch included, the trampoline not. A walk of the assembly's control flow, which
    depends only on public counters: calls, returns, and the loops on the counter kept at
    [sp] (op_ladder, the squaring loops). Branches: B and a taken conditional branch 2
    cycles, not taken 1, BL 3, BX 3 (tests_host/test_x25519_ct_trace.py checks the
    instruction count against the emulator's; docs/BENCH.md the cycles against rp2040js)."""
    return mcode.walk(asm or source(), (OP_LADDER, OP_FINISH), M0PLUS)


def assemble(asm: str) -> bytes:
    """Machine code of ``asm``, by arm-none-eabi-as for the Cortex-M0+."""
    return mcode.assemble(asm, "-mcpu=cortex-m0plus")


HEADER = '''\
# X25519 field arithmetic in ARMv6-M machine code, for MicroPython on Cortex-M0+ (RP2040)
# and every later Cortex-M. GENERATED by `python -m host_tools.emu gen-x25519` from
# host_tools/emu/x25519_gen.py (the assembly, and why it is machine code); do not edit.
#
# Data only: x25519.py imports it on Thumb ports alone, compiles TRAMPOLINE (an 8-instruction
# @micropython.asm_thumb function, kept in a string so that this file stays valid Python for
# every target mpy-cross builds for), copies CODE into a bytearray (aligned, in RAM) and
# drops this module, and calls run(code, op, state, arg).
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
