"""Port profiles on the virtual board (docs/virtual-board.md, "Port profiles"): a meter started
with ``--profile`` presents itself as that official build - its os.uname() and
sys.implementation, only its built-in modules, its heap, no /rom where it has no ROMFS - and the
unix profile stays what the virtual board always was.

The firmware does not boot yet on the board profiles (their board adapters need the rp2/stm32
hardware models, other work), so these meters run with an empty flash: the ROM, then the REPL."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from host_tools.flash.build import BOARDS_DIR as REPO_BOARDS
from host_tools.flash.deploy import flash
from host_tools.sim import fleet, profiles
from host_tools.transport.serial import Board

from .conftest import _LIVE_FLEETS, mpremote

# What the REPL reports about itself, in one round trip.
PROBE = """
import os, sys, gc
u = os.uname()
im = sys.implementation
r = {"uname": tuple(u), "attrs": [u.sysname, u.nodename, u.release, u.version, u.machine],
     "uname_repr": repr(u), "is_tuple": isinstance(u, tuple), "len": len(u),
     "platform": sys.platform, "maxsize": sys.maxsize, "version": sys.version,
     "impl": tuple(im), "impl_name": im.name, "impl_version": im.version,
     "impl_machine": im._machine, "impl_mpy": getattr(im, "_mpy", None),
     "impl_build": getattr(im, "_build", None), "impl_thread": getattr(im, "_thread", None),
     "heap": gc.mem_free() + gc.mem_alloc(), "root": os.listdir("/")}
try:
    os.stat("/rom")
    r["rom"] = True
except OSError:
    r["rom"] = False
import vfs
r["rom_ioctl"] = hasattr(vfs, "rom_ioctl")
r["vfsrom"] = hasattr(vfs, "VfsRom")
imp = {}
for m in ("cryptolib", "ucryptolib", "_thread", "_vhw", "termios", "json", "hashlib",
          "uctypes", "select", "usys", "asyncio", "mip"):
    try:
        __import__(m)
        imp[m] = "ok"
    except ImportError as e:
        imp[m] = str(e)
r["imports"] = imp
print(repr(r))
"""


def probe(port: str) -> dict[str, Any]:
    with Board(port, timeout=30, exec_timeout=30) as b:
        b.enter_raw(soft_reset=False)
        # first, alone: the probe's own code would take heap
        free = int(b.exec("import gc\ngc.collect()\nprint(gc.mem_free())", "free heap"))
        out = b.exec(PROBE, "probing the board's identity")
        b.exit_raw()
    r: dict[str, Any] = ast.literal_eval(out.decode().strip())
    r["free"] = free
    return r


@pytest.fixture(scope="module", params=[*profiles.names()])
def meter(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          real_port: str | None) -> Iterator[tuple[dict[str, Any], str, Path]]:
    """One meter with an empty flash under each profile, started by the CLI as a user does."""
    if real_port:
        pytest.skip("starts virtual meters")
    name = request.param
    base = tmp_path_factory.mktemp(f"prof-{name}")
    r = subprocess.run([sys.executable, "-m", "host_tools.cli", "sim", "start", "--dir",
                        str(base), "--profile", name, "--timeout", "90", "--json"],
                       capture_output=True, text=True, timeout=120)
    _LIVE_FLEETS.append(base)
    try:
        assert r.returncode == 0, r.stderr
        rec = json.loads(r.stdout.splitlines()[0])
        yield profiles.get(name), str(rec["port"]), base
    finally:
        _LIVE_FLEETS.remove(base)
        fleet.stop(base)


@pytest.fixture(scope="module")
def seen(meter: tuple[dict[str, Any], str, Path]) -> dict[str, Any]:
    return probe(meter[1])


def test_identity_is_the_boards(meter: tuple[dict[str, Any], str, Path],
                                seen: dict[str, Any]) -> None:
    prof = meter[0]
    assert seen["is_tuple"] and seen["len"] == 5
    assert seen["attrs"] == list(seen["uname"])  # attributes and items agree
    assert seen["uname_repr"].startswith("(sysname=")  # printed as a board's attrtuple
    assert seen["platform"] == prof["platform"]
    assert seen["impl_name"] == "micropython"
    if prof["port"] == "unix":
        assert seen["uname"] == ("virtual", "virtual", "1.29.0", seen["version"],
                                 "virtual meter (MicroPython unix VM)")
        assert seen["maxsize"] == 2**63 - 1
        assert seen["impl_machine"].startswith("linux")
        return
    assert seen["uname"] == (prof["sysname"], prof["nodename"], "1.28.0", prof["version"],
                             prof["machine"])
    assert seen["impl_version"] == (1, 28, 0, "")
    assert seen["impl_machine"] == prof["machine"]
    assert seen["impl_mpy"] == prof["mpy"] and seen["impl_build"] == prof["build"]
    assert seen["impl"][:3] == ("micropython", (1, 28, 0, ""), prof["machine"])
    assert seen["impl_thread"] == {"nogil": "unsafe", "gil": "GIL", None: None}[prof["thread"]]
    assert seen["maxsize"] == 2**31 - 1
    assert seen["version"] == "3.4.0; MicroPython " + prof["version"]
    board = {"rp2-pico": "RP2040", "rp2-pico2": "RP2350", "pybv11": "PYBv1.1",
             "pybv11-thread": "PYBv1.1"}[prof["name"]]
    assert board in seen["uname"][4]


def test_only_the_boards_modules_import(meter: tuple[dict[str, Any], str, Path],
                                        seen: dict[str, Any]) -> None:
    prof, imp = meter[0], seen["imports"]
    for m in ("json", "hashlib", "uctypes", "select", "usys", "asyncio"):
        assert imp[m] == "ok", (m, imp[m])
    if prof["port"] == "unix":
        assert all(v == "ok" for v in imp.values()), imp
        return
    # exactly the board's message (py/builtinimport.c)
    for m in ("_vhw", "termios", "mip"):
        assert imp[m] == f"no module named '{m}'"
    if prof["name"].startswith("pybv11"):
        assert imp["cryptolib"] == "no module named 'cryptolib'"
        assert imp["ucryptolib"] == "no module named 'ucryptolib'"
    else:
        assert imp["cryptolib"] == imp["ucryptolib"] == "ok"
    if prof["thread"] is None:
        assert imp["_thread"] == "no module named '_thread'"
    else:
        assert imp["_thread"] == "ok"


def test_heap_is_the_boards(meter: tuple[dict[str, Any], str, Path],
                            seen: dict[str, Any]) -> None:
    # the VM's GC keeps its tables inside the capped area: a little under the cap, never over
    want = profiles.heap_bytes(profiles.vm_start_heap(meter[0]))
    assert 0.95 * want <= seen["heap"] <= want, (seen["heap"], want)


def test_free_at_the_repl_is_the_boards(meter: tuple[dict[str, Any], str, Path],
                                        seen: dict[str, Any]) -> None:
    # an empty flash, at the REPL: what the board has free there, scaled to 64-bit objects
    # (the ROM's ballast takes the VM's headroom back); the unix profile has no board to match:
    # its VM's heap less the virtual board's own objects (~10 KB)
    prof = meter[0]
    want = profiles.repl_free_bytes(prof)
    if want is None:
        have = profiles.heap_bytes(profiles.vm_heap(prof))
        assert have - 32 * 1024 < seen["free"] < have - 2 * 1024, (seen["free"], have)
    else:
        assert abs(seen["free"] - want) <= 3 * 1024, (seen["free"], want)


def test_rom_only_with_a_romfs_partition(meter: tuple[dict[str, Any], str, Path],
                                         seen: dict[str, Any]) -> None:
    prof, mdir = meter[0], fleet.meter_dir(meter[2], 0)
    # an empty flash: nothing of the ROM shows (a pyboard mounts its flash at /flash, and its
    # micro SD card at /sd)
    assert seen["root"] == (["flash", "sd"] if prof["port"] == "stm32" else [])
    if prof["romfs_bytes"]:
        assert seen["rom_ioctl"] and seen["vfsrom"]
        assert (mdir / "romfs.bin").stat().st_size == prof["romfs_bytes"]
    else:
        assert not seen["rom"] and not seen["rom_ioctl"] and not seen["vfsrom"]
        assert not (mdir / "romfs.bin").exists()


def test_status_shows_the_profile(meter: tuple[dict[str, Any], str, Path]) -> None:
    prof, _, base = meter
    st = fleet.meter_status(0, base)
    assert st["profile"] == prof["name"]
    assert st["heap"] == profiles.vm_start_heap(prof)  # the VM's, with headroom
    assert st["free_at_boot"] == profiles.repl_free_bytes(prof)  # the firmware's, the board's
    r = subprocess.run([sys.executable, "-m", "host_tools.cli", "sim", "status", "--dir",
                        str(base)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0 and prof["name"] in r.stdout.splitlines()[1].split()
    free = profiles.repl_free_bytes(prof)
    want = f"{st['heap']}/{free // 1024}K" if free else f"{st['heap']}/-"
    assert r.stdout.splitlines()[1].split()[-1] == want, r.stdout


def test_mpremote_sees_the_machine(meter: tuple[dict[str, Any], str, Path]) -> None:
    """What MicroPython's own tests/run-tests.py and its users run to tell the target."""
    prof, port, _ = meter
    r = mpremote(port, "exec", "import os; print(os.uname().machine)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == prof["machine"]


def test_a_file_module_shadows_a_missing_builtin(tmp_path: Path) -> None:
    """On a board without cryptolib, firmware's own /lib/cryptolib.py (a fallback) imports as
    it would there; _vhw stays hidden even when asked for by a dotted name; the profile
    survives a restart that names none and a power cut."""
    base = tmp_path / "fleet"
    port = fleet.start(1, base, profile="pybv11")[0]["port"]
    _LIVE_FLEETS.append(base)
    try:
        with Board(port, timeout=30, exec_timeout=30) as b:
            b.enter_raw(soft_reset=False)
            # the pyboard's flash is FAT at /flash, its lib on sys.path (stm32 main.c)
            b.exec("import os\ntry:\n os.mkdir('/flash/lib')\nexcept OSError:\n pass\n")
            b.write_file("/flash/lib/cryptolib.py", b"FALLBACK = 'aes in python'\n")
            assert b.eval("__import__('cryptolib').FALLBACK") == "aes in python"
            assert b.eval("__import__('cryptolib').__file__") == "/flash/lib/cryptolib.py"
            out = b.exec("try:\n import _vhw.x\nexcept ImportError as e:\n print(e)\n")
            assert out.decode().strip() == "no module named '_vhw'"
            b.exit_raw()
        fleet.stop(base)
        port = fleet.start(1, base)[0]["port"]  # no profile given: the meter's own
        assert fleet.meter_status(0, base)["profile"] == "pybv11"
        fleet.power_cut(0, base)
        r = mpremote(port, "exec", "import sys; print(sys.platform)")
        assert r.stdout.strip() == "pyboard", r.stderr
    finally:
        _LIVE_FLEETS.remove(base)
        fleet.stop(base)


@pytest.mark.parametrize(("name", "board", "arch"), [("rp2-pico2", "rp2_pico", "armv7emsp"),
                                                     ("pybv11", "stm32_pybv11", "armv7emsp")])
def test_flash_picks_the_boards_definition_and_arch(tmp_path: Path, name: str, board: str,
                                                    arch: str) -> None:
    """`meterctl flash` reads the identity as on a real board: the definition (an RP2350 gets
    rp2_pico, and says why, until board/rp2_pico2 exists), .mpy for the board's architecture,
    no ROMFS image where the build has no partition."""
    if (REPO_BOARDS / "rp2_pico2" / "__init__.py").exists() and name == "rp2-pico2":
        board = "rp2_pico2"
    base = tmp_path / "fleet"
    port = fleet.start(1, base, profile=name)[0]["port"]
    _LIVE_FLEETS.append(base)
    try:
        r = flash(port, timeout=60)
        assert r.board_name == board
        assert r.mode == f".mpy for {arch}"
        assert r.romfs_bytes == 0
        if board == "rp2_pico" and name == "rp2-pico2":
            assert any("rp2_pico2 does not exist yet" in n for n in r.notes), r.notes
        assert fleet.exists(fleet.meter_dir(base, 0), "board/__init__.mpy")
    finally:
        _LIVE_FLEETS.remove(base)
        fleet.stop(base)
