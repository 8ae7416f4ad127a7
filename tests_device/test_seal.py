"""Sealed meters (issue 10, docs/SECURITY.md "Sealed meters") on a virtual meter of its own.

A sealed meter turns Ctrl-C off (micropython.kbd_intr(-1)); the virtual board's supervisor then
hands a client's Ctrl-C to the VM as a data byte, as a Pico's USB CDC does, so the REPL cannot
be reached: mpremote and ``meterctl flash`` are refused by the board itself, while the meter
goes on metering and answering the WAN. Unsealing takes an authenticated, replay-protected
command or the local button held at power-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from host_tools.headend import seal, wire
from host_tools.headend.client import LinkError, MeterError, MeterLink, open_link
from host_tools.headend.keystore import Keystore, MeterEntry
from host_tools.headend.lopa.lab import read_profile
from host_tools.headend.queries import read_log
from host_tools.sim import flashimg, fleet
from host_tools.transport.serial import Board, SealedError

from .conftest import OwnMeter, mpremote, own_meter


class Meter(OwnMeter):
    @property
    def port_link(self) -> str:
        # The meter's port by a link, as /dev/serial/by-id/... names a real board: mpremote
        # reads a /dev/pts/N path without a timeout, so only a real-port path lets it give up.
        return str(self.dir / "port")

    def link(self, timeout: float = 5.0) -> MeterLink:
        return open_link(self.port, self.keystore, None, timeout)

    def sealed_on_flash(self) -> bool:
        return fleet.exists(self.dir, "/data/sealed")  # fs/ or the flash image

    def security_log(self) -> list[str]:
        with self.link() as link:
            return [r[2] for r in read_log(link, "security")]


@pytest.fixture(scope="module")
def meter(tmp_path_factory: pytest.TempPathFactory, real_port: str | None) -> Iterator[Meter]:
    if real_port:
        pytest.skip("needs the virtual board's power, button and flash directory")
    with own_meter(tmp_path_factory.mktemp("seal"), interval_s=3) as m:
        yield Meter(m.base, m.port, m.han, m.keystore, m.meter_id)


def meterctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def sealed(m: Meter, cli: bool = False) -> None:
    if cli:
        r = meterctl("seal", "--port", m.port, "--keystore", str(m.keystore.path))
        assert r.returncode == 0, r.stderr
        assert '"sealed": true' in r.stdout
    elif not m.sealed_on_flash():
        with m.link() as link:
            assert seal.seal(link) == {"sealed": True}
    assert m.sealed_on_flash()


STORM_CUTS = 8


def wait_main_running(m: Meter) -> None:
    end = time.monotonic() + 20
    while (st := fleet.meter_status(0, m.base))["files"].get("main.py") != "running":
        # the whole status: what the VM is doing, its REPL, files, boots, crashes, SIGINTs
        assert time.monotonic() < end, json.dumps(st)
        time.sleep(0.05)


def test_a_sealed_meter_refuses_mpremote_and_flash_and_goes_on_metering(meter: Meter) -> None:
    sealed(meter, cli=True)
    with meter.link() as link:
        assert seal.is_sealed(link)
    before = fleet.meter_status(0, meter.base)
    # mpremote's own error, with what the board said
    r = mpremote(meter.port_link, "fs", "cp", __file__, ":x.py", timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "could not enter raw repl" in out and "meter sealed" in out, out
    assert not fleet.exists(meter.dir, "/x.py")
    # meterctl flash: refused, says why and how to unseal; nothing written
    r = meterctl("flash", "--port", meter.port, "--timeout", "4")
    assert r.returncode == 1
    assert "meter is sealed" in r.stderr and "meterctl unseal --port" in r.stderr, r.stderr
    assert "button at power-up" in r.stderr
    assert not [f for f in flashimg.walk(meter.dir) if f.endswith(".new")]
    # the Ctrl-Cs reached the firmware as bytes: no SIGINT, no crash, no reboot
    after = fleet.meter_status(0, meter.base)
    assert after["sigints"] == before["sigints"]
    assert (after["crashes"], after["boots"]) == (before["crashes"], before["boots"])
    assert after["files"].get("main.py") == "running"
    # and it is still a meter: READ and LoPA over the WAN
    r = meterctl("read", "--port", meter.port, "--keystore", str(meter.keystore.path), "--json")
    assert r.returncode == 0, r.stderr
    assert '"vrms"' in r.stdout
    with meter.link() as link:
        groups = json.loads(link.request_raw(wire.K_GROUPS, b""))  # the DC security module
        assert groups["groups"] == [] and "max_groups" in groups
    # lab mode needs the REPL: it says so
    with pytest.raises(SealedError, match=r"lab mode .* only while the meter is unsealed"):
        read_profile(meter.port, timeout=4)


def test_the_seal_survives_a_power_cut_and_a_ctrl_c_storm_at_boot(meter: Meter) -> None:
    sealed(meter)
    stop = threading.Event()

    def storm() -> None:
        # Ctrl-C every 10 ms through the power cut and the boot: the window before main.py
        # turns Ctrl-C off must not let anyone into the REPL.
        fd = os.open(meter.port, os.O_RDWR | os.O_NOCTTY)
        try:
            while not stop.is_set():
                os.write(fd, b"\r\x03")
                time.sleep(0.01)
        finally:
            os.close(fd)

    t = threading.Thread(target=storm)
    t.start()
    try:
        # Several cuts, as the window is short: in CI a Ctrl-C that became SIGINT between
        # the ROM's "file started" event and main.py's first line (a KeyboardInterrupt with
        # no main.py frame) once ended main.py and opened the REPL of a sealed meter.
        for _ in range(STORM_CUTS):
            fleet.power_cut(0, meter.base)
            wait_main_running(meter)
            time.sleep(0.5)
            st = fleet.meter_status(0, meter.base)
            assert st["files"].get("main.py") == "running" and st["repl"] != "raw", st
        time.sleep(1.5)
    finally:
        stop.set()
        t.join()
    st = fleet.meter_status(0, meter.base)
    assert st["files"].get("main.py") == "running", st
    with meter.link() as link:
        assert seal.is_sealed(link)
        assert link.request(wire.K_READ)["vrms"] > 0
    with Board(meter.port, timeout=4) as b, pytest.raises(SealedError, match="sealed"):
        b.enter_raw()


def test_wrong_key_and_replayed_unseal_are_refused_and_logged(meter: Meter,
                                                             tmp_path: Path) -> None:
    sealed(meter)
    # the right meter id, a wrong key: silence, logged
    forger = Keystore(tmp_path / "forger.json")
    forger.put(MeterEntry(meter.meter_id, os.urandom(32), port=meter.port))
    with open_link(meter.port, forger, None, 2.0) as link, pytest.raises(LinkError,
                                                                         match="did not answer"):
        seal.unseal(link)
    assert meter.sealed_on_flash()
    # a genuine UNSEAL, recorded and replayed once the meter is sealed again
    with meter.link() as link:
        ctr = meter.keystore.next_down_ctr(meter.meter_id)
        line = wire.to_line(wire.seal(link.keys, False, wire.K_UNSEAL, ctr, 0, b""))
        link.send_line(line)
        assert link.await_response(ctr).kind == wire.K_UNSEAL
        assert not meter.sealed_on_flash()
        seal.seal(link)
        link.send_line(line)
        resp = link.await_response(ctr)
        assert resp.kind == wire.K_ERROR
        assert wire.parse_error(resp.payload)[0] == wire.E_REPLAY
    assert meter.sealed_on_flash()
    log = meter.security_log()
    assert any("bad mac" in t for t in log)
    assert any(f"replay ctr {ctr}" in t for t in log)
    assert "seal: unsealed (WAN command)" in log


def test_an_authenticated_unseal_opens_the_repl_again(meter: Meter) -> None:
    sealed(meter)
    r = meterctl("unseal", "--port", meter.port, "--keystore", str(meter.keystore.path))
    assert r.returncode == 0, r.stderr
    assert '"sealed": false' in r.stdout and not meter.sealed_on_flash()
    r = meterctl("flash", "--port", meter.port)
    assert r.returncode == 0, r.stderr
    wait_main_running(meter)
    r = mpremote_on_firmware(meter, "exec", "print(6 * 7)")
    assert r.returncode == 0 and r.stdout.strip() == "42", r.stdout + r.stderr
    assert isinstance(read_profile(meter.port), dict)  # lab mode works again
    wait_main_running(meter)
    with meter.link() as link:
        assert not seal.is_sealed(link)
        with pytest.raises(MeterError, match="UNKNOWN_KIND"):
            link.request(0x4F)  # next to the seal kinds, but not one


def mpremote_on_firmware(m: Meter, *args: str) -> subprocess.CompletedProcess[str]:
    """mpremote interrupting the running firmware. The virtual board's VM now and then dies on
    the interrupt itself: a KeyboardInterrupt that the unix port raises from its SIGINT handler
    inside the GC leaves the heap locked ("MemoryError: ... heap is locked", see
    host_tools/doctor.py `_interrupt`; no Pico does this). It then reboots into main.py, and a
    user tries again once the firmware has settled: so does this, up to twice."""
    for _ in range(2):
        time.sleep(1.5)  # main.py past its imports (an interrupt amid them is likelier to hit)
        r = mpremote(m.port_link, *args)
        if r.returncode == 0 or "heap is locked" not in r.stdout:
            return r
        wait_main_running(m)
    return mpremote(m.port_link, *args)


def test_the_button_held_at_power_up_unseals(meter: Meter) -> None:
    sealed(meter)
    fleet.set_inputs(0, {"button": 1}, meter.base)
    try:
        fleet.power_cut(0, meter.base)
        end = time.monotonic() + 30
        while meter.sealed_on_flash():
            assert time.monotonic() < end, "the button held at power-up did not unseal"
            time.sleep(0.1)
    finally:
        fleet.set_inputs(0, {"button": 0}, meter.base)
    wait_main_running(meter)
    with meter.link() as link:
        assert not seal.is_sealed(link)
    assert "seal: unsealed (button held at power-up)" in meter.security_log()
    with Board(meter.port) as b:
        b.enter_raw()
        assert b.eval("6 * 7") == 42
        b.soft_reset_to_main()
