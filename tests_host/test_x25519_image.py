"""An image holds only the X25519 code its board runs (host_tools/flash/build.py
x25519_modules), and x25519.py chooses among what is there: the machine code where the CPU runs
it, the Python code where it does not, and a clear ImportError, never a wrong or silent
fallback, where the image has nothing that runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from host_tools.emu.bench import RFC7748_VECTOR, emulated_board
from host_tools.flash import build
from host_tools.flash.deploy import ROMFS_FN
from host_tools.transport.serial import Board, BoardError

from .conftest import FIRMWARE_LIB, micropython_binary
from .test_emulated import needs_toolchain

CODE = {"/lib/x25519_py.mpy", "/lib/x25519_thumb.mpy", "/lib/x25519_v7m.mpy"}
NO_CODE = "no X25519 code for this CPU in the image"


def x25519_code(board: str, arch: str | None, inline_asm: bool = True,
                source: bool = False) -> set[str]:
    files = build.build_image(board, arch, source, inline_asm=inline_asm)
    dests = {f.dest.replace(".py", ".mpy") for f in files}
    assert "/lib/x25519.mpy" in dests  # the choosing module is always there
    return dests & CODE


@pytest.mark.parametrize(("board", "arch", "asm", "want"), [
    ("rp2_pico", "armv6m", True, {"/lib/x25519_thumb.mpy"}),  # RP2040: Cortex-M0+
    ("stm32_pybv11", "armv7emsp", True, {"/lib/x25519_v7m.mpy"}),  # STM32F405: Cortex-M4
    ("rp2_pico2", "armv7emsp", True, {"/lib/x25519_v7m.mpy"}),  # RP2350: Cortex-M33 + DSP
    ("rp2_pico2", "rv32imc", True, {"/lib/x25519_py.mpy"}),  # the RP2350's RISC-V cores
    ("virtual", "x64", True, {"/lib/x25519_py.mpy"}),
    # a virtual meter presents the board's arch, but its unix VM has no inline assembler
    ("rp2_pico", "armv6m", False, {"/lib/x25519_py.mpy"}),
    ("stm32_pybv11", "armv7emsp", False, {"/lib/x25519_py.mpy"}),
    # a core that may lack UMAAL (a Cortex-M3 reports armv7em): both, x25519.py asks the core
    ("rp2_pico", "armv7em", True, {"/lib/x25519_thumb.mpy", "/lib/x25519_v7m.mpy"}),
])
def test_an_image_holds_the_x25519_code_its_board_runs(board: str, arch: str, asm: bool,
                                                       want: set[str]) -> None:
    assert x25519_code(board, arch, asm) == want


def test_a_board_that_reports_no_arch_gets_every_x25519_code() -> None:
    assert x25519_code("rp2_pico", None, source=True) == CODE


def run_vm(path: Path, code: str) -> subprocess.CompletedProcess[str]:
    exe = micropython_binary()
    assert exe is not None
    env = dict(os.environ, MICROPYPATH=str(path))
    return subprocess.run([exe, "-c", code], capture_output=True, text=True, timeout=60,
                          env=env)


def test_x25519_without_code_for_the_cpu_fails_clearly_at_import(tmp_path: Path) -> None:
    shutil.copy(FIRMWARE_LIB / "x25519.py", tmp_path)
    # the machine code alone, on a VM that cannot run it: still nothing that runs
    shutil.copy(FIRMWARE_LIB / "x25519_thumb.py", tmp_path)
    r = run_vm(tmp_path, "import x25519")
    assert r.returncode != 0
    last = (r.stdout + r.stderr).strip().splitlines()[-1]
    assert last == f"ImportError: x25519: {NO_CODE}: flash the board's own (meterctl flash)"
    shutil.copy(FIRMWARE_LIB / "x25519_py.py", tmp_path)
    k, u, want = RFC7748_VECTOR
    r = run_vm(tmp_path, f"import x25519\nprint(x25519.IMPL, x25519.x25519("
                         f"bytes.fromhex({k!r}), bytes.fromhex({u!r})).hex())")
    assert r.stdout.split() == ["python", want], r.stdout + r.stderr


def asm_probe(run: object) -> int:
    return int(str(run).strip().splitlines()[-1])


def test_the_flash_probe_finds_no_inline_assembler_on_the_unix_vm(tmp_path: Path) -> None:
    r = run_vm(tmp_path, ROMFS_FN + "\nprint(_fl_asm())")
    assert r.returncode == 0, r.stderr
    assert asm_probe(r.stdout) == 0


@pytest.fixture(scope="module")
def m0plus() -> Iterator[Board]:
    with emulated_board("m0plus") as (_, b):
        yield b


def put_image_x25519(b: Board, board: str, arch: str) -> None:
    """The X25519 modules of ``board``'s image, and only those, on the emulated board."""
    b.exec("import os\nfor n in os.listdir('/'):\n    if n.startswith('x25519'):\n"
           "        os.remove('/' + n)\nimport sys\nfor n in list(sys.modules):\n"
           "    if n.startswith('x25519'):\n        del sys.modules[n]")
    for f in build.build_image(board, arch):
        if f.dest.startswith("/lib/x25519"):
            b.write_file(f.dest[len("/lib"):], f.data)


@needs_toolchain
def test_the_flash_probe_finds_the_inline_assembler_on_a_cortex_m(m0plus: Board) -> None:
    assert asm_probe(m0plus.exec(ROMFS_FN + "\nprint(_fl_asm())").decode()) == 1


@needs_toolchain
def test_the_pico_image_runs_its_machine_code_and_refuses_without_it(m0plus: Board) -> None:
    k, u, want = RFC7748_VECTOR
    put_image_x25519(m0plus, "rp2_pico", "armv6m")
    out = m0plus.exec(f"import x25519\nprint(x25519.IMPL, x25519.x25519(bytes.fromhex({k!r}),"
                      f" bytes.fromhex({u!r})).hex())").decode()
    assert out.split() == ["armv6-m", want]
    # the Pyboard's image on the M0+: its ARMv7E-M code cannot run there, and the image has
    # no other: the import says so rather than executing UMAAL on a core without it
    put_image_x25519(m0plus, "stm32_pybv11", "armv7emsp")
    with pytest.raises(BoardError, match=NO_CODE):
        m0plus.exec("import x25519")


def test_the_python_code_leaves_ram_with_x25519(tmp_path: Path) -> None:
    # The DC security task drops x25519 after a set-up (lazy.drop("x25519")): x25519_py, held
    # by x25519 alone, must go with it, or ~2 KB of its code stay in a 100 KB heap for good.
    shutil.copy(FIRMWARE_LIB / "x25519.py", tmp_path)
    shutil.copy(FIRMWARE_LIB / "x25519_py.py", tmp_path)
    shutil.copy(FIRMWARE_LIB / "lazy.py", tmp_path)
    r = run_vm(tmp_path, "import gc, sys, lazy\ngc.collect()\na = gc.mem_alloc()\n"
                         "import x25519\nx25519.public_key(bytes(32))\n"
                         "gc.collect()\nprint(gc.mem_alloc() - a)\n"
                         "print(sorted(m for m in sys.modules if m.startswith('x25519')))\n"
                         "del x25519\nlazy.drop('x25519')\ngc.collect()\n"
                         "print(sorted(m for m in sys.modules if m.startswith('x25519')))\n"
                         "print(gc.mem_alloc() - a)")
    assert r.returncode == 0, r.stderr
    held, mods, gone, left = r.stdout.splitlines()
    assert (mods, gone) == ("['x25519']", "[]")
    # what stays is the names compiling interned, not the two modules' code and objects
    assert int(left) < int(held) / 2, (held, left)
