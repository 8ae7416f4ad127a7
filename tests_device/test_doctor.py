"""`meterctl doctor` against a board. (The firmware's boot under the heap caps of the real
boards is in test_heap.py, which uses this module's fleet helpers.)

Virtual meters come from this module's own fleets (not the session's three), so these tests
stay out of the others' way. With --port the doctor tests run against the real board (flashed
beforehand); what needs the virtual board's host side (a blank board, the heartbeat counter)
is skipped, and the skip says why."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from host_tools import doctor as doctor_mod
from host_tools.doctor import doctor
from host_tools.flash import versions
from host_tools.flash.build import FIRMWARE_DIR
from host_tools.flash.deploy import flash
from host_tools.headend.keystore import Keystore
from host_tools.headend.provision import provision
from host_tools.sim import fleet
from host_tools.transport.serial import BoardError

NEEDS_SIM = "needs the virtual board's host-side control (running against --port)"
FW_VERSION = re.search(r'^VERSION = "([^"]+)"', (FIRMWARE_DIR / "meter.py").read_text(),
                       re.M).group(1)  # type: ignore[union-attr]


@dataclass
class Meters:
    base: Path

    def port(self, i: int) -> str:
        return str(fleet.meter_status(i, self.base)["port"])

    def status(self, i: int) -> dict[str, object]:
        return fleet.meter_status(i, self.base)


def start_fleet(tmp: Path, n: int, heap: str | None, profile: str | None = None,
                board_pools: bool = False) -> Meters:
    fleet.start(n, tmp, heap=heap, profile=profile, board_pools=board_pools)
    return Meters(tmp)


@pytest.fixture(scope="module")
def meters(tmp_path_factory: pytest.TempPathFactory, real_port: str | None) -> Iterator[Meters]:
    """Meter 0 is flashed, meter 1 stays blank (a fresh MicroPython board)."""
    if real_port:
        pytest.skip(NEEDS_SIM)
    # the profile's own heap (a board profile's with its ballast; unix: 192K)
    m = start_fleet(tmp_path_factory.mktemp("doctor-fleet"), 2, None)
    try:
        flash(m.port(0))
        wait_running(m, 0)
        yield m
    finally:
        fleet.stop(m.base)


@pytest.fixture
def flashed_port(real_port: str | None, request: pytest.FixtureRequest) -> str:
    """The board doctor examines: --port (flashed beforehand), or virtual meter 0."""
    if real_port:
        return real_port
    m: Meters = request.getfixturevalue("meters")
    assert_beating(m, 0)
    return m.port(0)


def wait_running(m: Meters, i: int, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while m.status(i)["files"].get("main.py") != "running":  # type: ignore[attr-defined]
        assert time.monotonic() < end, m.status(i)
        time.sleep(0.05)


def heartbeat(m: Meters, i: int) -> int:
    return int(m.status(i)["led_toggles"])  # type: ignore[call-overload]


def assert_beating(m: Meters, i: int) -> None:
    """main.py runs and the kernel's LED heartbeat (the status task, every 500 ms) toggles."""
    wait_running(m, i)
    before = heartbeat(m, i)
    end = time.monotonic() + 3
    while heartbeat(m, i) <= before + 1:
        assert time.monotonic() < end, f"no heartbeat: {m.status(i)}"
        time.sleep(0.1)


def meterctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_doctor_reports_the_board(flashed_port: str) -> None:
    r = doctor(flashed_port)
    assert r.implementation.startswith("micropython ")
    assert r.platform in ("linux", "rp2", "pyboard")
    assert r.firmware == FW_VERSION and r.firmware_running
    assert r.board is not None and r.flashed_board == r.board
    assert r.mem_free > 0 and r.mem_alloc > 0
    assert r.fs_total and r.fs_free is not None and 0 < r.fs_free < r.fs_total
    assert set(r.pins) == {"relay", "button", "tamper", "led"}
    assert all(v in ("0", "1") for v in r.pins.values()), r.pins  # every pin answers
    assert r.adc_samples and r.adc_rate_hz, [p.problem for p in r.problems]  # the ADC's answer
    # the wait's samples at the board's rate (the board times the wait: a busy host stretches
    # it), give or take the scheduling, up to the probe's 512-sample buffer
    assert r.adc_ms is not None and r.adc_ms >= 100
    due = r.adc_rate_hz * r.adc_ms / 1000
    assert min(0.5 * due, 512) <= r.adc_samples <= min(2 * due, 512)
    # what the firmware needs is there (versions.check refuses a board without it); cryptolib
    # and _thread only where the build has them (the official Pyboard has neither)
    assert set(r.modules) == set(versions.MODULES)
    assert all(r.modules[m] for m in versions.REQUIRED_MODULES), r.modules
    text = "\n".join(r.lines())
    assert f"firmware: {FW_VERSION} (was running)" in text
    assert "pin relay: answers, reads" in text


def back_in_main_py(port: str, request: pytest.FixtureRequest, real_port: str | None) -> None:
    """main.py runs again: the heartbeat on a virtual meter; on a real board, a second doctor
    finds the firmware running."""
    if real_port:
        time.sleep(2)
        assert doctor(port).firmware_running
    else:
        assert_beating(request.getfixturevalue("meters"), 0)


def test_doctor_returns_to_main_py(flashed_port: str, request: pytest.FixtureRequest,
                                   real_port: str | None) -> None:
    doctor(flashed_port)
    back_in_main_py(flashed_port, request, real_port)


def test_blank_board_has_no_firmware(meters: Meters) -> None:
    r = doctor(meters.port(1))
    assert r.firmware is None and r.board is None and not r.firmware_running
    assert [p.problem for p in r.problems] == ["no firmware: /main.py is missing"]
    assert r.problems[0].fix == f"meterctl flash --port {meters.port(1)}"
    assert r.lines()[-1] == "1 problem(s) found"


def test_keys_problem_until_provisioned(meters: Meters, tmp_path: Path) -> None:
    # Between two sessions the meter gets to run: a session that connects while the previous
    # one's soft reset still boots the meter stops main.py before it has the kernel (a Ctrl-C
    # then is handed to main.py's first lines, tests_device/test_sim_ctrl_c.py), and doctor
    # then rightly reports "main.py was not running".
    port = meters.port(0)
    assert_beating(meters, 0)
    r = doctor(port)
    keys = [p for p in r.problems if "no WAN keys" in p.problem]
    assert len(keys) == 1 and keys[0].fix == f"meterctl provision --port {port}"
    assert_beating(meters, 0)
    cli = meterctl("doctor", "--port", port)
    assert cli.returncode == 1
    assert re.search(r"^problem: no WAN keys provisioned .*; fix: meterctl provision --port ",
                     cli.stdout, re.M), cli.stdout
    assert_beating(meters, 0)
    provision(port, Keystore(tmp_path / "keystore.json"))
    assert_beating(meters, 0)
    r = doctor(port)
    assert r.keys and r.ok, r.lines()
    assert_beating(meters, 0)
    cli = meterctl("doctor", "--port", port)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert cli.stdout.splitlines()[-1] == "ok: nothing wrong found"
    assert re.search(r"^clock: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", cli.stdout, re.M)
    assert_beating(meters, 0)
    d = json.loads(meterctl("doctor", "--port", port, "--json").stdout)
    assert d["ok"] is True and d["keys"] is True and d["problems"] == [], d["problems"]
    assert d["port"] == port and abs(d["rtc"] - time.time()) < 60  # epoch seconds
    assert_beating(meters, 0)


def test_soft_resets_into_main_py_even_when_the_probe_fails(
        flashed_port: str, request: pytest.FixtureRequest, real_port: str | None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as mp:
        mp.setattr(doctor_mod, "PROBES", (("mem", "raise ValueError('probe broke')\n"),))
        with pytest.raises(BoardError, match="reading mem failed on the board: "
                                             "ValueError: probe broke"):
            doctor(flashed_port)
    back_in_main_py(flashed_port, request, real_port)
