"""What the two X25519 machine-code generators share (x25519_gen.py for ARMv6-M,
x25519_v7m_gen.py for ARMv7E-M): assembling with binutils, the generated module's body (its
layout constants, the asm_thumb trampoline and the code), and the walk that counts one
X25519's instructions and cycles along the assembly's control flow, each with its core's
timings. The state layout and op codes stay written out in each generator (the v7m one says
why)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from host_tools.emu.build import EmuError, ensure_toolchain


def assemble(asm: str, cpu: str) -> bytes:
    """Machine code of ``asm``: arm-none-eabi-as with ``cpu`` (e.g. -mcpu=cortex-m0plus),
    then the .text section alone."""
    ensure_toolchain(quiet=True)
    as_ = shutil.which("arm-none-eabi-as")
    objcopy = shutil.which("arm-none-eabi-objcopy")
    if as_ is None or objcopy is None:
        raise EmuError("arm-none-eabi-as / objcopy not found")
    with tempfile.TemporaryDirectory() as d:
        src, obj, binf = Path(d) / "x.s", Path(d) / "x.o", Path(d) / "x.bin"
        src.write_text(asm)
        for args in ([as_, cpu, "-mthumb", "-o", str(obj), str(src)],
                     [objcopy, "-O", "binary", "-j", ".text", str(obj), str(binf)]):
            r = subprocess.run(args, capture_output=True, text=True)
            if r.returncode != 0:
                raise EmuError(f"{Path(args[0]).name}: {(r.stderr or r.stdout).strip()}")
        return binf.read_bytes()


# The generated module after its header comment: data only, so that it stays valid Python for
# every target mpy-cross builds for (the trampoline is compiled on the board, from the string).
MODULE_BODY = '''\
STATE_SIZE = {state_size}
X1 = {x1}
X2 = {x2}
Z2 = {z2}
X3 = {x3}
Z3 = {z3}
RES = {res}
K = {k}
OP_LADDER = {op_ladder}
OP_STEP = {op_step}
OP_FINISH = {op_finish}
OP_CSWAP = {op_cswap}

TRAMPOLINE = """
@micropython.asm_thumb
def run(r0, r1, r2, r3):
    add(r0, 1)
    mov(r12, r0)
    mov(r0, r1)
    mov(r1, r2)
    mov(r2, r3)
    bl(call)
    b(done)
    label(call)
    bx(r12)
    label(done)
"""

CODE = (
{code}
)
'''


def render(header: str, code: bytes, layout: Mapping[str, int]) -> str:
    """The module's text: ``header`` (comment lines, which may name the op codes as
    {op_ladder} etc.), then MODULE_BODY with ``layout`` (state_size, x1 .. z3, res, k, op_*)
    and the code as bytes literals of 24 bytes a line."""
    rows = []
    for i in range(0, len(code), 24):
        esc = "".join(f"\\x{b:02x}" for b in code[i:i + 24])
        rows.append(f'    b"{esc}"')
    return (header + MODULE_BODY).format(code="\n".join(rows), **layout)


@dataclass(frozen=True)
class Timing:
    """A core's cycle counts for the walk: ``insn(op, args, previous op)`` for an instruction
    that does not branch (a POP that loads PC included), and the branches' own."""

    insn: Callable[[str, str, str], int]
    bl: int
    taken: int
    not_taken: int
    bx_lr: int


def walk(asm: str, op_codes: tuple[int, ...], timing: Timing
         ) -> tuple[int, int, dict[str, int]]:
    """(instructions, cycles, cycles per routine) of running the ops ``op_codes`` one after
    the other from the label ``entry``. The control flow depends only on public counters, so
    the walk follows it without data: the dispatch (``cmp r0, #op``), calls and returns
    (BL; POP with PC or BX LR), and the loops on the counter in r4, kept at [sp] across calls
    (``mov(s) r4, #n``, ``str r4, [sp]`` or ``push {r4, r5}``, ``ldr r4, [sp]``, ``subs r4,
    #1`` or ``subs r4, r4, #1``, then BNE / BPL)."""
    lines = [ln.strip() for ln in asm.splitlines()]
    where = {ln[:-1]: i for i, ln in enumerate(lines) if ln.endswith(":")}
    routine: list[str] = []
    name = ""
    for ln in lines:
        if ln.endswith(":") and not ln.startswith("."):
            name = ln[:-1]
        routine.append(name)
    insns = cycles = 0
    per: dict[str, int] = {}
    for op_code in op_codes:
        r0, r4 = op_code, 0
        zero = negative = False
        frames: list[dict[str, int]] = [{}]
        ret: list[int] = []
        pc = where["entry"]
        prev = ""
        while True:
            ln = lines[pc]
            here = routine[pc]
            pc += 1
            if not ln or ln.endswith(":") or ln.startswith("."):
                continue
            op, _, args = ln.partition(" ")
            cyc = timing.insn(op, args, prev)
            prev = op
            insns += 1
            done = False
            if op == "cmp" and args.startswith("r0, #"):  # the dispatch on the op code
                zero = r0 == int(args.split("#")[1])
            elif op in ("mov", "movs") and args.startswith("r4, #"):
                r4 = int(args.split("#")[1])
            elif op in ("mov", "movs") and args.startswith("r0, #"):
                r0 = int(args.split("#")[1])
            elif (op == "push" and args == "{r4, r5}") or (op == "str" and args == "r4, [sp]"):
                frames[-1]["sp"] = r4
            elif op == "ldr" and args == "r4, [sp]":
                r4 = frames[-1]["sp"]
            elif op == "subs" and args in ("r4, #1", "r4, r4, #1"):
                r4 -= 1
                zero, negative = r4 == 0, r4 < 0
            elif op == "bl":
                ret.append(pc)
                frames.append({})
                pc = where[args]
                cyc = timing.bl
            elif op in ("b", "bne", "bpl"):
                taken = op == "b" or (op == "bne" and not zero) or (op == "bpl" and not negative)
                if taken:
                    pc = where[args]
                cyc = timing.taken if taken else timing.not_taken
            elif (op == "pop" and "pc" in args) or (op == "bx" and args == "lr"):
                cyc = timing.bx_lr if op == "bx" else cyc
                frames.pop()
                if ret:
                    pc = ret.pop()
                else:
                    done = True
            cycles += cyc
            per[here] = per.get(here, 0) + cyc
            if done:
                break
    return insns, cycles, per
