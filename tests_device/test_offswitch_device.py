"""The off-switch, prepaid credit and the HAN data diode on a virtual meter (its own fleet):
DSMR 5 telegrams on the HAN pty that dsmr-parser accepts, nothing written to the HAN ever
reaching the meter, the switch cycle (off opens; on arms; only the button closes), forged,
replayed and misaddressed commands refused and logged, the tamper latch, the relay across a
power cut, and a zero-credit local disconnect."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dsmr_parser import telegram_specifications
from dsmr_parser.parsers import TelegramParser

from host_tools.headend import switch, wire
from host_tools.headend.client import MeterLink, open_link
from host_tools.headend.keystore import Keystore
from host_tools.headend.queries import read_log
from host_tools.sim import fleet, relay

from .conftest import own_meter

LIMITS = switch.Limits(max_per_hour=60, min_spacing_s=1, arm_window_s=20)


@dataclass
class Meter:
    base: Path
    port: str
    han: str
    keystore: Keystore
    meter_id: int
    last_op: float = 0.0

    def link(self) -> MeterLink:
        return open_link(self.port, self.keystore, None, 5.0)

    def switch(self, op: str) -> switch.Reply:
        # The off-switch's minimum spacing (1 s here) between switching commands.
        time.sleep(max(0.0, self.last_op + 1.1 - time.monotonic()))
        with self.link() as link:
            try:
                return switch.switch(link, op)
            finally:
                self.last_op = time.monotonic()

    def log(self, name: str) -> list[str]:
        with self.link() as link:
            return [r[2] for r in read_log(link, name)]

    def relay(self) -> dict[str, Any]:
        return relay.relay(0, self.base)


@pytest.fixture(scope="module")
def meter(tmp_path_factory: pytest.TempPathFactory, real_port: str | None) -> Iterator[Meter]:
    if real_port:
        pytest.skip("needs the virtual board's relay, button and tamper")
    with own_meter(tmp_path_factory.mktemp("offswitch"), interval_s=3,
                   offswitch_limits=LIMITS) as m:
        yield Meter(m.base, m.port, m.han, m.keystore, m.meter_id)


def meterctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *args], capture_output=True,
                          text=True, timeout=60)


# -- the HAN data diode ---------------------------------------------------------------------
def test_han_pty_carries_dsmr5_telegrams_that_dsmr_parser_accepts(meter: Meter) -> None:
    assert fleet.meter_status(0, meter.base)["han"] == meter.han
    # A fixed import load: around midday the household profile's PV may export, and then the
    # telegram's delivered power is 0 while READ's power is negative.
    fleet.set_wave(0, {"irms": 5.0, "pf": 1.0, "export": 0}, meter.base)
    time.sleep(1.5)  # a telegram measured under the new load
    raw: list[str] = []
    tels = switch.read_han(meter.han, 4, timeout=10, raw=raw)
    v5 = TelegramParser(telegram_specifications.V5)  # plain V5, checksum validated
    stamps = [v5.parse(t).P1_MESSAGE_TIMESTAMP.value.timestamp() for t in raw]
    # One each second, stamped with the meter's clock: a measured second closes on the
    # metrology task's 100-ms reads, the clock ticks on its own step, so on a loaded host one
    # boundary may fall between them (a stamp one second further), never two in a row
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    assert all(d in (1, 2) for d in steps) and sum(steps) <= len(steps) + 1, stamps
    t = tels[-1]
    assert t.P1_MESSAGE_HEADER.value == "50"
    assert bytes.fromhex(t.EQUIPMENT_IDENTIFIER.value).decode() == f"HASM{meter.meter_id}"
    assert 200 < t.INSTANTANEOUS_VOLTAGE_L1.value < 260
    assert int(t.ELECTRICITY_ACTIVE_TARIFF.value) in (1, 2)
    assert abs(stamps[-1] - time.time()) < 5
    assert t.ACTUAL_SWITCH_POSITION.value in (0, 1, 2)
    with meter.link() as link:
        r = link.request(wire.K_READ)
    assert float(t.CURRENT_ELECTRICITY_USAGE.value) == pytest.approx(r["power_w"] / 1000,
                                                                     abs=0.2)


def test_writing_into_the_han_port_changes_nothing(meter: Meter) -> None:
    before = fleet.meter_status(0, meter.base)
    sec, off = meter.log("security"), meter.log("offswitch")
    # What a hostile HAN device could try: WAN frames, a REPL break-in, a Ctrl-C, garbage.
    with meter.link() as link:
        ctr = meter.keystore.next_down_ctr(meter.meter_id)
        frame = wire.to_line(wire.seal(link.keys, False, wire.K_TIME_SET, ctr, 0,
                                       b'{"t": 1900000000}'))
    junk = frame + b"\x03\x03\x01import os\r\x04" + bytes(range(256)) + b"/X!0000\r\n" * 50
    fd = os.open(meter.han, os.O_RDWR | os.O_NOCTTY)
    try:
        for _ in range(4):
            os.write(fd, junk)
            time.sleep(0.1)
    finally:
        os.close(fd)
    tels = switch.read_han(meter.han, 2, timeout=10)  # still one telegram a second, valid
    after = fleet.meter_status(0, meter.base)
    assert after["han_ignored_in"] >= before["han_ignored_in"] + len(junk)
    assert after["boots"] == before["boots"] and after["pins"]["relay"] == before["pins"]["relay"]
    assert meter.log("security") == sec and meter.log("offswitch") == off
    assert abs(tels[-1].P1_MESSAGE_TIMESTAMP.value.timestamp() - time.time()) < 5  # clock kept


# -- the off-switch ----------------------------------------------------------------------------
def test_switch_cycle_off_opens_on_only_arms_the_button_closes(meter: Meter) -> None:
    assert meter.relay()["relay"] == "closed"  # a new meter ships connected (OFFSWITCH.md)
    r = meter.switch("off")
    assert r.ok and r.relay == 0
    assert meter.relay()["relay"] == "open"
    r = meter.switch("on")
    assert r.ok and r.armed and r.relay == 0
    time.sleep(1.0)
    assert meter.relay()["relay"] == "open" and meter.relay()["armed"]  # no press: still open
    st = relay.press(0, "button", meter.base)
    assert st["relay"] == "closed" and st["pin"] == 1 and not st["armed"]
    tel = switch.read_han(meter.han, 1)[0]
    assert tel.ACTUAL_SWITCH_POSITION.value == 1  # the HAN shows the breaker connected
    r = meter.switch("off")
    assert r.ok and r.relay == 0
    assert meter.relay()["relay"] == "open"
    log = meter.log("offswitch")
    assert any(t.startswith("ON #") and "armed" in t for t in log)
    assert "button: reconnect confirmed, relay closed" in log
    assert any(t.startswith("OFF #") and "relay opened" in t for t in log)


def test_cli_switch_status_and_sim_relay_press(meter: Meter) -> None:
    ks = str(meter.keystore.path)
    r = meterctl("switch", "--port", meter.port, "--keystore", ks, "status", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["relay"] == "open"
    time.sleep(1.1)
    r = meterctl("switch", "--port", meter.port, "--keystore", ks, "on", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["armed"] is True
    meter.last_op = time.monotonic()
    r = meterctl("sim", "relay", "--index", "0", "--dir", str(meter.base), "--json")
    assert json.loads(r.stdout)["relay"] == "open"
    r = meterctl("sim", "press", "--index", "0", "button", "--dir", str(meter.base), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["relay"] == "closed"
    r = meterctl("han", "--port", meter.han, "-n", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and all("breaker 1" in ln and "kWh" in ln for ln in lines)


def test_forged_replayed_and_misaddressed_commands_leave_the_relay_unmoved(
        meter: Meter) -> None:
    if meter.relay()["relay"] != "closed":
        meter.switch("on")
        relay.press(0, "button", meter.base)
    changes = meter.relay()["relay_changes"]
    e = meter.keystore.get(meter.meter_id)
    assert e is not None
    keys = switch.OsKeys.derive(meter.meter_id, e.os_key)
    with meter.link() as link:
        ctr = meter.keystore.next_os_ctr(meter.meter_id)
        wan_key = switch.OsKeys.derive(meter.meter_id, e.master)  # signed with the WAN key
        forged = switch.send_token(link, keys, switch.command(wan_key, switch.OP_OFF, ctr + 1000))
        assert forged.result_name == "bad MAC" and forged.relay == 1
        unsigned = switch.send_token(link, keys, b"\x01\x01")
        assert unsigned.result_name == "malformed"
        other = switch.OsKeys.derive(meter.meter_id + 1, e.os_key)
        misaddressed = switch.send_token(link, keys, switch.command(other, switch.OP_OFF, ctr))
        assert misaddressed.result_name == "wrong meter"
        old = switch.send_command(link, keys, switch.OP_OFF, 1)  # an old, authentic one
        assert old.result_name == "replay" and old.relay == 1
    st = meter.relay()
    assert st["relay"] == "closed" and st["relay_changes"] == changes
    log = meter.log("offswitch")
    assert f"OFF #{ctr + 1000} refused: bad MAC" in log
    assert f"OFF #{ctr} refused: for meter {meter.meter_id + 1}" in log
    assert "OFF #1 refused: replay" in log
    assert any("refused: malformed" in t for t in log)


def test_the_relay_survives_a_power_cut_without_toggling(meter: Meter) -> None:
    if meter.relay()["relay"] != "closed":
        meter.switch("on")
        relay.press(0, "button", meter.base)
    before = meter.relay()
    fleet.power_cut(0, meter.base)
    time.sleep(1.5)  # main.py up, core 1 running
    after = meter.relay()
    assert after["relay"] == "closed" and after["relay_changes"] == before["relay_changes"]
    with meter.link() as link:
        s = switch.status(link)
    assert s.relay == 1 and not s.locked
    assert f"boot: relay 1 armed 0 locked 0 ctr {before['offswitch_ctr']}" in \
        meter.log("offswitch")
    assert not any("relay pin" in t for t in meter.log("offswitch"))  # never driven at boot
    # and open across a cut too
    meter.switch("off")
    fleet.power_cut(0, meter.base)
    time.sleep(1.5)
    assert meter.relay()["relay"] == "open"


def test_tamper_opens_and_latches_until_an_authenticated_unlock(meter: Meter) -> None:
    meter.switch("on")
    st = relay.press(0, "tamper", meter.base)  # during an armed reconnect
    assert st["relay"] == "open" and st["locked"] and not st["armed"]
    assert relay.press(0, "button", meter.base)["relay"] == "open"
    with pytest.raises(switch.SwitchError, match="locked"):
        meter.switch("on")
    fleet.power_cut(0, meter.base)  # the lock survives a reset
    time.sleep(1.5)
    assert meter.relay()["locked"]
    assert meter.switch("unlock").ok
    assert meter.switch("on").armed
    assert relay.press(0, "button", meter.base)["relay"] == "closed"
    log = meter.log("offswitch")
    assert "TAMPER: locked (relay was open)" in log
    assert any(t.startswith("ON #") and "refused: locked" in t for t in log)
    assert any(t.startswith("UNLOCK #") and "unlocked" in t for t in log)


# -- prepaid credit -----------------------------------------------------------------------------
def test_zero_credit_makes_a_local_disconnect(meter: Meter) -> None:
    if meter.relay()["relay"] != "closed":
        meter.switch("on")
        relay.press(0, "button", meter.base)
    fleet.set_wave(0, {"vrms": 230.0, "irms": 40.0, "pf": 1.0}, meter.base)  # 9.2 kW
    with meter.link() as link:
        switch.set_tariff(link, switch.to_mc(1.0), switch.to_mc(1.0))  # 1.00/kWh all day
        switch.topup(link, 800)  # 0.008: about 3 Wh
        r = switch.set_prepaid(link, True)
        assert r["prepaid"] is True
    end = time.monotonic() + 20
    while meter.relay()["relay"] == "closed" and time.monotonic() < end:
        time.sleep(0.5)
    assert meter.relay()["relay"] == "open"
    with meter.link() as link:
        c = switch.credit(link)
        assert c["balance_mc"] <= 0 and c["disconnect_asked"]
        assert c["registers_wh"]["import_t1"] + c["registers_wh"]["import_t2"] > 0
        # topping up does not reconnect by itself: the central system arms, the button closes
        c = switch.topup(link, switch.to_mc(5.0))
        assert c["balance_mc"] > 0
    time.sleep(1.5)
    assert meter.relay()["relay"] == "open"
    sec = meter.log("security")
    assert any(t.startswith("topup +800 mc") for t in sec)
    assert any("local disconnect" in t for t in sec)
    assert "prepaid mode on" in sec and any(t.startswith("tariff: ") for t in sec)
    assert "credit: local disconnect, relay opened" in meter.log("offswitch")
    r2 = meterctl("credit", "--port", meter.port, "--keystore", str(meter.keystore.path))
    assert r2.returncode == 0 and "prepaid, balance" in r2.stdout
    with meter.link() as link:
        switch.set_prepaid(link, False)
    fleet.set_wave(0, {}, meter.base)
