"""The whole firmware on a virtual meter whose MicroPython has no cryptolib, as the official
PYBV11 firmware: provisioning, the clock set and encrypted READ, LOGS and PROFILE answers over the
authenticated WAN, with the meter's AES from lib/aes128.py and the head-end's from
`cryptography` (host_tools/headend/wire.py).

The virtual board's VM has cryptolib built in, so a boot.py on the meter makes
`from cryptolib import aes` fail as it does on a Pyboard (boot.py runs before main.py, in the
same interpreter, on a board as on the virtual board). Once the port profiles hide it
themselves (pybv11), this boot.py is no longer needed there."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from host_tools.flash.deploy import flash
from host_tools.headend import wire
from host_tools.headend.client import open_link
from host_tools.headend.keystore import Keystore
from host_tools.headend.provision import provision
from host_tools.headend.queries import read_log
from host_tools.sim import fleet, profiles
from host_tools.transport.serial import Board

from .conftest import program_like_a_factory, session_profile

NEEDS_SIM = "needs the virtual board's host-side control (running against --port)"
# A None in sys.modules: `from cryptolib import aes` (lib/wan.py) raises ImportError, as on a
# Pyboard. (The board profiles' way, an override of builtins.__import__, works as well since
# lib/lazy.py keeps the import in force: test_aes128.py checks that on the VM.)
BOOT_NO_CRYPTOLIB = "import sys\nsys.modules['cryptolib'] = None\n"


@dataclass
class Meter:
    base: Path
    port: str
    keystore: Keystore

    def request(self, kind: int, args: dict[str, Any] | None = None) -> Any:
        with open_link(self.port, self.keystore, None, 10.0) as link:
            return link.request(kind, args)


@pytest.fixture(scope="module")
def meter(tmp_path_factory: pytest.TempPathFactory, real_port: str | None) -> Iterator[Meter]:
    if real_port:
        pytest.skip(NEEDS_SIM)
    tmp = tmp_path_factory.mktemp("aes-fallback")
    base = tmp / "fleet"
    name = session_profile() or profiles.DEFAULT
    # programmed from the session's image (meterctl flash: test_flash.py)
    programmed = program_like_a_factory(fleet.meter_dir(base, 0), name, tmp.parent)
    port = fleet.start(1, base, profile=name)[0]["port"]
    try:
        if not programmed:
            flash(port, timeout=30)
        with Board(port, timeout=30) as b:
            b.enter_raw(soft_reset=True)
            b.exec(f"f = open('/boot.py', 'w')\nf.write({BOOT_NO_CRYPTOLIB!r})\nf.close()\n")
            b.soft_reset_to_main()
        ks = Keystore(tmp / "keystore.json")
        provision(port, ks, force=True, interval_s=2, timeout=30)  # its TIME_SET is ENC-free
        yield Meter(base, port, ks)
    finally:
        fleet.stop(base)


def test_the_meter_runs_without_cryptolib(meter: Meter) -> None:
    """The running firmware (interrupted without a reset) seals with aes128, and cryptolib
    cannot be had."""
    meter.request(wire.K_READ)  # a frame sealed, so wan is loaded
    with Board(meter.port, timeout=30) as b:
        b.enter_raw(soft_reset=False)
        try:
            # the running firmware's wan: its AES object is aes128's (round keys in _rk)
            fallback = b.eval("hasattr(__import__('sys').modules['wan']._aes(bytes(16), 1), "
                              "'_rk')")
            out = b.exec("try:\n from cryptolib import aes\n print('visible')\n"
                         "except ImportError:\n print('hidden')\n")
        finally:
            b.soft_reset_to_main()
    assert fallback is True
    assert out.strip() == b"hidden"


def test_encrypted_answers_open_at_the_head_end(meter: Meter) -> None:
    """READ, LOGS and PROFILE are answered encrypted (wan.ENC_RESPONSE_KINDS): the head-end's
    codec checks each MAC and decrypts each with `cryptography`'s AES-CTR."""
    end = time.monotonic() + 10
    while True:
        r = meter.request(wire.K_READ)
        if r["seconds"] >= 1 or time.monotonic() > end:
            break
        time.sleep(0.3)
    assert r["vrms"] > 100 and r["seconds"] >= 1, r
    with open_link(meter.port, meter.keystore, None, 10.0) as link:
        logs = read_log(link, "security")
    assert logs, "the security log has at least the boot's records"
    # PROFILE: the supplier's, with the household's consent (the button at power-up)
    fleet.give_consent(0, meter.base)
    time.sleep(2.5)  # one 2-s interval closed
    prof = meter.request(wire.K_PROFILE, {"from": 0})
    assert isinstance(prof, dict | list) and prof, prof
