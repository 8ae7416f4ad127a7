"""The ARMv6-M X25519 machine code (firmware/lib/x25519_thumb.py) is constant time in the
strict sense: run under an instruction-level emulator (PyPI `unicorn`, a Cortex-M in Thumb
mode), the whole X25519 (op 3: the 255 ladder steps; op 1: the inversion and the final
reduction) executes the same sequence of basic blocks (their addresses) and reads and writes
the same sequence of memory addresses, of the same sizes, for scalars and points that differ
in every way a data-dependent branch, early exit or table index would show: all-zero and
all-one scalars (after clamping), u = 0, 1, p - 1, 2^255 - 1 and all-ones (non-canonical),
random ones. The traces are compared whole (about 20,000 translation blocks and 0.69 M memory
accesses per X25519), as SHA-256 digests.

That this test can fail: test_a_swap_that_branches_on_the_bit_is_caught assembles a variant
whose ladder step picks the doubling's inputs by a branch on the swap bit (the classic leak)
and checks that both traces then differ between keys; test_no_secret_left_on_the_stack
checks the zeroing of the stack the code used. The emulated results are also checked against the
RFC 7748 vectors and the firmware's Python ladder, so the traces are those of a correct run,
and all 518 Wycheproof vectors run here too (without the trace hooks: about 12 s of CPU)."""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Iterable

import pytest
import x25519
import x25519_thumb

from host_tools.emu import x25519_gen

from .test_crypto_cpython import X25519_ITERATED, X25519_VECTORS
from .test_emulated import needs_toolchain
from .test_x25519_v7m import wycheproof

unicorn = pytest.importorskip("unicorn")
from unicorn import arm_const  # noqa: E402

CODE_AT, RAM_AT, STATE_AT, STACK_TOP, RETURN_AT = (0x10000000, 0x20000000, 0x20001000,
                                                   0x20008000, 0x10100000)
P = 2**255 - 19


_CPUS: dict[bytes, unicorn.Uc] = {}


def _cpu(code: bytes) -> unicorn.Uc:
    """One emulated core per machine code, reused (its translations cached): the code at
    CODE_AT, RAM with the state and the stack; every run rewrites the state and registers."""
    if code not in _CPUS:
        uc = unicorn.Uc(unicorn.UC_ARCH_ARM, unicorn.UC_MODE_THUMB | unicorn.UC_MODE_MCLASS)
        uc.mem_map(CODE_AT, 0x200000)
        uc.mem_map(RAM_AT, 0x10000)
        uc.mem_write(CODE_AT, code)
        uc.mem_write(RETURN_AT, b"\x00\xbf" * 4)  # NOPs where the code returns to
        _CPUS[code] = uc
    return _CPUS[code]


def run(code: bytes, k: bytes, u: bytes, trace: bool = False,
        block_sizes: list[tuple[int, int]] | None = None) -> tuple[bytes, str, str]:
    """X25519(k, u) by the machine code, as firmware/lib/x25519.py drives it (the clamped
    scalar and the state layout in the state buffer, op 3 then op 1, entry at offset 0 with
    r0 = op, r1 = the state, r2 = 0). Returns the result and, with trace, the SHA-256 of the
    executed blocks' addresses and of the memory accesses (address, size, read or write);
    block_sizes, if given, receives (address, bytes) of every executed block."""
    kc = bytearray(k)
    kc[0] &= 248
    kc[31] = (kc[31] & 127) | 64
    st = bytearray(x25519_thumb.STATE_SIZE)
    x1, x2, z3, x3 = x25519_thumb.X1, x25519_thumb.X2, x25519_thumb.Z3, x25519_thumb.X3
    st[x1:x1 + 32] = u
    st[x1 + 31] &= 127
    st[x2] = 1
    st[x3:x3 + 32] = st[x1:x1 + 32]
    st[z3] = 1
    st[x25519_thumb.K:x25519_thumb.K + 32] = kc
    uc = _cpu(code)
    uc.mem_write(RAM_AT, bytes(STACK_TOP - RAM_AT))  # the stack of an earlier run too
    uc.mem_write(STATE_AT, bytes(st))
    blocks: list[int] = []
    accesses: list[int] = []
    hooks = []
    if block_sizes is not None:
        hooks.append(uc.hook_add(unicorn.UC_HOOK_BLOCK, lambda _uc, addr, size, _d:
                                 block_sizes.append((addr, size))))
    if trace:
        hooks += [uc.hook_add(unicorn.UC_HOOK_BLOCK,
                             lambda _uc, addr, _size, _d: blocks.append(addr)),
                 uc.hook_add(unicorn.UC_HOOK_MEM_READ | unicorn.UC_HOOK_MEM_WRITE,
                             lambda _uc, kind, addr, size, _v, _d: accesses.append(
                                 (addr << 8) | (size << 1) | (kind == unicorn.UC_MEM_WRITE)))]
    try:
        for op in (x25519_thumb.OP_LADDER, x25519_thumb.OP_FINISH):
            uc.reg_write(arm_const.UC_ARM_REG_SP, STACK_TOP)
            uc.reg_write(arm_const.UC_ARM_REG_LR, RETURN_AT | 1)
            uc.reg_write(arm_const.UC_ARM_REG_R0, op)
            uc.reg_write(arm_const.UC_ARM_REG_R1, STATE_AT)
            uc.reg_write(arm_const.UC_ARM_REG_R2, 0)
            uc.emu_start(CODE_AT | 1, RETURN_AT)
    finally:
        for h in hooks:
            uc.hook_del(h)
    res = x25519_thumb.RES
    out = bytes(uc.mem_read(STATE_AT + res, 32))
    return out, _digest(blocks), _digest(accesses)


def _digest(xs: Iterable[int]) -> str:
    xs = list(xs)
    return hashlib.sha256(struct.pack(f"<{len(xs)}Q", *xs)).hexdigest() + f"/{len(xs)}"


def cases() -> list[tuple[bytes, bytes]]:
    rng = random.Random(7748)
    nine = (9).to_bytes(32, "little")
    us = [bytes(32), (1).to_bytes(32, "little"), (P - 1).to_bytes(32, "little"),
          (2**255 - 1).to_bytes(32, "little")]
    return ([(bytes(32), nine), (b"\xff" * 32, b"\xff" * 32)]
            + [(rng.randbytes(32), u) for u in us]
            + [(rng.randbytes(32), rng.randbytes(32))])


def test_same_blocks_and_memory_addresses_for_every_key_and_point() -> None:
    code = x25519_thumb.CODE
    seen = set()
    for k, u in cases():
        out, blocks, mem = run(code, k, u, trace=True)
        assert out == x25519.x25519(k, u), (k.hex(), u.hex())
        seen.add((blocks, mem))
    assert len(seen) == 1, seen
    (blocks, mem), = seen
    assert int(blocks.split("/")[1]) > 255 * 9  # the whole ladder was traced, not one call
    assert int(mem.split("/")[1]) > 600_000


def test_the_generators_walk_counts_what_runs() -> None:
    """x25519_gen.trace_counts (behind docs/BENCH.md's per-routine cycle breakdown) walks the
    same instructions as the emulated core executes, to the instruction."""
    code = x25519_thumb.CODE
    sizes: list[tuple[int, int]] = []
    run(code, bytes(range(32)), (9).to_bytes(32, "little"), block_sizes=sizes)
    executed = 0
    for addr, size in sizes:
        off = addr - CODE_AT
        assert 0 <= off < len(code)
        end = off + size
        while off < end:  # Thumb: a first halfword 0b11101, 0b11110 or 0b11111 starts a 32-bit one
            off += 4 if code[off + 1] >> 3 in (0b11101, 0b11110, 0b11111) else 2
            executed += 1
    insns, cycles, per = x25519_gen.trace_counts()
    assert executed == insns
    assert sum(per.values()) == cycles and per["fe_mul"] + per["fe_sq"] > 0.9 * cycles


def test_no_secret_left_on_the_stack() -> None:
    """The products' stack frames held secret intermediate values: after an X25519 every
    byte between the state buffer and the entry's saved registers (9 words: r4-r11, lr) is
    zero again (the RAM starts zeroed), so the code's wipe covers all the stack it used."""
    code = x25519_thumb.CODE
    run(code, bytes(range(32)), (9).to_bytes(32, "little"))
    uc = _cpu(code)
    start = STATE_AT + x25519_thumb.STATE_SIZE
    used = bytes(uc.mem_read(start, STACK_TOP - 36 - start))
    assert not any(used), f"{sum(1 for b in used if b)} bytes left below the entry's frame"
    assert any(uc.mem_read(STACK_TOP - 36, 36))  # the saved registers: the check can fail


@needs_toolchain
def test_a_swap_that_branches_on_the_bit_is_caught() -> None:
    """The same trace comparison on a variant whose ladder step chooses the doubling's inputs
    (fe_select: A or C, B or D, by the swap bit) with a branch, then copies the chosen one:
    the classic leak, a branch on the bit and an address that depends on it. The variant
    still computes X25519 correctly, so only the traces show it: both differ between keys."""
    src = x25519_gen.source()
    lines = src.splitlines()
    start = lines.index("fe_select:")
    leaky = "\n".join([*lines[:start + 1], "    cmp r3, #0", "    beq .Lleak", "    mov r1, r2",
                       ".Lleak:", "    movs r3, #0", *lines[start + 1:]]) + "\n"
    code = x25519_gen.assemble(leaky)
    assert code != x25519_gen.assemble(src)
    blocks, mem = set(), set()
    for k, u in cases()[:3]:
        out, b, m = run(code, k, u, trace=True)
        assert out == x25519.x25519(k, u)
        blocks.add(b)
        mem.add(m)
    assert len(blocks) > 1 and len(mem) > 1


def test_rfc7748_vectors() -> None:
    """(The 1,000 iterations run on the emulated board: tests_host/test_emulated.py.)"""
    code = x25519_thumb.CODE
    h = bytes.fromhex
    for k, u, want in X25519_VECTORS:
        assert run(code, h(k), h(u))[0].hex() == want
    k = u = x25519.BASE_POINT
    assert run(code, k, u)[0].hex() == X25519_ITERATED[1]


def test_all_wycheproof_vectors() -> None:
    code = x25519_thumb.CODE
    bad = [tc for tc, sk, pk, shared in wycheproof() if run(code, sk, pk)[0] != shared]
    assert not bad, f"Wycheproof tcIds {bad[:20]} differ"
