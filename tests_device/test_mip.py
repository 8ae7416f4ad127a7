"""`mpremote mip install` of the firmware (issue 20, Build 6), with the real mpremote over HTTP
(`python -m http.server`): from the repository's package.json files a blank virtual meter gets
byte for byte the sources `meterctl flash --source` deploys; from the compiled index
(host_tools/flash/mip.py build_index) another gets the .mpy image `meterctl flash` builds, and
runs the meter firmware after a soft reset. Each meter installs its own board's packages, the
definition `meterctl flash` picks from its identity (a Pico under the suite's rp2-pico
profile: rp2_pico); another board's package installs but does not boot there, as on a Pico."""

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
from host_tools.flash.deploy import pick_board
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
    fleet.start(3, base, profile=session_profile())
    _LIVE_FLEETS.append(base)
    try:
        yield base
    finally:
        _LIVE_FLEETS.remove(base)
        fleet.stop(base)


def mpremote(port: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mpremote", "connect", port, *args],
                          capture_output=True, text=True, timeout=300)


def board_of(port: str) -> tuple[str, str | None]:
    """The board definition `meterctl flash` picks for the meter on ``port`` (by its
    sys.platform and machine), and the .mpy architecture it reports (sys.implementation._mpy)."""
    with Board(port, timeout=20) as b:
        b.enter_raw(soft_reset=False)
        info = b.info()
        b.exit_raw()
    return pick_board(port, info)[0], info.arch


def install_from_index(port: str, board: str, root: Path) -> None:
    assert mip.build_index(root, (board,)) == [mip.index_package(board)]
    with http_server(root) as url:
        r = mpremote(port, "mip", "install", "--index", url, "--target", "/",
                     mip.index_package(board))
    assert r.returncode == 0, r.stdout + r.stderr


def soft_reset_to_main(port: str, until: bytes, timeout: float) -> bytes:
    """The friendly REPL's Ctrl-D (boot.py, main.py); the console up to ``until``."""
    with Board(port, timeout=20) as b:
        b.enter_raw(soft_reset=False)
        b.soft_reset_to_main()
        return bytes(b.t.read_until(1, until, timeout=timeout))


def test_package_json_installs_the_sources(blank: Path) -> None:
    port = str(fleet.meter_status(0, blank)["port"])
    board = board_of(port)[0]
    mdir = fleet.meter_dir(blank, 0)
    assert not fleet.exists(mdir, "/main.py")  # blank
    with http_server(REPO) as url:
        for pkg in (f"{url}/", f"{url}/board/{board}/"):
            r = mpremote(port, "mip", "install", "--target", "/", pkg)
            assert r.returncode == 0, r.stdout + r.stderr
            assert "Installing" in r.stdout, r.stdout
    for src, dest in sources(board):
        assert fleet.read_file(mdir, dest) == src.read_bytes(), dest


def test_the_compiled_index_installs_the_image_and_the_meter_runs_it(
        blank: Path, tmp_path: Path) -> None:
    port = str(fleet.meter_status(1, blank)["port"])
    board, arch = board_of(port)
    assert mip.INDEX_ARCH[board] == arch  # the package is compiled for what the board reports
    mdir = fleet.meter_dir(blank, 1)
    assert not fleet.exists(mdir, "/main.py")  # blank
    install_from_index(port, board, tmp_path / "index")
    image = build_image(board, mip.INDEX_ARCH[board])
    for f in image:
        assert fleet.read_file(mdir, f.dest) == f.data, f.dest
    started = f"on board {board} ".encode()
    out = soft_reset_to_main(port, started, 60)
    assert started in out, out.decode(errors="replace")
    deadline = time.monotonic() + 60
    while fleet.meter_status(1, blank).get("files", {}).get("main.py") != "running":
        assert time.monotonic() < deadline, fleet.meter_status(1, blank)
        time.sleep(0.5)
    time.sleep(3)  # and it keeps running: the meter's tasks are up, nothing crashed
    after = fleet.meter_status(1, blank)
    assert after.get("files", {}).get("main.py") == "running", after


def test_another_boards_index_package_installs_but_the_meter_does_not_boot_it(
        blank: Path, tmp_path: Path) -> None:
    # mpremote picks the index's directory by the .mpy version alone, so nothing stops the
    # wrong board's package; its `board` imports what only that board has (board/virtual:
    # the virtual ROM's _vhw, which a Pico lacks; board/rp2_pico: machine.Pin, rp2), and a
    # virtual meter refuses it as the board would (issue 20: the test installed the virtual
    # board's package on the Pico profile).
    port = str(fleet.meter_status(2, blank)["port"])
    board = board_of(port)[0]
    other = "virtual" if board != "virtual" else "rp2_pico"
    install_from_index(port, other, tmp_path / "index")
    out = soft_reset_to_main(port, b">>> ", 60).decode(errors="replace")
    assert "ImportError" in out and 'File "board/__init__.mpy"' in out, out
    assert f"on board {other}" not in out, out
    status = fleet.meter_status(2, blank)
    assert status.get("files", {}).get("main.py") != "running", status
