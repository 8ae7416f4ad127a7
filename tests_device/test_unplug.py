"""A virtual meter unplugged while a head-end command is outstanding (issue 10, host
robustness): a clear error, a read sent again once the port is back, and a command that changes
the meter never repeated blindly. The cable is pulled for real: the supervisor that owns the
meter's port is killed (the port vanishes, as a USB device does), and started again on the same
flash and the same port link (a real board keeps its /dev/serial/by-id name)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from host_tools.headend import wire
from host_tools.headend.client import Disconnected, MeterLink
from host_tools.headend.keystore import Keystore, MeterEntry
from host_tools.sim import fleet

from .conftest import own_meter


@dataclass
class Rig:
    base: Path
    keystore: Keystore
    entry: MeterEntry

    @property
    def port_link(self) -> str:
        return str(fleet.meter_dir(self.base, 0) / "port")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, real_port: str | None) -> Iterator[Rig]:
    if real_port:
        pytest.skip("needs the virtual board: the test pulls the meter's cable")
    with own_meter(tmp_path_factory.mktemp("unplug")) as m:
        entry = m.keystore.get(m.meter_id)
        assert entry is not None
        yield Rig(m.base, m.keystore, entry)


def pull_cable_after_send(link: MeterLink, rig: Rig, replug_after: float | None) -> list[str]:
    """Kill the meter's supervisor right after the next command went out; power it up again
    `replug_after` seconds later (None: leave it unplugged)."""
    send, pulled = link.send_line, []

    def replug() -> None:
        fleet.stop(rig.base)
        fleet.start(1, rig.base)

    def send_then_pull(line: bytes) -> None:
        send(line)
        if not pulled:
            pulled.append("pulled")
            os.kill(fleet.meter_status(0, rig.base)["pid"], signal.SIGKILL)
            # as udev removes /dev/serial/by-id/... (else the link would name a dead pty,
            # whose number the kernel soon gives to another)
            os.unlink(rig.port_link)
            if replug_after is not None:
                threading.Timer(replug_after, replug).start()

    link.send_line = send_then_pull  # type: ignore[method-assign]
    return pulled


def test_a_read_is_sent_again_once_the_meter_is_back(rig: Rig) -> None:
    with MeterLink(rig.port_link, rig.entry, rig.keystore, timeout=20) as link:
        pulled = pull_cable_after_send(link, rig, replug_after=0.5)
        r = link.request(wire.K_READ)
        assert pulled and "vrms" in r


def test_a_command_that_changes_the_meter_is_not_repeated(rig: Rig) -> None:
    with MeterLink(rig.port_link, rig.entry, rig.keystore, timeout=5) as link:
        pulled = pull_cable_after_send(link, rig, replug_after=None)
        t0 = time.monotonic()
        with pytest.raises(Disconnected, match="meter disconnected") as e:
            link.request(wire.K_TIME_SET, {"t": int(time.time())})
        assert pulled and time.monotonic() - t0 < 10
        assert "TIME_SET was not sent again: it may have been carried out" in str(e.value)
    fleet.stop(rig.base)
    fleet.start(1, rig.base)
    # unplugged for good: a read gives up after waiting for the port, and says so
    with MeterLink(rig.port_link, rig.entry, rig.keystore, timeout=2) as link:
        pull_cable_after_send(link, rig, replug_after=None)
        with pytest.raises(Exception, match="did not come back within 2 s"):
            link.request(wire.K_READ)
    fleet.stop(rig.base)
    fleet.start(1, rig.base)  # for the fixture's teardown and any later test
