"""`mpremote mip install` of the firmware (issue 20, Build 6), with the real mpremote over HTTP
(`python -m http.server`): from the repository's package.json files a blank virtual meter gets
byte for byte the sources `meterctl flash --source` deploys; from the compiled index
(host_tools/flash/mip.py build_index) another gets the .mpy image `meterctl flash` builds, and
runs the meter firmware after a soft reset."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from host_tools.flash import mip
from host_tools.flash.build import REPO, build_image, sources
from host_tools.sim import fleet
from host_tools.transport.serial import Board

from .conftest import _LIVE_FLEETS, session_profile


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def http_server(root: Path) -> Iterator[str]:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1", "--directory", str(root)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "http.server did not start"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture(scope="module")
def blank(tmp_path_factory: pytest.TempPathFactory, real_port: str | None) -> Iterator[Path]:
    if real_port:
        pytest.skip("installs into a blank virtual meter")
    base = tmp_path_factory.mktemp("mip") / "fleet"
    fleet.start(2, base, profile=session_profile())
    _LIVE_FLEETS.append(base)
    try:
        yield base
    finally:
        _LIVE_FLEETS.remove(base)
        fleet.stop(base)


def mpremote(port: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mpremote", "connect", port, *args],
                          capture_output=True, text=True, timeout=300)


def test_package_json_installs_the_sources(blank: Path) -> None:
    port, board = str(fleet.meter_status(0, blank)["port"]), "virtual"
    mdir = fleet.meter_dir(blank, 0)
    assert not fleet.exists(mdir, "/main.py")  # blank
    with http_server(REPO) as url:
        for pkg in (f"{url}/", f"{url}/board/{board}/"):
            r = mpremote(port, "mip", "install", "--target", "/", pkg)
            assert r.returncode == 0, r.stdout + r.stderr
            assert "Installing" in r.stdout, r.stdout
    for src, dest in sources(board):
        assert fleet.read_file(mdir, dest) == src.read_bytes(), dest


@pytest.mark.xfail(strict=True, reason="issue 20: on the rp2-pico profile (the suite's default "
                   "since 7 December) the meter installed from the compiled index does not "
                   "report main.py running within 60 s; not yet diagnosed")
def test_the_compiled_index_installs_the_image_and_the_meter_runs_it(
        blank: Path, tmp_path: Path) -> None:
    port, board = str(fleet.meter_status(1, blank)["port"]), "virtual"
    mdir = fleet.meter_dir(blank, 1)
    assert not fleet.exists(mdir, "/main.py")  # blank
    assert mip.build_index(tmp_path / "index", (board,)) == [f"hasm-meter-{board}"]
    with http_server(tmp_path / "index") as url:
        r = mpremote(port, "mip", "install", "--index", url, "--target", "/",
                     f"hasm-meter-{board}")
    assert r.returncode == 0, r.stdout + r.stderr
    image = build_image(board, mip.INDEX_ARCH[board])
    for f in image:
        assert fleet.read_file(mdir, f.dest) == f.data, f.dest
    with Board(port, timeout=20) as b:  # the friendly REPL's Ctrl-D: boot.py, main.py
        b.enter_raw(soft_reset=False)
        b.soft_reset_to_main()
    deadline = time.monotonic() + 60
    while fleet.meter_status(1, blank).get("files", {}).get("main.py") != "running":
        assert time.monotonic() < deadline, fleet.meter_status(1, blank)
        time.sleep(0.5)
    time.sleep(3)  # and it keeps running: the meter's tasks are up, nothing crashed
    after = fleet.meter_status(1, blank)
    assert after.get("files", {}).get("main.py") == "running", after
