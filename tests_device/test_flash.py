"""meterctl flash against a board: incremental, atomic, verified, and safe on bad input."""

from __future__ import annotations

import os
import pty
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from host_tools.flash.build import FIRMWARE_DIR
from host_tools.flash.deploy import flash
from host_tools.sim import fleet
from host_tools.transport.serial import BoardError

from .conftest import UNIX_VM, Fleet, mpremote

# the tests of meterctl flash's ROMFS partition: only the unix VM has one (no official Pico or
# Pyboard build does: docs/virtual-board.md "Port profiles")
ROMFS = pytest.mark.profile(UNIX_VM, why="ROMFS: a partition only the unix VM has")


def meterctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def firmware_copy(tmp_path: Path, version: str) -> Path:
    """A firmware tree whose main.py prints a version marker and keeps running."""
    fw = tmp_path / f"fw-{version}"
    shutil.copytree(FIRMWARE_DIR, fw, ignore=shutil.ignore_patterns("__pycache__"))
    (fw / "main.py").write_text(
        "import time\nimport marker\nprint('firmware', marker.VERSION)\n"
        "while True:\n    time.sleep_ms(50)\n")
    (fw / "marker.py").write_text(f"VERSION = {version!r}\n")
    return fw


def board_version(port: str) -> str:
    r = mpremote(port, "exec", "import marker; print(marker.VERSION)")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def wait_main_running(sim: Fleet, i: int) -> None:
    end = time.monotonic() + 5
    while sim.status(i)["files"].get("main.py") != "running":
        assert time.monotonic() < end, sim.status(i)
        time.sleep(0.05)


@ROMFS
def test_flash_then_reflash_transfers_nothing(sim: Fleet, tmp_path: Path) -> None:
    port = sim.port(1)
    assert meterctl("flash", "--port", port).returncode == 0  # our modules in /rom
    # then another image with its modules on the filesystem (as on a board without a ROMFS
    # partition): the partition's image of the earlier flash is erased, since a module
    # there that this image lacks could still be imported
    r = meterctl("flash", "--port", port, "--no-romfs", "--firmware",
                 str(firmware_copy(tmp_path, "other")))
    assert r.returncode == 0, r.stderr
    assert "- /rom/meter.mpy" in r.stdout
    assert "marker.mpy" in mpremote(port, "fs", "ls", ":").stdout
    r = mpremote(port, "exec", "import os; print(os.listdir('/rom'))")
    assert r.returncode != 0 and "ENOENT" in r.stdout + r.stderr, r.stdout
    # so this flash has something to do: its modules go to /rom
    r = meterctl("flash", "--port", port)
    assert r.returncode == 0, r.stderr
    assert "deployed as .mpy for x64" in r.stdout
    assert "modules in the ROMFS partition at /rom" in r.stdout
    # the filesystem keeps main.py; the old modules there, which would shadow /rom, go
    assert "+ /main.py" in r.stdout and "- /marker.mpy" in r.stdout
    assert "+ /rom/meter.mpy" in r.stdout and "+ /rom/lib/wan.mpy" in r.stdout
    wait_main_running(sim, 1)
    toggles = sim.status(1)["led_toggles"]
    time.sleep(0.7)
    assert sim.status(1)["led_toggles"] > toggles  # the firmware's heartbeat runs
    listing = mpremote(port, "fs", "ls", ":").stdout
    assert "marker.mpy" not in listing and "meter.mpy" not in listing
    assert "tasks/" not in listing and "board/" not in listing  # emptied directories go too
    r = meterctl("flash", "--port", port)
    assert r.returncode == 0, r.stderr
    assert "nothing to transfer" in r.stdout
    wait_main_running(sim, 1)


@ROMFS
def test_incremental_update_and_stale_removal(sim: Fleet, tmp_path: Path) -> None:
    port = sim.port(1)
    fw = firmware_copy(tmp_path, "1")
    (fw / "extra.py").write_text("X = 1\n")
    assert meterctl("flash", "--port", port, "--firmware", str(fw)).returncode == 0
    # a file of the user's own, which flash must never touch
    mpremote(port, "exec", "f = open('user_data.txt', 'w'); f.write('mine'); f.close()")
    assert board_version(port) == "1"

    (fw / "marker.py").write_text("VERSION = '2'\n")
    (fw / "extra.py").unlink()
    r = meterctl("flash", "--port", port, "--firmware", str(fw))
    assert r.returncode == 0, r.stderr
    assert "wrote 1 file(s)" in r.stdout  # only marker.mpy: the rest is unchanged
    assert "+ /rom/marker.mpy" in r.stdout and "- /rom/extra.mpy" in r.stdout
    assert board_version(port) == "2"
    listing = mpremote(port, "fs", "ls", ":").stdout
    assert "extra.mpy" not in listing
    assert "extra.mpy" not in mpremote(port, "fs", "ls", ":/rom").stdout
    assert ".new" not in listing
    assert "user_data.txt" in listing
    mpremote(port, "fs", "rm", ":user_data.txt")


def test_source_mode_copies_py(sim: Fleet, tmp_path: Path) -> None:
    port = sim.port(1)
    fw = firmware_copy(tmp_path, "src")
    r = meterctl("flash", "--port", port, "--firmware", str(fw), "--source")
    assert r.returncode == 0, r.stderr
    assert "deployed as source" in r.stdout
    listing = mpremote(port, "fs", "ls", ":").stdout
    assert "marker.py" in listing and "marker.mpy" not in listing
    assert board_version(port) == "src"


def test_syntax_error_deploys_nothing(sim: Fleet, tmp_path: Path) -> None:
    port = sim.port(1)
    good = firmware_copy(tmp_path, "good")
    assert meterctl("flash", "--port", port, "--firmware", str(good)).returncode == 0
    bad = firmware_copy(tmp_path, "bad")
    (bad / "broken.py").write_text("x = 1\ndef f(:\n    pass\n")
    r = meterctl("flash", "--port", port, "--firmware", str(bad))
    assert r.returncode == 1
    assert "broken.py:2:" in r.stderr and "SyntaxError" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    wait_main_running(sim, 1)  # the old firmware is back at work
    assert board_version(port) == "good"
    assert "broken" not in mpremote(port, "fs", "ls", ":").stdout


def test_missing_port_is_one_line_error() -> None:
    r = meterctl("flash", "--port", "/dev/does-not-exist")
    assert r.returncode == 1
    assert r.stderr.strip() == "error: /dev/does-not-exist: no such port"


def test_auto_port_without_boards() -> None:
    r = meterctl("flash", "--port", "auto")
    assert r.returncode == 1
    assert "no MicroPython board found" in r.stderr


def test_silent_board_times_out_cleanly() -> None:
    master, slave = pty.openpty()  # a port with nothing behind it
    try:
        t0 = time.monotonic()
        r = meterctl("flash", "--port", os.ttyname(slave), "--timeout", "2")
        assert time.monotonic() - t0 < 30
        assert r.returncode == 1
        assert "does not answer" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        os.close(master)
        os.close(slave)


def old_flashed_and_new(tmp_path: Path, base: Path) -> tuple[str, Path]:
    """A meter started in base with firmware "old" flashed; a firmware "new" with 20 KB more to
    write, not flashed. Returns (port, new firmware directory)."""
    port = str(fleet.start(1, base)[0]["port"])
    try:
        assert meterctl("flash", "--port", port, "--firmware",
                        str(firmware_copy(tmp_path, "old"))).returncode == 0
    except BaseException:
        fleet.stop(base)
        raise
    new = firmware_copy(tmp_path, "new")
    (new / "big.py").write_text("DATA = %r\n" % ("x" * 20000))
    return port, new


def test_disconnect_mid_flash_keeps_old_firmware(tmp_path: Path, real_port: str | None) -> None:
    if real_port:
        pytest.skip("needs the virtual board: the test pulls the meter's cable")
    base = tmp_path / "fleet"
    port, new = old_flashed_and_new(tmp_path, base)
    try:
        sup = fleet.meter_status(0, base)["pid"]
        pulled: list[str] = []

        def pull_cable(stage: str, done: int, total: int) -> None:
            if stage.startswith("write") and done > 2000 and not pulled:
                os.kill(sup, signal.SIGKILL)  # the port vanishes mid-transfer
                pulled.append(stage)

        with pytest.raises(BoardError, match="disconnected"):
            flash(port, firmware_dir=new, progress=pull_cable)
        assert pulled
    finally:
        fleet.stop(base)
    port = fleet.start(1, base)[0]["port"]  # power the board up again
    try:
        st = fleet.meter_status(0, base)
        end = time.monotonic() + 5
        while st["files"].get("main.py") != "running" and time.monotonic() < end:
            time.sleep(0.05)
            st = fleet.meter_status(0, base)
        assert st["files"].get("main.py") == "running"
        assert board_version(port) == "old"
        # and the next flash completes the update
        assert meterctl("flash", "--port", port, "--firmware", str(new)).returncode == 0
        assert board_version(port) == "new"
    finally:
        fleet.stop(base)


@ROMFS
def test_disconnect_mid_romfs_image_leaves_the_partition_and_the_old_firmware(
        tmp_path: Path, real_port: str | None) -> None:
    """The ROMFS image crosses the line as a staged file, and the board copies it into its
    partition only once its sha256 matches: a cable pulled (here with the board's power)
    while the image is on its way leaves the partition as it was, the old firmware boots from
    it, and the next flash writes the image, verified."""
    if real_port:
        pytest.skip("needs the virtual board: the test pulls the meter's cable")
    base = tmp_path / "fleet"
    port, new = old_flashed_and_new(tmp_path, base)
    try:
        part = Path(str(fleet.meter_status(0, base)["dir"])) / "romfs.bin"
        old_image = part.read_bytes()
        sup = fleet.meter_status(0, base)["pid"]
        pulled: list[int] = []

        def pull_cable(stage: str, done: int, total: int) -> None:
            if stage == "write ROMFS image" and done > 4096 and not pulled:
                pulled.append(done)
                os.kill(sup, signal.SIGKILL)

        with pytest.raises(BoardError, match="disconnected"):
            flash(port, firmware_dir=new, progress=pull_cable)
        assert pulled
        assert part.read_bytes() == old_image
    finally:
        fleet.stop(base)
    port = fleet.start(1, base)[0]["port"]
    try:
        _boots(base)
        assert board_version(port) == "old"
        r = meterctl("flash", "--port", port, "--firmware", str(new))
        assert r.returncode == 0, r.stdout + r.stderr
        assert board_version(port) == "new"
        assert ".romfs-image" not in mpremote(port, "fs", "ls", ":").stdout
        assert int(fleet.meter_status(0, base)["crashes"]) == 0
    finally:
        fleet.stop(base)


@ROMFS
@pytest.mark.parametrize("mode", ["flip", "drop"])
def test_romfs_image_damaged_on_the_line_is_refused_and_the_old_firmware_boots(
        tmp_path: Path, real_port: str | None, mode: str) -> None:
    """One bit flipped, or one byte lost, in the middle of the ROMFS image: the image is
    refused before the partition is touched, and the board boots the firmware it had, whose
    modules are in that partition."""
    if real_port:
        pytest.skip("needs the virtual board: it damages the serial link on request")
    base = tmp_path / "fleet"
    port, new = old_flashed_and_new(tmp_path, base)
    mdir = fleet.meter_dir(base, 0)
    part = mdir / "romfs.bin"
    try:
        old_image = part.read_bytes()
        for _ in range(3):  # the fault lands in the image's bytes (big.py's "x"), not framing
            err, hit = _flash_with_fault(port, new, mdir, "write ROMFS image", {"mode": mode},
                                         romfs=True)
            assert part.read_bytes() == old_image
            _boots(base)
            assert board_version(port) == "old"
            if hit == ord("x"):
                break
        assert hit == ord("x")
        assert "arrived damaged" in err and "previous firmware is unchanged" in err, err
    finally:
        fleet.stop(base)

def _fault_hit(mdir: Path) -> int:
    """The byte the meter's last link fault hit (its supervisor logs it)."""
    lines = [ln for ln in (mdir / "supervisor.log").read_text().splitlines()
             if "link fault:" in ln]
    return int(lines[-1].rsplit("(0x", 1)[1].rstrip(")"), 16)


def _boots(base: Path) -> None:
    """Power the meter off and on; return once its main.py runs."""
    fleet.ctl(fleet.meter_dir(base, 0), {"cmd": "power-cut", "off_s": 0.05}, timeout=60)
    end = time.monotonic() + 30  # a deadline: a boot beside `make test` and `make mutate`
    while fleet.meter_status(0, base)["files"].get("main.py") != "running":
        assert time.monotonic() < end, fleet.meter_status(0, base)
        time.sleep(0.05)


def _flash_with_fault(port: str, new: Path, mdir: Path, stage: str, fault: dict[str, object],
                      romfs: bool) -> tuple[str, int]:
    """Flash `new`, damaging the link once while `stage` is past its first 4 KB; (the error
    the flash stopped with, the byte the fault hit)."""
    armed: list[int] = []

    def arm(st: str, done: int, total: int) -> None:
        if st == stage and done > 4096 and not armed:
            fleet.ctl(mdir, {"cmd": "link-fault", "dir": "in", "after": 200, **fault})
            armed.append(done)

    with pytest.raises(BoardError) as e:
        flash(port, firmware_dir=new, romfs=romfs, progress=arm, timeout=10)
    assert armed
    return str(e.value), _fault_hit(mdir)


@pytest.mark.parametrize("mode", ["flip", "drop"])
def test_file_damaged_on_the_line_is_refused_and_the_old_firmware_boots(
        tmp_path: Path, real_port: str | None, mode: str) -> None:
    """One bit flipped, or one byte lost, on the way to the board in the middle of a file:
    the staged file's sha256 does not match, the flash stops before anything is committed,
    and the board boots the firmware it had; a clean flash afterwards completes."""
    if real_port:
        pytest.skip("needs the virtual board: it damages the serial link on request")
    base = tmp_path / "fleet"
    port = str(fleet.start(1, base)[0]["port"])
    mdir = fleet.meter_dir(base, 0)
    try:
        r = meterctl("flash", "--port", port, "--no-romfs", "--firmware",
                     str(firmware_copy(tmp_path, "old")))
        assert r.returncode == 0, r.stderr
        new = firmware_copy(tmp_path, "new")
        (new / "big.py").write_text("DATA = %r\n" % ("x" * 30000))
        for _ in range(3):  # the fault lands in the file's bytes (an "x"), not the framing
            err, hit = _flash_with_fault(port, new, mdir, "write /big.mpy", {"mode": mode},
                                         romfs=False)
            _boots(base)
            assert board_version(port) == "old"
            if hit == ord("x"):
                break
        assert hit == ord("x")
        assert "/big.mpy arrived damaged" in err and "previous firmware is unchanged" in err
        assert meterctl("flash", "--port", port, "--no-romfs", "--firmware",
                        str(new)).returncode == 0
        assert board_version(port) == "new"
    finally:
        fleet.stop(base)


def test_cable_pulled_mid_file_leaves_the_old_firmware(tmp_path: Path,
                                                       real_port: str | None) -> None:
    """The cable pulled (the link cut) in the middle of a file: the flash stops with a clear
    error, the board keeps running its old firmware, and once plugged in again a flash
    completes."""
    if real_port:
        pytest.skip("needs the virtual board: it damages the serial link on request")
    base = tmp_path / "fleet"
    port = str(fleet.start(1, base)[0]["port"])
    mdir = fleet.meter_dir(base, 0)
    link = str(mdir / "port")
    try:
        assert meterctl("flash", "--port", port, "--no-romfs", "--firmware",
                        str(firmware_copy(tmp_path, "old"))).returncode == 0
        new = firmware_copy(tmp_path, "new")
        (new / "big.py").write_text("DATA = %r\n" % ("x" * 30000))
        err, _ = _flash_with_fault(link, new, mdir, "write /big.mpy", {"mode": "cut"},
                                   romfs=False)
        assert "disconnected" in err or "could not" in err or "timed out" in err, err
        time.sleep(1.0)  # plugged in again
        _boots(base)
        assert board_version(link) == "old"
        assert meterctl("flash", "--port", link, "--no-romfs", "--firmware",
                        str(new)).returncode == 0
        assert board_version(link) == "new"
    finally:
        fleet.stop(base)
