"""Which board definition a flash picks (USB VID:PID, then sys.platform), the Pyboard's image
layout (boot.py at the root), and `make typecheck`'s per-port stub trees."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import serial.tools.list_ports

from host_tools.flash import build, deploy, typecheck
from host_tools.transport import serial as transport
from host_tools.transport.serial import BoardInfo


def fake_ports(monkeypatch: pytest.MonkeyPatch, *ports: tuple[str, int | None, int | None]) -> None:
    listed = [SimpleNamespace(device=d, vid=v, pid=p) for d, v, p in ports]
    monkeypatch.setattr(serial.tools.list_ports, "comports", lambda: listed)


def info(platform: str) -> BoardInfo:
    return BoardInfo("micropython", "1.29.0", platform, "", 0x1306)


def test_board_for_usb_vendor() -> None:
    assert build.board_for_usb(0x2E8A) == "rp2_pico"
    assert build.board_for_usb(0xF055) == "stm32_pybv11"
    assert build.board_for_usb(0x0483) is None  # ST-LINK (a Nucleo's REPL): give --board


def test_pick_board_by_vid_pid_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pico, pyb, other = (tmp_path / n for n in ("ttyACM0", "ttyACM1", "ttyUSB0"))
    for p in (pico, pyb, other):
        p.touch()
    link = tmp_path / "usb-MicroPython_Board_in_FS_mode-if00"
    link.symlink_to(pico)
    fake_ports(monkeypatch, (str(pico), 0x2E8A, 0x0005), (str(pyb), 0xF055, 0x9802),
               (str(other), 0x0403, 0x6001))
    # the USB vendor wins over what sys.platform says
    assert deploy.pick_board(str(pico), info("pyboard")) == ("rp2_pico", "USB VID:PID 2E8A:0005")
    assert deploy.pick_board(str(link), info("rp2"))[0] == "rp2_pico"  # /dev/serial/by-id
    assert deploy.pick_board(str(pyb), info("rp2")) == ("stm32_pybv11",
                                                        "USB VID:PID F055:9802")
    # an FTDI adapter, or a pty (the virtual board): by sys.platform
    assert deploy.pick_board(str(other), info("pyboard")) == ("stm32_pybv11",
                                                              "sys.platform 'pyboard'")
    assert deploy.pick_board("/dev/pts/99", info("linux")) == ("virtual", "sys.platform 'linux'")


def test_auto_port_finds_the_one_board(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_ports(monkeypatch, ("/dev/ttyS0", None, None), ("/dev/ttyACM3", 0xF055, 0x9800))
    assert transport.find_boards() == [("/dev/ttyACM3", "pyboard")]
    assert transport.resolve_port("auto") == "/dev/ttyACM3"
    assert transport.usb_id("/dev/ttyACM3") == (0xF055, 0x9800)
    assert transport.usb_id("/dev/ttyS0") is None


def test_pyboard_image_puts_boot_py_at_the_root() -> None:
    files = {f.dest: f for f in build.build_image("stm32_pybv11", "armv7emsp")}
    assert files["/boot.py"].data == (build.BOARDS_DIR / "stm32_pybv11" / "root" / "boot.py"
                                      ).read_bytes()  # run by name: source
    assert "/board/__init__.mpy" in files
    assert not any(d.startswith("/board/root") for d in files)
    assert "/boot.py" not in {f.dest for f in build.build_image("rp2_pico", "armv6m")}


def test_two_files_for_one_destination_are_refused(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    boards = tmp_path / "board"
    (boards / "x" / "root").mkdir(parents=True)
    (boards / "x" / "__init__.py").write_text("NAME = 'x'\n")
    (boards / "x" / "root" / "main.py").write_text("print(1)\n")
    monkeypatch.setattr(build, "BOARDS_DIR", boards)
    with pytest.raises(build.BuildError, match=r"both go to /main\.py"):
        build.sources("x")


@pytest.mark.parametrize(("board", "own", "other"), [
    ("rp2_pico", "rp2/__init__.pyi", "pyb.pyi"),
    ("stm32_pybv11", "pyb.pyi", "rp2/__init__.pyi"),
])
def test_each_port_gets_its_own_typeshed(board: str, own: str, other: str) -> None:
    path, label = typecheck.typeshed_for(board)
    stdlib = path / "stdlib"
    assert label.startswith(typecheck.BOARD_STUBS[board])
    assert (stdlib / own).exists() and not (stdlib / other).exists()
    versions = (stdlib / "VERSIONS").read_text()
    for mod in ("machine", "micropython", "_mpy_shed", "cryptolib"):
        assert f"\n{mod}: " in versions
    # machine.pyi is this port's own, even where .venv holds the other port's copy
    _, files = typecheck._layer(typecheck.BOARD_STUBS[board], typecheck.cache_root() / "wheels")
    assert (stdlib / "machine.pyi").read_bytes() == files["machine.pyi"]


def test_typecheck_reports_port_api_misuse_against_the_repo_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "board_init.py"
    bad.write_text("import machine\n\ndef f():\n    machine.Pin(1).toggle_fast()\n")
    real = build.sources("rp2_pico")
    monkeypatch.setattr(typecheck, "sources", lambda _b: [
        (bad if dest == "/board/__init__.py" else src, dest) for src, dest in real])
    res = typecheck.check("rp2_pico", stage_root=tmp_path / "stage")
    assert len(res.errors) == 1, res.output
    assert res.errors[0].startswith(f"{bad}:4: error: \"Pin\" has no attribute \"toggle_fast\"")
    assert os.path.exists(tmp_path / "stage" / "rp2_pico" / "mypy.ini")
