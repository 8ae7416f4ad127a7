"""An unsupported MicroPython on a virtual meter: `meterctl flash` and `meterctl doctor` refuse
it with one line naming the firmware to flash, exit non-zero and write nothing; the firmware's
main.py prints one line at boot and leaves the board at the REPL without starting the meter.

The virtual board is the unix VM (1.29.0-preview, supported as the virtual board), so the
checks are made to see another board: on the host, the reader of the board's answer is
monkeypatched (host_tools.flash.versions.read_identity); on the meter, a boot.py replaces
port_check.identity before main.py runs (a board runs boot.py first, in the same
interpreter, as the virtual board does)."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from host_tools.cli import main as cli
from host_tools.doctor import doctor
from host_tools.flash import versions
from host_tools.flash.deploy import flash
from host_tools.sim import fleet
from host_tools.transport.serial import Board, BoardError

from .conftest import UNIX_VM
from .test_flash import firmware_copy

pytestmark = pytest.mark.profile(UNIX_VM, why="the unix VM's own identity (v1.29.0-preview, "
                                 "supported as the virtual board) is what each check alters")

NEEDS_SIM = "needs the virtual board's host-side control (running against --port)"
OLD_PICO = (
    "MicroPython v1.24.1 on Raspberry Pi Pico with RP2040 is not supported (needs v1.26-v1.28): "
    "flash RPI_PICO v1.28.0 from https://micropython.org/download/RPI_PICO/")
# boot.py: the firmware's check sees a Pico on v1.24.1 (what its identity() would say there)
BOOT_OLD_PICO = ("import port_check\n"
                 "port_check.identity = lambda: ((1, 24, 1, ''), 'rp2', "
                 "'Raspberry Pi Pico with RP2040', '', False)\n")


@dataclasses.dataclass
class Meter:
    base: Path
    port: str

    @property
    def fs(self) -> Path:
        return fleet.meter_dir(self.base, 0) / "fs"

    def status(self) -> dict[str, object]:
        return fleet.meter_status(0, self.base)


@pytest.fixture(scope="module")
def meter(tmp_path_factory: pytest.TempPathFactory, real_port: str | None) -> Iterator[Meter]:
    """One flashed virtual meter of this module's own."""
    if real_port:
        pytest.skip(NEEDS_SIM)
    base = tmp_path_factory.mktemp("versions-fleet")
    recs = fleet.start(1, base)
    try:
        m = Meter(base, recs[0]["port"])
        flash(m.port, timeout=30)
        wait_main(m, "running")
        yield m
    finally:
        fleet.stop(base)


def wait_main(m: Meter, state: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not str(m.status()["files"].get("main.py", "")).startswith(state):  # type: ignore[attr-defined]
        assert time.monotonic() < end, m.status()
        time.sleep(0.05)


def heartbeats(m: Meter, seconds: float) -> int:
    before = int(str(m.status()["led_toggles"]))
    time.sleep(seconds)
    return int(str(m.status()["led_toggles"])) - before


def snapshot(m: Meter) -> dict[str, tuple[str, int]]:
    """What flash writes: every file of the meter's filesystem but the firmware's own /data
    (which the running meter writes), and the ROMFS partition; (sha256, mtime) each."""
    files = [p for p in sorted(m.fs.rglob("*"))
             if p.is_file() and p.relative_to(m.fs).parts[0] != "data"]
    rom = fleet.meter_dir(m.base, 0) / "romfs.bin"
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in [*files, rom] if p.exists()}


def seen_as(monkeypatch: pytest.MonkeyPatch, **change: object) -> None:
    """The host's reader returns the board's real answer with ``change`` applied."""
    real = versions.read_identity

    def fake(b: Board) -> versions.Identity:
        return dataclasses.replace(real(b), **change)  # type: ignore[arg-type]

    monkeypatch.setattr(versions, "read_identity", fake)


def old_pico(monkeypatch: pytest.MonkeyPatch) -> None:
    seen_as(monkeypatch, version=versions.parse_version("1.24.1"), platform="rp2",
            machine="Raspberry Pi Pico with RP2040", build="")


def test_the_virtual_board_itself_is_supported(meter: Meter) -> None:
    with Board(meter.port) as b:
        b.enter_raw(soft_reset=False)
        try:
            ident = versions.check(b)
        finally:
            b.soft_reset_to_main()
    assert ident.virtual and ident.version == versions.Version(1, 29, 0, "preview")
    assert all(ident.modules.values()), ident.modules
    wait_main(meter, "running")


def test_flash_refuses_an_old_pico_and_writes_nothing(meter: Meter, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(meter)
    assert {"main.py", ".flash-manifest.json", "romfs.bin"} <= {Path(p).name for p in before}
    old_pico(monkeypatch)
    # a different firmware: had anything gone through, the filesystem would show it
    with pytest.raises(versions.UnsupportedBoard) as e:
        flash(meter.port, firmware_dir=firmware_copy(tmp_path, "never"), timeout=30)
    assert str(e.value) == OLD_PICO
    assert snapshot(meter) == before
    wait_main(meter, "running")  # the old firmware goes on
    assert heartbeats(meter, 1.5) >= 2  # toggled every 500 ms (tasks/status.py)


def test_cli_flash_and_doctor_refuse_in_one_line(meter: Meter, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(meter)
    old_pico(monkeypatch)
    for args in (["flash", "--port", meter.port, "--firmware", str(firmware_copy(tmp_path, "x"))],
                 ["doctor", "--port", meter.port]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 1, (args, r.output)
        # (flash's transient progress bar leaves an empty line where stderr is no terminal)
        assert [ln for ln in r.stderr.splitlines() if ln.strip()] == [f"error: {OLD_PICO}"], \
            r.stderr
        assert r.stdout == ""
        wait_main(meter, "running")
    assert snapshot(meter) == before


def test_doctor_refuses_a_missing_module(meter: Meter, monkeypatch: pytest.MonkeyPatch) -> None:
    real = versions.read_identity

    def without_hashlib(b: Board) -> versions.Identity:
        i = real(b)
        return dataclasses.replace(i, modules=dict(i.modules, hashlib=False))

    monkeypatch.setattr(versions, "read_identity", without_hashlib)
    before = snapshot(meter)
    with pytest.raises(versions.UnsupportedBoard) as e:
        doctor(meter.port, timeout=30)
    msg = str(e.value)
    assert msg.startswith("MicroPython v1.29.0-preview on linux"), msg
    assert msg.endswith(" has no hashlib (SHA-256 for HMAC, HKDF and LoPA): use the virtual "
                        "board's own VM (meterctl sim start)"), msg
    assert snapshot(meter) == before
    wait_main(meter, "running")


def test_doctor_on_a_supported_board_reports_the_modules(meter: Meter) -> None:
    r = doctor(meter.port, timeout=30)
    assert r.modules == dict.fromkeys(versions.MODULES, True)
    assert "build: hashlib yes" in "\n".join(r.lines())
    wait_main(meter, "running")


def test_firmware_stays_at_the_repl_on_an_old_version(meter: Meter) -> None:
    """main.py sees v1.24.1 on a Pico: one line, then the REPL; the meter never starts (no
    kernel, no heartbeat). Then without the patch it boots again."""
    with Board(meter.port, timeout=30) as b:
        b.enter_raw(soft_reset=True)
        b.exec(f"f = open('/boot.py', 'w')\nf.write({BOOT_OLD_PICO!r})\nf.close()\n")
        try:
            b.soft_reset_to_main()
            out = b.t.read_until(1, b">>> ", timeout=30)
            text = out.decode(errors="replace").replace("\r\n", "\n")
            lines = [ln for ln in text.split("\n") if ln and ln != ">>> "]
            assert OLD_PICO in lines, text
            assert "Traceback" not in text, text
            wait_main(meter, "ended")
            assert meter.status()["files"]["main.py"] == "ended"  # type: ignore[index]
            assert heartbeats(meter, 0.8) == 0
            b.enter_raw(soft_reset=False)  # the REPL answers: the board is at the REPL
            assert b.eval("'kernel' in __import__('sys').modules") is False
        finally:
            b.enter_raw(soft_reset=False)
            b.exec("import os\nos.remove('/boot.py')\n")
            b.soft_reset_to_main()
    wait_main(meter, "running")
    assert heartbeats(meter, 1.5) >= 2  # toggled every 500 ms (tasks/status.py)


def test_a_sealed_meter_on_an_old_version_keeps_its_repl_closed(meter: Meter) -> None:
    """A downgrade never opens a seal: main.py prints its line and idles with Ctrl-C still
    off, so no client reaches the REPL. (Last in the module: the meter is unsealed afterwards
    on its flash, the host directory, and powered up again.)"""
    with Board(meter.port, timeout=30) as b:
        b.enter_raw(soft_reset=True)
        # /data/sealed: what lib/seal.py writes on SEAL, and all main.py looks for
        b.exec(f"f = open('/boot.py', 'w')\nf.write({BOOT_OLD_PICO!r})\nf.close()\n"
               "open('/data/sealed', 'w').close()\n")
        b.soft_reset_to_main()
        out = b.t.read_until(1, OLD_PICO.encode(), timeout=30)
    try:
        assert OLD_PICO.encode() in out, out
        time.sleep(0.5)
        assert meter.status()["files"]["main.py"] == "running"  # type: ignore[index]
        assert heartbeats(meter, 0.8) == 0  # idling: the meter did not start
        with Board(meter.port, timeout=4) as b, pytest.raises(BoardError):
            b.enter_raw(soft_reset=False)
        assert meter.status()["files"]["main.py"] == "running"  # type: ignore[index]
    finally:
        (meter.fs / "boot.py").unlink()
        (meter.fs / "data" / "sealed").unlink()
        fleet.power_cut(0, meter.base)
    wait_main(meter, "running")
    assert heartbeats(meter, 1.5) >= 2  # toggled every 500 ms (tasks/status.py)
