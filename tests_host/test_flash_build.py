"""The flash image and board detection, on CPython without a board."""

from __future__ import annotations

import ast
import hashlib
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest

from host_tools.flash import build, deploy
from host_tools.flash.deploy import choose_mode
from host_tools.transport.serial import Board, BoardError, BoardInfo, resolve_port

from .conftest import micropython_binary


def info(mpy: int | None, platform: str = "rp2") -> BoardInfo:
    return BoardInfo("micropython", "1.29.0", platform, "Raspberry Pi Pico with RP2040", mpy)


@pytest.mark.parametrize(("mpy", "arch", "version"), [
    (0x0B06, "x64", (6, 3)),        # the unix VM on x86-64
    (0x1306, "armv6m", (6, 3)),     # RP2040 (Cortex-M0+)
    (0x1F06, "armv7emsp", (6, 3)),  # STM32F4 pyboard (Cortex-M4F)
    (0x0306, None, (6, 3)),         # bytecode only
    (0x1106, "armv6m", (6, 1)),     # an older firmware
])
def test_arch_and_version_from_sys_implementation_mpy(
        mpy: int, arch: str | None, version: tuple[int, int]) -> None:
    assert info(mpy).arch == arch
    assert info(mpy).mpy_version == version


def test_mode_follows_the_board() -> None:
    assert choose_mode(info(0x1306), source=False) == (False, "armv6m", ".mpy for armv6m")
    assert choose_mode(info(0x1306), source=True)[0] is True
    as_source, _, why = choose_mode(info(0x1106), source=False)
    assert as_source and "v6.1" in why and "v6.3" in why
    as_source, _, why = choose_mode(info(None), source=False)
    assert as_source and "does not report" in why


def test_board_for_platform() -> None:
    assert build.board_for_platform("linux") == "virtual"
    with pytest.raises(build.BuildError, match="no board definition for platform 'esp32'"):
        build.board_for_platform("esp32")


def test_image_layout_for_the_virtual_board() -> None:
    files = {f.dest: f for f in build.build_image("virtual", "x64")}
    assert "/main.py" in files  # run by name: stays source
    assert files["/main.py"].data == (build.FIRMWARE_DIR / "main.py").read_bytes()
    assert "/board/__init__.mpy" in files
    # the ROM and the analog front end (board/virtual/host/) are the board, not firmware
    assert not any("host" in d or "waveform" in d for d in files)
    mpy = files["/board/__init__.mpy"].data
    assert mpy[0:1] == b"M" and mpy[1] == 6  # an .mpy header, format version 6


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    fw = tmp_path / "fw"
    shutil.copytree(build.FIRMWARE_DIR, fw)
    (fw / "bad.py").write_text("ok = 1\n\nwhile True print(1)\n")
    with pytest.raises(build.BuildError) as e:
        build.build_image("virtual", "x64", firmware_dir=fw)
    assert str(e.value).startswith(f"{fw / 'bad.py'}:3: SyntaxError")
    # a source-mode flash is checked just the same
    (fw / "main.py").write_text("def broken(:\n")
    (fw / "bad.py").unlink()
    with pytest.raises(build.BuildError, match=r"main\.py:1: SyntaxError"):
        build.build_image("virtual", None, source=True, firmware_dir=fw)


def test_unknown_board_lists_the_known_ones() -> None:
    with pytest.raises(build.BuildError, match=r"known: .*virtual"):
        build.build_image("no_such_board", None)


def test_resolve_port_errors(tmp_path: Path) -> None:
    with pytest.raises(BoardError, match="no such port"):
        resolve_port(str(tmp_path / "ttyACM9"))
    regular = tmp_path / "file"
    regular.write_text("")
    with pytest.raises(BoardError, match="not a serial device"):
        resolve_port(str(regular))


# -- the sha256 checks of `meterctl flash` (host_tools/flash/deploy.py) against a board whose
# serial line damages what crosses it; tests_device/test_flash.py does the same end to end on
# a virtual board (link-fault), slower.
class _LineBoard:
    """A board as deploy.py sees one (exec, eval, write_file), with a filesystem and a ROMFS
    partition in dicts, whose serial line passes each written file through ``line``."""

    port = "/dev/ttyFAKE"

    def __init__(self, line: Callable[[bytes], bytes] = bytes) -> None:
        self.line = line
        self.files: dict[str, bytes] = {"/main.py": b"old firmware\n"}
        self.partition = b""

    def write_file(self, path: str, data: bytes, progress: Callable[[int, int], None]) -> None:
        self.files[path] = self.line(data)
        progress(len(data), len(data))

    def exec(self, code: str, what: str) -> None:
        if code.startswith("_fl_rm("):
            self.files.pop(ast.literal_eval(code[len("_fl_rm("):-1]), None)

    def eval(self, code: str, what: str) -> object:
        if code.startswith("_fl_hash("):
            data = self.files.get(ast.literal_eval(code[len("_fl_hash("):-1]))
            return None if data is None else hashlib.sha256(data).hexdigest()
        if code.startswith("_fl_romhash("):
            n = int(code[len("_fl_romhash("):-1])
            return hashlib.sha256(self.partition[:n]).hexdigest()
        if code == "vfs.rom_ioctl(5, 0)":
            return 0
        raise AssertionError(f"unexpected board call {code!r}")


def _flip(data: bytes, at: int = 7) -> bytes:
    b = bytearray(data)
    b[at % len(b)] ^= 0x10
    return bytes(b)


def test_a_file_damaged_on_the_line_is_refused_before_it_is_used() -> None:
    new = b"print('new firmware')\n" * 20
    sha = hashlib.sha256(new).hexdigest()
    ok = _LineBoard()
    deploy._stage(cast(Board, ok), "/main.py", new, sha, lambda d, t: None)
    assert ok.files["/main.py.new"] == new and ok.files["/main.py"] == b"old firmware\n"
    for damage in (_flip, lambda d: _flip(d, len(d) - 1), lambda d: d[:-1], lambda d: d + b"\n"):
        bad = _LineBoard(damage)
        with pytest.raises(BoardError, match=r"arrived damaged.*previous firmware is unchanged"):
            deploy._stage(cast(Board, bad), "/main.py", new, sha, lambda d, t: None)
        assert bad.files["/main.py"] == b"old firmware\n"  # what runs now: untouched


def test_a_romfs_partition_that_does_not_hold_the_image_is_refused() -> None:
    img = bytes(range(256)) * 8
    b = _LineBoard()
    b.partition = img + b"\xff" * 512
    deploy._finish_romfs(cast(Board, b), img)  # it holds the image: no error
    # one bit, the last byte, a partition still erased
    for held in (_flip(img, 1000), _flip(img, len(img) - 1), b"\xff" * len(img)):
        b.partition = held + b"\xff" * 512
        with pytest.raises(BoardError, match="does not hold the image just written"):
            deploy._finish_romfs(cast(Board, b), img)


def test_the_pyboards_image_leaves_the_line_numbers_out(tmp_path: Path) -> None:
    # Its 100 KB heap holds every imported module's bytecode (no ROMFS): mpy-cross -O3 leaves
    # out the line-number tables, ~2 KB of the running meter's heap (docs/hardware.md).
    src = tmp_path / "m.py"
    src.write_text('def f():\n    x = 1\n    y = x + 1\n    raise ValueError(y)\n')
    lean = build.compile_one(src, "/m.mpy", None, opt=build.OPT_LEVEL["stm32_pybv11"])
    full = build.compile_one(src, "/m.mpy", None)
    assert len(lean) < len(full)
    exe = micropython_binary()
    assert exe is not None
    lines = {}
    for name, data in (("lean", lean), ("full", full)):
        d = tmp_path / name
        d.mkdir()
        (d / "m.mpy").write_bytes(data)
        r = subprocess.run([exe, "-c", "import m\nm.f()"], capture_output=True,
                           text=True, cwd=d, env={"MICROPYPATH": str(d)})
        m = re.search(r'File "m.mpy", line (\d+), in f', r.stdout + r.stderr)
        assert m is not None, (r.stdout, r.stderr)
        lines[name] = m.group(1)
    assert lines == {"lean": "1", "full": "4"}
    # and the Pyboard's image is compiled so, every module of it; the Pico's keeps them
    for board, arch, opt in (("stm32_pybv11", "armv7emsp", 3), ("rp2_pico", "armv6m", 0)):
        for f in build.build_image(board, arch):
            if f.dest.endswith(".mpy") and not build.is_native(f.src):
                assert f.data == build.compile_one(f.src, f.dest, arch, opt=opt), f.dest
