"""A meter's port shared with another client (issue 20, "Sharing a port"), with the real
mpremote: a port mpremote holds is named as in use (flash and read); a REPL that `mpremote
exec` left open is named and no frame is typed into it; mpremote on a sealed meter gets the
sealed notice and gives up as with a board that refuses the raw REPL, instead of hanging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import serial

from host_tools.headend.lopa import Target
from host_tools.headend.lopa.lab import serial_probe
from host_tools.sim import fleet
from host_tools.transport.serial import SealedError, port_in_use

from .conftest import OwnMeter, own_meter


@pytest.fixture(scope="module")
def meter(tmp_path_factory: pytest.TempPathFactory, real_port: str | None) -> Iterator[OwnMeter]:
    if real_port:
        pytest.skip("seals and interrupts the meter: runs on a virtual one")
    with own_meter(tmp_path_factory.mktemp("sharing")) as m:
        yield m


def meterctl(m: OwnMeter, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *args, "--port", m.port],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "METERCTL_KEYSTORE": str(m.keystore.path)})


def _wait(cond: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_port_mpremote_holds_is_in_use(meter: OwnMeter) -> None:
    holder = subprocess.Popen([sys.executable, "-m", "mpremote", "connect", meter.port, "exec",
                               "import time; time.sleep(6)"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: port_in_use(meter.port), "mpremote never locked the port")
        for args in (("read",), ("flash",)):
            r = meterctl(meter, *args)
            assert r.returncode == 1, r.stdout + r.stderr
            assert "in use by another program (mpremote?)" in r.stderr, r.stderr
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    finally:
        out, err = holder.communicate(timeout=60)
    assert holder.returncode == 0, out + err


def test_a_repl_left_open_is_named_and_no_frame_lands_in_it(meter: OwnMeter) -> None:
    # mpremote exec interrupts the firmware and leaves the board at the friendly REPL
    r = subprocess.run([sys.executable, "-m", "mpremote", "connect", meter.port, "exec",
                        "print(6 * 7)"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "42" in r.stdout, r.stdout + r.stderr
    _wait(lambda: fleet.meter_status(0, meter.base).get("files", {}).get("main.py")
          != "running", "main.py still running after mpremote exec")
    r = meterctl(meter, "read")
    assert r.returncode == 1
    assert "a MicroPython REPL is open" in r.stderr and "no frame was sent" in r.stderr, r.stderr
    assert "SyntaxError" not in r.stderr
    # whatever the REPL printed since: no Python error from a frame typed into it
    with serial.Serial(meter.port, timeout=0.5, exclusive=True) as ser:
        ser.write(b"\r")
        seen = ser.read(4096)
    assert b">>> " in seen and b"SyntaxError" not in seen and b"Traceback" not in seen, seen
    # the fix the message gives works: flash soft-resets into main.py, and read answers
    r = meterctl(meter, "flash")
    assert r.returncode == 0, r.stderr
    time.sleep(1.0)
    r = meterctl(meter, "read", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["meter"] == str(meter.meter_id)


def test_mpremote_on_a_sealed_meter_gets_the_notice_and_gives_up(meter: OwnMeter) -> None:
    r = meterctl(meter, "seal")
    assert r.returncode == 0, r.stderr
    try:
        t0 = time.monotonic()
        # The meter's port by its link (meter-NNN/port), as /dev/serial/by-id names a real
        # board. mpremote treats a path under /dev/pts/ as a pty and reads it with no timeout
        # (mpremote/transport_serial.py read_until: its timeouts are checked only when no byte
        # came), so no answer of the board's can end that wait: the sealed meter would leave
        # it blocked for good. Any other path gets mpremote's own 10-s limit, as a Pico does.
        link = str(meter.dir / "port")
        r = subprocess.run([sys.executable, "-m", "mpremote", "connect", link, "exec",
                            "print(1)"], capture_output=True, text=True, timeout=45)
        took = time.monotonic() - t0
        out = r.stdout + r.stderr
        assert r.returncode != 0, out
        assert "could not enter raw repl" in out and "meter sealed" in out, out
        assert took < 30, took  # mpremote's own 10-s limit, not a hang
        st = fleet.meter_status(0, meter.base)
        assert st.get("files", {}).get("main.py") == "running"  # still metering
        # nor does the lab probe read a sealed virtual meter's flash: lab mode needs it unsealed
        probe = serial_probe(fleets=[meter.base])
        with pytest.raises(SealedError, match=r"lab mode .* only while the meter is unsealed"):
            probe(Target(meter.meter_id, meter.port))
    finally:
        r = meterctl(meter, "unseal")
        assert r.returncode == 0, r.stderr
