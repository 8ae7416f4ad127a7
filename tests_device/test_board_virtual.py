"""The virtual board's `board` package, run by the VM after a real flash."""

from __future__ import annotations

import math
import os

import pytest

from host_tools.flash.deploy import flash
from host_tools.sim import fleet

from .conftest import Fleet, mpremote
from .test_sim import read_for


@pytest.fixture
def flashed(sim: Fleet) -> str:
    flash(sim.port(1))
    return sim.port(1)


def test_relay_pin_reaches_the_host(sim: Fleet, flashed: str) -> None:
    before = sim.status(1)["relay_changes"]
    r = mpremote(flashed, "exec", "import board\nboard.relay.on()\nprint(board.relay.value())")
    assert r.stdout.strip() == "1"
    st = sim.status(1)
    assert st["pins"]["relay"] == 1 and st["relay_changes"] == before + 1
    mpremote(flashed, "exec", "import board\nboard.relay.off()")
    assert sim.status(1)["pins"]["relay"] == 0


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
