"""The port profiles' table (host_tools/sim/profiles.py): its values against MicroPython's own
source where the mirror is present, what the ROM will hide, the board definition and .mpy
architecture `meterctl flash` derives from each identity, and `sim start --profile` refusing a
name that does not exist."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from host_tools.cli import main as cli
from host_tools.flash import build, deploy
from host_tools.sim import fleet, profiles
from host_tools.transport.serial import BoardInfo

MP_MIRROR = Path("/work/.mirror/micropython+micropython/repo")
TAGS = ("v1.26.0", "v1.27.0", "v1.28.0")
BOARD_PROFILES = ("rp2-pico", "rp2-pico2", "pybv11", "pybv11-thread")
FIELDS = {"name", "port", "board_def", "platform", "sysname", "nodename", "machine", "release",
          "version", "impl_version", "mpy", "build", "heap", "cpu_hz", "modules", "thread",
          "fs", "romfs_bytes", "nvram_bytes", "hidden"}


def test_the_five_profiles_are_complete_and_json() -> None:
    assert profiles.names() == ["rp2-pico", "rp2-pico2", "pybv11", "pybv11-thread", "unix"]
    assert profiles.DEFAULT == "rp2-pico"
    for name in profiles.names():
        p = profiles.get(name)
        # a board's profile also has its analogue front end (the unix one keeps the ROM's)
        # a Pyboard's also its micro SD card slot (the stm32 port boots from a card)
        extra = ({"front_end"} if p["port"] != "unix" else set()) | (
            {"sd"} if p["port"] == "stm32" else set())
        assert set(p) == FIELDS | extra, name
        assert p["name"] == name
        assert json.loads(json.dumps(p)) == p
        assert p["fs"]["bytes"] > 0 and p["fs"]["block"] in (512, 4096)
        assert profiles.heap_bytes(p["heap"]) >= 64 * 1024
    for name in BOARD_PROFILES:
        p = profiles.get(name)
        assert p["release"] == "1.28.0" and p["impl_version"] == [1, 28, 0, ""]
        assert p["version"].startswith("v1.28.0 on ")
        assert p["romfs_bytes"] == 0  # no official build of these has a ROMFS partition
        assert p["fs"]["cycles"] > 0 and p["fs"]["erase_ms"] and p["fs"]["erase_bytes"]
        assert sum(p["fs"].get("erase_bytes", [])) == p["fs"]["bytes"] or p["port"] == "rp2"


def test_get_returns_a_copy_and_refuses_unknown_names_in_one_line() -> None:
    p = profiles.get("pybv11")
    p["modules"].append("cryptolib")
    assert "cryptolib" not in profiles.get("pybv11")["modules"]
    with pytest.raises(profiles.ProfileError) as e:
        profiles.get("rp2-pic0")
    msg = str(e.value)
    assert "\n" not in msg and "'rp2-pic0'" in msg
    assert all(n in msg for n in profiles.names())


def test_identities() -> None:
    pico, pico2 = profiles.get("rp2-pico"), profiles.get("rp2-pico2")
    pyb, pybt = profiles.get("pybv11"), profiles.get("pybv11-thread")
    assert (pico["platform"], pico["machine"], pico["build"]) == (
        "rp2", "Raspberry Pi Pico with RP2040", "RPI_PICO")
    assert (pico2["machine"], pico2["build"]) == ("Raspberry Pi Pico2 with RP2350", "RPI_PICO2")
    assert (pyb["platform"], pyb["machine"], pyb["build"]) == (
        "pyboard", "PYBv1.1 with STM32F405RG", "PYBV11")
    assert pybt["build"] == "PYBV11-THREAD"
    assert pyb["sysname"] == pyb["nodename"] == "pyboard"
    assert pico["sysname"] == pico["nodename"] == "rp2"


@pytest.mark.parametrize(("name", "arch"), [("rp2-pico", "armv6m"), ("rp2-pico2", "armv7emsp"),
                                            ("pybv11", "armv7emsp"),
                                            ("pybv11-thread", "armv7emsp")])
def test_mpy_is_what_mpy_cross_compiles_for(name: str, arch: str) -> None:
    p = profiles.get(name)
    info = BoardInfo("micropython", "1.28.0", p["platform"], p["machine"], p["mpy"])
    assert info.arch == arch
    assert info.mpy_version == build.MPY_CROSS_VERSION  # .mpy for the board, not source
    as_source, chosen, _ = deploy.choose_mode(info, source=False)
    assert not as_source and chosen == arch


def test_modules_and_what_the_rom_hides() -> None:
    pico, pyb = profiles.get("rp2-pico"), profiles.get("pybv11")
    pybt, unix = profiles.get("pybv11-thread"), profiles.get("unix")
    assert {"cryptolib", "_thread", "rp2", "machine"} <= set(pico["modules"])
    assert pico["thread"] == "nogil"
    assert "cryptolib" not in pyb["modules"] and "_thread" not in pyb["modules"]
    assert pyb["thread"] is None
    assert "_thread" in pybt["modules"] and pybt["thread"] == "gil"
    assert {"pyb", "stm"} <= set(pyb["modules"])
    # what the unix VM has and the board lacks, its u-alias, and the virtual board's own _vhw
    assert {"cryptolib", "ucryptolib", "_thread", "_vhw", "termios"} <= set(pyb["hidden"])
    assert "_thread" not in pybt["hidden"] and "cryptolib" in pybt["hidden"]
    assert {"socket", "ssl", "_vhw"} <= set(pico["hidden"]) and "cryptolib" not in pico["hidden"]
    for p in (pico, pyb, pybt):
        assert not set(p["hidden"]) & set(p["modules"])
    assert unix["hidden"] == [] and unix["romfs_bytes"] > 0


def test_heap_bytes() -> None:
    assert profiles.heap_bytes("192K") == 196608
    assert profiles.heap_bytes("1M") == 1 << 20
    assert profiles.heap_bytes("4096") == 4096


def _src(tag: str, path: str) -> str:
    return subprocess.run(["git", "-C", str(MP_MIRROR), "show", f"{tag}:{path}"],
                          capture_output=True, text=True, check=True).stdout


def _define(text: str, name: str) -> str:
    m = re.search(rf"#define {name}\s+(.+)", text)
    assert m, name
    return m.group(1).split("//")[0].strip()


@pytest.mark.skipif(not MP_MIRROR.is_dir(), reason="no MicroPython source mirror here")
@pytest.mark.parametrize("tag", TAGS)
def test_values_match_micropython_source(tag: str) -> None:
    """Each supported release's source says what the table says."""
    rp2 = _src(tag, "ports/rp2/mpconfigport.h")
    assert _define(rp2, "MICROPY_PY_CRYPTOLIB") == "(1)"
    assert _define(rp2, "MICROPY_PY_THREAD_GIL") == "(0)"
    assert _define(rp2, "MICROPY_HW_ROMFS_BYTES") == "(0)"
    assert _define(rp2, "MICROPY_PY_SYS_PLATFORM") == '"rp2"'
    assert '"RP2040"' in rp2 and '"RP2350"' in rp2
    pico = _src(tag, "ports/rp2/boards/RPI_PICO/mpconfigboard.h")
    assert _define(pico, "MICROPY_HW_BOARD_NAME") == '"Raspberry Pi Pico"'
    assert _define(pico, "MICROPY_HW_FLASH_STORAGE_BYTES") == "(1408 * 1024)"
    assert profiles.get("rp2-pico")["fs"]["bytes"] == 1408 * 1024
    # os.uname().machine: MICROPY_HW_BOARD_NAME " with " MICROPY_HW_MCU_NAME (extmod/modos.c)
    assert profiles.get("rp2-pico")["machine"] == \
        _define(pico, "MICROPY_HW_BOARD_NAME").strip('"') + " with RP2040"
    pico2 = _src(tag, "ports/rp2/boards/RPI_PICO2/mpconfigboard.h")
    assert _define(pico2, "MICROPY_HW_BOARD_NAME") == '"Raspberry Pi Pico2"'
    assert _define(pico2, "MICROPY_HW_FLASH_STORAGE_BYTES") == \
        "(PICO_FLASH_SIZE_BYTES - 1024 * 1024)"
    stm = _src(tag, "ports/stm32/mpconfigport.h")
    assert _define(stm, "MICROPY_PY_SYS_PLATFORM") == '"pyboard"'
    assert _define(stm, "MICROPY_PY_THREAD") == "(0)"
    thread_mk = _src(tag, "ports/stm32/boards/PYBV11/mpconfigvariant_THREAD.mk")
    assert "MICROPY_PY_THREAD=1" in thread_mk
    # v1.26: default (0) (stm32 sets it to MICROPY_PY_SSL); v1.27 on: follows MICROPY_PY_SSL,
    # which nothing a PYBV11 build reads turns on
    assert _define(_src(tag, "py/mpconfig.h"), "MICROPY_PY_CRYPTOLIB") in (
        "(0)", "(MICROPY_PY_SSL)")
    for f in ("ports/stm32/mpconfigport.h", "ports/stm32/boards/PYBV11/mpconfigboard.h",
              "ports/stm32/boards/PYBV11/mpconfigboard.mk",
              "ports/stm32/boards/PYBV11/mpconfigvariant_THREAD.mk"):
        text = _src(tag, f)
        assert not re.search(r"#define MICROPY_PY_SSL\b|MICROPY_PY_CRYPTOLIB\s+\(1\)"
                             r"|MICROPY_PY_SSL\s*\??=\s*1", text), f
    pyb = _src(tag, "ports/stm32/boards/PYBV11/mpconfigboard.h")
    assert _define(pyb, "MICROPY_HW_BOARD_NAME") == '"PYBv1.1"'
    assert _define(pyb, "MICROPY_HW_MCU_NAME") == '"STM32F405RG"'
    assert profiles.get("pybv11")["machine"] == "{} with {}".format(
        _define(pyb, "MICROPY_HW_BOARD_NAME").strip('"'),
        _define(pyb, "MICROPY_HW_MCU_NAME").strip('"'))
    ld = _src(tag, "ports/stm32/boards/stm32f405.ld")
    assert re.search(r"FLASH_FS \(rx\)\s*: ORIGIN = 0x08004000, LENGTH = 112K", ld)
    assert profiles.get("pybv11")["fs"]["bytes"] == 112 * 1024
    pers = _src(tag, "py/persistentcode.h")
    assert (_define(pers, "MPY_VERSION"), _define(pers, "MPY_SUB_VERSION")) == ("6", "3")


def test_board_for_platform_by_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pico2 = profiles.get("rp2-pico2")["machine"]
    # board/rp2_pico2 not there: rp2_pico, and pick_board says why
    monkeypatch.setattr(build, "BOARDS_DIR", tmp_path)
    assert build.board_for_platform("rp2", pico2) == "rp2_pico"
    name, why = deploy.pick_board("/dev/pts/99",
                                  BoardInfo("micropython", "1.28.0", "rp2", pico2, 0))
    assert name == "rp2_pico" and "rp2_pico2 does not exist yet" in why
    # once it exists, an RP2350 gets it; an RP2040 never does
    (tmp_path / "rp2_pico2").mkdir()
    (tmp_path / "rp2_pico2" / "__init__.py").write_text("")
    assert build.board_for_platform("rp2", pico2) == "rp2_pico2"
    assert build.board_for_platform("rp2", profiles.get("rp2-pico")["machine"]) == "rp2_pico"
    assert build.board_for_platform("pyboard", profiles.get("pybv11")["machine"]) == \
        "stm32_pybv11"
    assert build.board_for_platform("linux", profiles.get("unix")["machine"]) == "virtual"


def test_sim_start_refuses_an_unknown_profile(tmp_path: Path) -> None:
    base = tmp_path / "fleet"
    r = CliRunner().invoke(cli, ["sim", "start", "--dir", str(base), "--profile", "pico"])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1, r.output
    assert "unknown profile 'pico'" in lines[0]
    assert all(n in lines[0] for n in profiles.names())
    assert not base.exists()  # nothing started, nothing made
    with pytest.raises(fleet.SimError, match="unknown profile 'pico'"):
        fleet.start(1, base, profile="pico")
    assert not base.exists()


def test_a_meter_keeps_its_profile(tmp_path: Path) -> None:
    mdir = tmp_path / "meter-000"
    assert fleet.meter_profile(mdir) is None
    mdir.mkdir()
    (mdir / fleet.PROFILE_FILE).write_text(json.dumps(profiles.get("pybv11")))
    assert fleet.meter_profile(mdir) == "pybv11"
    (mdir / fleet.PROFILE_FILE).write_text("{not json")
    assert fleet.meter_profile(mdir) is None


def test_the_virtual_front_end_is_built_to_each_board_adapters_calibration() -> None:
    # Under a board's profile the supervisor scales the ADC ring to the front end the board's
    # adapter assumes (its CAL_DEFAULT), so an uncalibrated meter reads true volts and amps.
    import ast

    root = Path(__file__).resolve().parents[1]
    for name in profiles.names():
        prof = profiles.get(name)
        if prof["port"] == "unix":
            assert "front_end" not in prof
            continue
        tree = ast.parse((root / "board" / prof["board_def"] / "__init__.py").read_text()
                         if prof["board_def"] != "rp2_pico2" else
                         (root / "board" / "rp2_pico" / "__init__.py").read_text())
        consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                  for t in n.targets if isinstance(t, ast.Name)
                  and isinstance(n.value, ast.Constant)}
        assert (consts["V_PEAK_FS"], consts["I_PEAK_FS"]) == (
            prof["front_end"]["v_peak"], prof["front_end"]["i_peak"]), name


def test_a_pyboard_has_a_card_in_its_slot_the_others_none() -> None:
    for name in profiles.names():
        p = profiles.get(name)
        if p["port"] == "stm32":
            assert p["sd"]["bytes"] == profiles.SD_BYTES == 32 * 1024 * 1024
            assert 0 < p["sd"]["write_ms"] < 250  # the SD spec's write busy limit
        else:
            assert "sd" not in p, name


def test_the_firmware_is_left_the_boards_free_heap_at_the_repl() -> None:
    # (board heap - GC tables (3/128) - the official firmware's own boot objects) / 0.68
    want = {"rp2-pico": (192, 5), "rp2-pico2": (448, 5), "pybv11": (100, 2),
            "pybv11-thread": (100, 2)}
    for name, (heap_k, boot_k) in want.items():
        p = profiles.get(name)
        heap = heap_k * 1024
        free = profiles.repl_free_bytes(p)
        assert free == int((heap - heap * 3 // 128 - boot_k * 1024) / 0.68), name
        # the VM starts with the headroom for the virtual board's own objects (~48 KB on a
        # pybv11 with its card) on top of the heap that holds the board's
        start = profiles.heap_bytes(profiles.vm_start_heap(p))
        assert start == profiles.heap_bytes(profiles.vm_heap(p)) + profiles.HEADROOM, name
        assert free < profiles.heap_bytes(profiles.vm_heap(p)) < start - 64 * 1024, name
    assert profiles.repl_free_bytes(profiles.get("rp2-pico")) == 274823
    assert profiles.repl_free_bytes(profiles.get("pybv11")) == 144047
    unix = profiles.get("unix")  # no board to match: no ballast, no headroom
    assert profiles.repl_free_bytes(unix) is None
    assert profiles.vm_start_heap(unix) == profiles.vm_heap(unix) == "192K"


@pytest.mark.skipif(not MP_MIRROR.is_dir(), reason="no MicroPython source mirror here")
@pytest.mark.parametrize("tag", TAGS)
def test_boot_heap_figures_match_micropython_source(tag: str) -> None:
    """What profiles.BOOT_OBJECTS and the 3/128 of GC tables are read from."""
    gc = _src(tag, "py/gc.c")
    assert _define(gc, "BLOCKS_PER_ATB") == "(4)" and _define(gc, "BLOCKS_PER_FTB") == "(8)"
    assert "progsize=256" in _src(tag, "ports/rp2/modules/_boot.py")
    lfs = _src(tag, "extmod/vfs_lfsx.c")
    assert "config->cache_size = MIN(config->block_size, (4 * MAX(read_size, prog_size)));" \
        in lfs
    assert "pyexec_frozen_module(\"_boot.py\"" in _src(tag, "ports/rp2/main.c")
    stm = _src(tag, "ports/stm32/main.c")
    assert "fs_user_mount_t *vfs_fat = m_new_obj_maybe(fs_user_mount_t);" in stm
