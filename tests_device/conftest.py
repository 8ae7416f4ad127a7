"""Device tests: a virtual meter by default, a real board with --port."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from host_tools.flash.deploy import flash
from host_tools.headend.keystore import Keystore
from host_tools.headend.provision import provision
from host_tools.sim import fleet, profiles


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--port", default=None,
                     help="run the device tests against a real board on this serial port")
    parser.addoption("--profile", default=None,
                     help="port profile of the session's virtual meters (host_tools/sim/"
                          "profiles.py; default: $METER_PROFILE, else the fleet's default)")


_SESSION_PROFILE: list[str | None] = [None]  # set by pytest_configure: own_meters' default


# The profile of the suite's meters when none is asked for. Most device tests exercise the
# virtual board's own machinery (its ROMFS partition, per-file power-cut points, host-visible
# files, pins driven from the host), which only the unix profile has; the official boards'
# end-to-end flows run on their own profiles in test_board_profiles.py, test_pybv11.py and
# test_profiles.py. `--profile rp2-pico` runs the whole suite on a Pico profile (not green yet:
# docs/virtual-board.md, "Port profiles").
SUITE_PROFILE = "unix"


def pytest_configure(config: pytest.Config) -> None:
    name = config.getoption("--profile") or os.environ.get("METER_PROFILE") or SUITE_PROFILE
    if name not in profiles.PROFILES:
        raise pytest.UsageError(f"unknown profile {name!r}; valid: {', '.join(profiles.names())}")
    _SESSION_PROFILE[0] = name
    # fleets the tests start with fleet.start() directly follow it too (for a new meter)
    os.environ["METER_PROFILE"] = name


def session_profile() -> str | None:
    """The profile chosen for the session (--profile or $METER_PROFILE), if any."""
    return _SESSION_PROFILE[0]


@dataclass
class Fleet:
    base: Path
    meters: list[dict[str, Any]]

    def port(self, i: int) -> str:
        return str(self.meters[i]["port"])

    def status(self, i: int) -> dict[str, Any]:
        return fleet.meter_status(i, self.base)


_LIVE_FLEETS: list[Path] = []  # the fleets running now: a module's own ones last
LOG_TAIL = 40


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed device test carries the tail of each running meter's supervisor log (its
    module's own meters first), so that a failure seen only in CI can be read afterwards."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for base in reversed(_LIVE_FLEETS):
        for mdir in fleet.meter_dirs(base):
            for name in ("supervisor.log", "supervisor.err"):
                f = mdir / name
                if f.exists():
                    tail = f.read_text(errors="replace").splitlines()[-LOG_TAIL:]
                    report.sections.append((f"{base.parent.name}/{mdir.name}/{name} "
                                            f"(last {LOG_TAIL} lines)", "\n".join(tail)))


@pytest.fixture(scope="session")
def real_port(request: pytest.FixtureRequest) -> str | None:
    port = request.config.getoption("--port")
    return str(port) if port else None


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory, real_port: str | None) -> Iterator[Fleet]:
    """Three virtual meters for the session: 0 for clients, 1 for flashing, 2 for the
    board's own behaviour (resets, power cuts, pins)."""
    if real_port:
        pytest.skip("needs the virtual board's host-side control (running against --port)")
    base = tmp_path_factory.mktemp("fleet")
    meters = fleet.start(3, base, profile=session_profile())
    _LIVE_FLEETS.append(base)
    try:
        yield Fleet(base, meters)
    finally:
        _LIVE_FLEETS.remove(base)
        fleet.stop(base)


@pytest.fixture
def port(real_port: str | None, tmp_path_factory: pytest.TempPathFactory,
         request: pytest.FixtureRequest) -> str:
    """The board that client tests talk to: --port, or virtual meter 0."""
    if real_port:
        return real_port
    sim_fleet: Fleet = request.getfixturevalue("sim")
    return sim_fleet.port(0)


def mpremote(port: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The real mpremote, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "mpremote", "connect", port, *args],
                          capture_output=True, text=True, timeout=timeout)


@dataclass
class OwnMeter:
    """A virtual meter of a test module's own: flashed and provisioned, its keystore apart."""

    base: Path
    port: str
    han: str
    keystore: Keystore
    meter_id: int
    index: int = 0  # in its fleet

    @property
    def dir(self) -> Path:
        return fleet.meter_dir(self.base, self.index)


@contextlib.contextmanager
def own_meters(tmp: Path, n: int, *, wave: dict[str, float] | None = None,
               timeout: float = 30.0, profile: str | None = None,
               **provision_kwargs: Any) -> Iterator[list[OwnMeter]]:
    """Start `n` virtual meters in ``tmp`` (their load fixed to `wave` from power-up, if
    given; under ``profile``, else the session's), flash the firmware, provision each (one
    keystore in ``tmp``; ``provision_kwargs`` as for provision()), and stop them afterwards.
    Timeouts are generous: several VMs boot at once on a busy host."""
    base = tmp / "fleet"
    recs = fleet.start(n, base, profile=profile or session_profile())
    _LIVE_FLEETS.append(base)
    try:
        if wave is not None:
            for i in range(n):
                fleet.set_wave(i, wave, base)
        ks = Keystore(tmp / "keystore.json")
        meters = []
        for i, rec in enumerate(recs):
            flash(rec["port"], timeout=timeout)
            r = provision(rec["port"], ks, force=True, timeout=timeout, **provision_kwargs)
            meters.append(OwnMeter(base, rec["port"], rec["han"], ks, r.meter_id, i))
        yield meters
    finally:
        _LIVE_FLEETS.remove(base)
        fleet.stop(base)


@contextlib.contextmanager
def own_meter(tmp: Path, **kwargs: Any) -> Iterator[OwnMeter]:
    """One meter of own_meters()."""
    with own_meters(tmp, 1, **kwargs) as meters:
        yield meters[0]



def give_consent(base: Path, index: int = 0) -> None:
    """The household's consent (the button held at power-up: host_tools/sim/fleet.py
    give_consent), on the virtual board only (a real one needs a hand on its button)."""
    fleet.give_consent(index, base)
