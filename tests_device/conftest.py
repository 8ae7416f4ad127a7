"""Device tests: a virtual meter by default, a real board with --port."""

from __future__ import annotations

import contextlib
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


# The profile of the suite's meters when none is asked for: a Pico with the official firmware
# (its modules, heap, littlefs on the modelled flash chip), as a new user's board. A test or a
# module that tests the unix VM itself (ROMFS, the board/virtual adapter, ...) pins it:
# `@pytest.mark.profile(UNIX_VM, why="...")` (a module: `pytestmark = ...`); every meter it
# starts (own_meters, fleet.start, the session's `sim`) then has that profile, whatever
# --profile or $METER_PROFILE say for the rest.
SUITE_PROFILE = profiles.DEFAULT
UNIX_VM = "unix"


def pytest_configure(config: pytest.Config) -> None:
    name = config.getoption("--profile") or os.environ.get("METER_PROFILE") or SUITE_PROFILE
    if name not in profiles.PROFILES:
        raise pytest.UsageError(f"unknown profile {name!r}; valid: {', '.join(profiles.names())}")
    _SESSION_PROFILE[0] = name
    # fleets the tests start with fleet.start() directly follow it too (for a new meter)
    os.environ["METER_PROFILE"] = name
    config.addinivalue_line("markers", "profile(name, why=...): the port profile of every "
                            "virtual meter this test (or module) starts, and why it is pinned")


def session_profile() -> str | None:
    """The profile of the running test's meters: its pin (mark.profile), else the one chosen
    for the session (--profile or $METER_PROFILE)."""
    return _PINS[-1] if _PINS else _SESSION_PROFILE[0]


_PINS: list[str] = []  # the pins of the running module and test, innermost last


def _pin(node: pytest.Item | pytest.Collector | None) -> str | None:
    mark = node.get_closest_marker("profile") if node is not None else None
    if mark is None:
        return None
    name = str(mark.args[0]) if mark.args else ""
    if name not in profiles.PROFILES or not mark.kwargs.get("why"):
        raise pytest.UsageError(f"{node.nodeid}: mark.profile needs a profile name "
                                f"({', '.join(profiles.names())}) and why=...")
    return name


@contextlib.contextmanager
def _pinned(name: str | None) -> Iterator[None]:
    if name is None:
        yield
        return
    _PINS.append(name)
    os.environ["METER_PROFILE"] = name
    try:
        yield
    finally:
        _PINS.pop()
        os.environ["METER_PROFILE"] = session_profile() or SUITE_PROFILE


@pytest.fixture(scope="module", autouse=True)
def _module_profile(request: pytest.FixtureRequest) -> Iterator[None]:
    with _pinned(_pin(request.node)):
        yield


@pytest.fixture(autouse=True)
def _test_profile(request: pytest.FixtureRequest) -> Iterator[None]:
    with _pinned(_pin(request.node)):
        yield


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
            try:
                st = json.dumps(fleet.ctl(mdir, {"cmd": "status"}, timeout=2.0), sort_keys=True)
            except fleet.SimError as e:
                st = str(e)
            report.sections.append((f"{base.parent.name}/{mdir.name} status", st))
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
def _session_fleets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Fleet]]:
    """The session's fleets, one per profile asked for, started on first use."""
    fleets: dict[str, Fleet] = {}
    try:
        yield fleets
    finally:
        for f in fleets.values():
            _LIVE_FLEETS.remove(f.base)
            fleet.stop(f.base)


@pytest.fixture
def sim(_session_fleets: dict[str, Fleet], tmp_path_factory: pytest.TempPathFactory,
        real_port: str | None) -> Fleet:
    """Three virtual meters for the session (under the test's profile: one fleet per
    profile): 0 for clients, 1 for flashing, 2 for the board's own behaviour (resets, power
    cuts, pins)."""
    if real_port:
        pytest.skip("needs the virtual board's host-side control (running against --port)")
    name = session_profile() or profiles.DEFAULT
    if name not in _session_fleets:
        base = tmp_path_factory.mktemp("fleet-" + name)
        _LIVE_FLEETS.append(base)
        try:
            _session_fleets[name] = Fleet(base, fleet.start(3, base, profile=name))
        except BaseException:
            _LIVE_FLEETS.remove(base)
            fleet.stop(base)
            raise
    return _session_fleets[name]


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


# A board profile's firmware, flashed once a session (meterctl flash, as a user does) into a
# meter that is then stopped: own_meters() programs each new meter's chip with that image, as
# a factory programs boards, instead of flashing each one over its serial port. On littlefs
# a flash costs ~90 erases (~5 s of stalls); meterctl flash itself is tested on every profile
# (test_flash.py, test_board_profiles.py, which flashes each of its meters).
_PROGRAMMED: dict[str, Path] = {}


def _programmed(profile: str, session_dir: Path, timeout: float) -> Path:
    mdir = _PROGRAMMED.get(profile)
    if mdir is None:
        base = session_dir / f"programmed-{profile}"
        rec = fleet.start(1, base, profile=profile)[0]
        try:
            flash(rec["port"], timeout=timeout)
        finally:
            fleet.stop(base)
        mdir = _PROGRAMMED[profile] = fleet.meter_dir(base, 0)
    return mdir


def program_like_a_factory(mdir: Path, profile: str, session_dir: Path,
                           timeout: float = 60.0) -> bool:
    """Program the chip of the meter to be started in ``mdir`` with this session's image of
    ``profile``, as own_meters() does; False for a profile without a flash image (unix: flash
    it over its serial port)."""
    from host_tools.bench.runner import clone_image

    if profiles.get(profile)["fs"]["type"] not in ("lfs2", "fat"):
        return False
    clone_image(_programmed(profile, session_dir, timeout), mdir)
    return True


@contextlib.contextmanager
def own_meters(tmp: Path, n: int, *, wave: dict[str, float] | None = None,
               timeout: float = 30.0, profile: str | None = None, flash_each: bool = False,
               **provision_kwargs: Any) -> Iterator[list[OwnMeter]]:
    """Start `n` virtual meters in ``tmp`` (their load fixed to `wave` from power-up, if
    given; under ``profile``, else the test's), with the firmware (flashed over the serial
    port, or on a board profile programmed from this session's image unless ``flash_each``),
    provision each (one keystore in ``tmp``; ``provision_kwargs`` as for provision()), and
    stop them afterwards. Timeouts are generous: several VMs boot at once on a busy host."""
    from host_tools.bench.runner import clone_image

    base = tmp / "fleet"
    name = profile or session_profile() or profiles.DEFAULT
    programmed = not flash_each and profiles.get(name)["fs"]["type"] in ("lfs2", "fat")
    if programmed:
        image = _programmed(name, tmp.parent, timeout)
        for i in range(n):
            clone_image(image, fleet.meter_dir(base, i))
            if wave is not None:  # the supervisor's hardware state, read at power-up
                (fleet.meter_dir(base, i) / "hw.json").write_text(json.dumps({"wave": wave}))
    recs = fleet.start(n, base, profile=name)
    _LIVE_FLEETS.append(base)
    try:
        if wave is not None and not programmed:
            for i in range(n):
                fleet.set_wave(i, wave, base)
        ks = Keystore(tmp / "keystore.json")
        meters = []
        for i, rec in enumerate(recs):
            if not programmed:
                flash(rec["port"], timeout=timeout)
            r = provision(rec["port"], ks, force=True, timeout=timeout, **provision_kwargs)
            meters.append(OwnMeter(base, rec["port"], rec["han"], ks, r.meter_id, i))
        yield meters
    finally:
        _LIVE_FLEETS.remove(base)
        fleet.stop(base)


def set_clock_if_behind(port: str, keystore: Keystore, timeout: float = 30.0) -> bool:
    """What the operator does for a meter powered up again whose clock is behind: a Pico's
    (no battery-backed RTC: its firmware resumes from the time it last saved). An
    authenticated TIME_SET to the host's time; True if it was behind (a meter whose RTC ran
    on is left alone)."""
    from host_tools.headend import wire
    from host_tools.headend.client import LinkError, MeterError, open_link
    from host_tools.headend.provision import meter_time_now

    deadline = time.monotonic() + timeout
    while True:  # the firmware may still be starting
        try:
            with open_link(port, keystore, None, 5.0) as link:
                if int(link.request(wire.K_READ)["clock"]) >= meter_time_now() - 2:
                    return False
                link.request(wire.K_TIME_SET, {"t": meter_time_now()})
                return True
        except (LinkError, MeterError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@contextlib.contextmanager
def own_meter(tmp: Path, **kwargs: Any) -> Iterator[OwnMeter]:
    """One meter of own_meters()."""
    with own_meters(tmp, 1, **kwargs) as meters:
        yield meters[0]



def give_consent(base: Path, index: int = 0) -> None:
    """The household's consent (the button held at power-up: host_tools/sim/fleet.py
    give_consent), on the virtual board only (a real one needs a hand on its button)."""
    fleet.give_consent(index, base)
