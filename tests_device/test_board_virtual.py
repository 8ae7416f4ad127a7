"""The virtual board's `board` package, run by the VM after a real flash."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from host_tools.flash.deploy import flash
from host_tools.headend import switch
from host_tools.headend.client import open_link
from host_tools.sim import fleet, relay

from .conftest import UNIX_VM, Fleet, mpremote, own_meter
from .test_sim import read_for

pytestmark = pytest.mark.profile(UNIX_VM, why="board/virtual's adapter runs on the unix VM only "
                                 "(a board profile runs its own board's adapter)")


@pytest.fixture
def flashed(sim: Fleet) -> str:
    flash(sim.port(1))
    return sim.port(1)


def test_relay_pin_reaches_the_host(sim: Fleet, flashed: str) -> None:
    mpremote(flashed, "exec", "import board\nboard.relay.off()")
    before = sim.status(1)["relay_changes"]
    r = mpremote(flashed, "exec", "import board\nboard.relay.on()\nprint(board.relay.value())")
    assert r.stdout.strip() == "1"
    st = sim.status(1)
    assert st["pins"]["relay"] == 1 and st["relay_changes"] == before + 1
    mpremote(flashed, "exec", "import board\nboard.relay.off()")
    assert sim.status(1)["pins"]["relay"] == 0
    mpremote(flashed, "exec", "import board\nboard.relay.on()")  # the load connected again


def test_adc_delivers_the_waveform_continuously(sim: Fleet, flashed: str) -> None:
    fleet.set_wave(1, {"vrms": 230.0, "irms": 5.0, "pf": 1.0}, sim.base)
    code = (
        "import board, array, time, math\n"
        "v = array.array('H', bytes(2 * 4000)); i = array.array('H', bytes(2 * 4000))\n"
        "board.adc.read_into(v, i)\n"
        "time.sleep_ms(500)\n"
        "n = board.adc.read_into(v, i)\n"
        "sv = si = 0\n"
        "for k in range(n):\n"
        "    sv += (v[k] - 32768) ** 2\n"
        "    si += (i[k] - 32768) ** 2\n"
        "print(n, board.ADC_RATE_HZ, math.sqrt(sv / n), math.sqrt(si / n))\n"
    )
    r = mpremote(flashed, "exec", code)
    n, rate, v_counts, i_counts = r.stdout.split()
    # ~0.5 s worth of samples at the declared rate, none lost, none invented
    assert 0.45 * int(rate) <= int(n) <= 0.7 * int(rate)
    # rms in ADC counts: the front end puts a 400 V rms (100 A rms) sine's peak at full scale
    assert math.isclose(float(v_counts), 230 / 400 * 32767 / math.sqrt(2), rel_tol=0.02)
    assert math.isclose(float(i_counts), 5 / 100 * 32767 / math.sqrt(2), rel_tol=0.02)


def test_han_tx_is_transmit_only(sim: Fleet, flashed: str) -> None:
    han = os.open(sim.status(1)["han"], os.O_RDWR | os.O_NOCTTY)
    try:
        read_for(han, 0.2)
        r = mpremote(flashed, "exec", "import board\nu = board.han_tx()\n"
                                      "print(hasattr(u, 'read'), hasattr(u, 'readinto'))\n"
                                      "u.write(b'/P1 test\\r\\n')")
        assert r.stdout.split() == ["False", "False"]
        assert b"/P1 test\r\n" in read_for(han, 0.5)
    finally:
        os.close(han)


def test_han_uart_write_blocks_at_the_line_rate(sim: Fleet, flashed: str) -> None:
    """The HAN UART sends at 115200 8N1 from a 1024-byte TX buffer, as the rp2 adapter sets it
    up: a write that fits the buffer returns at once, a longer one returns only when what is
    left fits it (ports/rp2/machine_uart.c)."""
    code = ("import board, time\nu = board.han_tx()\nd, us = time.ticks_diff, time.ticks_us\n"
            "time.sleep_ms(500)\n"
            "t = us(); u.write(b'a' * 800); small = d(us(), t)\n"
            "time.sleep_ms(500)\n"
            "t = us(); u.write(b'b' * 5000); big = d(us(), t)\n"
            "print(small, big)")
    small, big = map(int, mpremote(flashed, "exec", code).stdout.split())
    line_us = (5000 - 1024) * 10 * 1_000_000 / 115200  # 345 ms
    assert small < 20_000
    assert line_us * 0.95 <= big <= line_us + 500_000


def test_rtc_held_and_moved_by_the_host(sim: Fleet, flashed: str) -> None:
    """set-clock (the soak's time, paced by the head-end): the board's RTC stays at the time
    the host gave, moves only when the host moves it (also while the firmware runs, without a
    restart), keeps it across a power cut, and follows host time again after ``t: null``."""
    mdir = fleet.meter_dir(sim.base, 1)
    t0 = 1_900_000_000
    st = fleet.ctl(mdir, {"cmd": "set-clock", "t": t0})
    assert st["sim_time"] == t0
    # the firmware runs (main.py) or not: read the RTC through the REPL twice, 1.2 s apart
    code = ("import board, time\na = board.rtc_get()\ntime.sleep_ms(1200)\n"
            "print(a, board.rtc_get())")
    a, b = map(int, mpremote(flashed, "exec", code).stdout.split())
    assert a == b == t0
    # moved while a program runs: the running VM sees the new time at its next poll
    code = ("import board, time, _vhw\nprint(board.rtc_get())\n"
            "for _ in range(100):\n    _vhw.poll()\n    time.sleep_ms(50)\n"
            f"    if board.rtc_get() != {t0}: break\nprint(board.rtc_get())")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpremote", "connect", flashed, "exec", code],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the program runs: now move the clock
    fleet.ctl(mdir, {"cmd": "set-clock", "t": t0 + 900})
    out, _ = proc.communicate(timeout=60)
    assert [first.strip(), out.strip()] == [str(t0), str(t0 + 900)]
    # a battery-backed RTC: the held time survives a power cut; a long cut ends on power-on
    fleet.ctl(mdir, {"cmd": "power-cut", "off_s": 0.05}, timeout=60)
    assert mpremote(flashed, "exec", "import board\nprint(board.rtc_get())").stdout.strip() \
        == str(t0 + 900)
    done: list[dict[str, object]] = []
    th = threading.Thread(target=lambda: done.append(
        fleet.ctl(mdir, {"cmd": "power-cut", "off_s": 1e6}, timeout=120)))
    th.start()
    deadline = time.monotonic() + 30
    while fleet.ctl(mdir, {"cmd": "status"})["vm"] != "off":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1.0)
    assert fleet.ctl(mdir, {"cmd": "status"})["vm"] == "off" and not done  # still off
    fleet.ctl(mdir, {"cmd": "power-on"})
    th.join(60)
    assert done and done[0]["vm"] == "on"
    # host time again: the board's RTC follows the host's clock; the firmware, whose clock
    # saved t0 + 900 (years ahead of the host), never lets it go back behind that save
    # (tasks/clock.py: "resumed from saved"), so the RTC reads either
    st = fleet.ctl(mdir, {"cmd": "set-clock", "t": None})
    assert st.get("sim_time") is None, st
    now = int(mpremote(flashed, "exec", "import board\nprint(board.rtc_get())").stdout)
    assert abs(now - time.time()) < 30 or t0 + 900 <= now < t0 + 900 + 300, now


def _han_now(han: str) -> Any:
    """The telegram the meter sends next (one a second)."""
    return switch.read_han(han, 1, timeout=20)[0]


def _energy_kwh(tel: Any) -> float:
    return float(tel.ELECTRICITY_USED_TARIFF_1.value + tel.ELECTRICITY_USED_TARIFF_2.value)


def test_open_relay_cuts_the_current(tmp_path: Path) -> None:
    """The relay sits between the mains and the load: opened by the off-switch, the ADC sees
    no current from then on (offset and noise only), so Irms and power fall to ~0 within a
    couple of seconds, the energy registers stop, and the HAN shows 0 kW beside "breaker
    off"; closed again (armed, then the button), the load's current is back."""
    limits = switch.Limits(max_per_hour=60, min_spacing_s=1, arm_window_s=20)
    wave = {"vrms": 230.0, "irms": 20.0, "pf": 1.0, "noise": 3}
    with own_meter(tmp_path, wave=wave, interval_s=3, offswitch_limits=limits) as m:
        tel = _han_now(m.han)
        assert tel.ACTUAL_SWITCH_POSITION.value == 1  # a new meter ships connected
        assert float(tel.CURRENT_ELECTRICITY_USAGE.value) > 4.0  # 230 V x 20 A
        with open_link(m.port, m.keystore, None, 5.0) as link:
            assert switch.switch(link, "off").relay == 0
        time.sleep(2.5)
        tel = _han_now(m.han)
        assert tel.ACTUAL_SWITCH_POSITION.value == 0
        assert float(tel.CURRENT_ELECTRICITY_USAGE.value) == 0.0
        assert float(tel.INSTANTANEOUS_CURRENT_L1.value) < 0.5  # noise alone
        e0 = _energy_kwh(tel)
        time.sleep(4)
        assert _energy_kwh(_han_now(m.han)) == e0  # nothing counted with the relay open
        time.sleep(1.1)
        with open_link(m.port, m.keystore, None, 5.0) as link:
            assert switch.switch(link, "on").armed
        assert relay.press(0, "button", m.base)["relay"] == "closed"
        time.sleep(2.5)
        tel = _han_now(m.han)
        assert tel.ACTUAL_SWITCH_POSITION.value == 1
        assert float(tel.CURRENT_ELECTRICITY_USAGE.value) > 4.0
        assert float(tel.INSTANTANEOUS_CURRENT_L1.value) > 15.0


def test_sys_is_a_boards(sim: Fleet, flashed: str) -> None:
    """sys as on rp2 and stm32 (built at the EXTRA_FEATURES level): no atexit, exc_info,
    executable, settrace, getsizeof, intern or tracebacklimit; a real module (its __dict__,
    ImportError for a name it lacks) whose other names are the VM's own objects."""
    gone = ("atexit", "exc_info", "executable", "settrace", "getsizeof", "intern",
            "tracebacklimit")
    code = ("import sys, usys\n"
            f"print([n for n in {gone!r} if hasattr(sys, n) or hasattr(usys, n)])\n"
            "print(sys.__dict__['__name__'], sys.implementation.name, usys is sys)\n"
            "sys.path.append('/probe')\n"
            "import sys as again\n"
            "print(again.path[-1], sys.modules['sys'] is sys)\n"
            "sys.path.pop()\n"
            "try:\n    from sys import atexit\nexcept ImportError:\n    print('ImportError')\n")
    r = mpremote(flashed, "exec", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[]", "sys", "micropython", "True", "/probe", "True",
                                "ImportError"]
