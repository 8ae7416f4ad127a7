"""Host robustness (issue 10): a meter or board that goes silent in the middle of an answer
never hangs the head-end, and the keystore is private (0600, refused otherwise, never in a
repr, a log or a message). Real pyserial and mpremote over real ptys; the "meter" on the other
end is this test, byte by byte."""

from __future__ import annotations

import os
import pty
import stat
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from host_tools.headend import wire
from host_tools.headend.client import LinkError, MeterLink
from host_tools.headend.keystore import Keystore, KeystoreError, MeterEntry
from host_tools.transport.serial import Board, BoardError

MASTER = bytes(range(32))
METER = 0x1234


class FakePort:
    """A pty whose far end this test plays: it records what the host sends and answers with
    `reply(received_so_far) -> bytes | None` (None: say nothing more)."""

    def __init__(self, reply: object, repl: bool = False) -> None:
        self.repl = repl  # plays a MicroPython REPL, not the firmware: keeps control bytes
        self.master, slave = pty.openpty()
        tty.setraw(slave)
        self.name = os.ttyname(slave)
        self._slave = slave  # kept open: the port stays "plugged in"
        self.got = bytearray()
        self._reply = reply
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        import select

        while not self._stop.is_set():
            r, _, _ = select.select([self.master], [], [], 0.05)
            if not r:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            # the firmware's comm task drops control bytes: the Ctrl-B of a link's REPL probe
            self.got += data if self.repl else data.replace(b"\x02", b"")
            out = self._reply(bytes(self.got))  # type: ignore[operator]
            if out:
                os.write(self.master, out)

    def close(self) -> None:
        self._stop.set()
        self._t.join()
        os.close(self.master)
        os.close(self._slave)


@pytest.fixture
def keystore(tmp_path: Path) -> Keystore:
    ks = Keystore(tmp_path / "ks" / "keystore.json")
    ks.put(MeterEntry(METER, MASTER))
    return ks


def test_a_meter_silent_mid_reply_gives_a_clear_error_in_time(keystore: Keystore) -> None:
    keys = wire.Keys.derive(METER, MASTER, wire.role_of(wire.K_READ))  # READ: the supplier's
    sent: list[int] = []

    def half_an_answer(got: bytes) -> bytes | None:
        if b"\n" not in got or sent:
            return None
        cmd = wire.open_frame(keys, False, wire.from_line(got.split(b"\n")[0]))
        line = wire.to_line(wire.seal(keys, True, wire.K_READ, 1, cmd.ctr, b'{"vrms": 230}',
                                      encrypt=True))
        sent.append(len(line))
        return line[: len(line) // 2]  # and then nothing: the meter hung mid-reply

    port = FakePort(half_an_answer)
    try:
        entry = keystore.get(METER)
        assert entry is not None
        with MeterLink(port.name, entry, keystore, timeout=1.5) as link:
            t0 = time.monotonic()
            with pytest.raises(LinkError, match=r"did not answer within 1\.5 s"):
                link.request(wire.K_READ)
            assert time.monotonic() - t0 < 5
        assert sent  # the half answer did go out
    finally:
        port.close()


def test_the_headend_refuses_a_replayed_answer_and_personal_data_in_clear(
        keystore: Keystore) -> None:
    """The head-end's own checks on what comes back (host_tools/headend/client.py): an answer
    under an uplink counter it has seen is a replay, and a READ answered unencrypted is
    personal data sent in clear; both refused, whatever their MAC says."""
    keys = wire.Keys.derive(METER, MASTER, wire.role_of(wire.K_READ))  # READ: the supplier's
    # per command: (the answer's uplink counter, encrypted)
    plan = [(5, True), (5, True), (4, True), (6, False), (7, True)]
    answered: list[int] = []

    def answer(got: bytes) -> bytes | None:
        lines = got.split(b"\n")[:-1]
        if len(lines) <= len(answered) or len(answered) >= len(plan):
            return None
        cmd = wire.open_frame(keys, False, wire.from_line(lines[len(answered)]))
        up, enc = plan[len(answered)]
        answered.append(cmd.ctr)
        return wire.to_line(wire.seal(keys, True, wire.K_READ, up, cmd.ctr, b'{"vrms": 230}',
                                      encrypt=enc))

    port = FakePort(answer)
    try:
        entry = keystore.get(METER)
        assert entry is not None
        got: list[str] = []
        with MeterLink(port.name, entry, keystore, timeout=3.0) as link:
            for _ in plan:
                try:
                    got.append(str(link.request(wire.K_READ)))
                except LinkError as e:
                    got.append(str(e))
        assert got[0] == "{'vrms': 230}"
        assert "replayed response (counter 5)" in got[1]
        assert "replayed response (counter 4)" in got[2]
        assert "personal data sent in clear" in got[3]
        assert got[4] == "{'vrms': 230}"  # a fresh, encrypted answer is taken again
    finally:
        port.close()


def test_a_repl_left_open_is_named_and_no_frame_is_typed_into_it(keystore: Keystore) -> None:
    """Issue 20: after `mpremote exec` a friendly REPL was left on the port and `read` typed
    its frame into it ("SyntaxError: invalid syntax"). The link asks first: a REPL answers
    Ctrl-B with its banner and prompt; then nothing else is sent."""

    def repl(got: bytes) -> bytes | None:
        if got.endswith(b"\x02"):  # as pyexec.c's friendly REPL does
            return b"\r\nMicroPython v1.28.0 on 2026-04-01; Raspberry Pi Pico with RP2040\r\n" \
                   b"Type \"help()\" for more information.\r\n>>> "
        return None

    port = FakePort(repl, repl=True)
    try:
        entry = keystore.get(METER)
        assert entry is not None
        with pytest.raises(LinkError, match=r"a MicroPython REPL is open .* no frame was sent"):
            MeterLink(port.name, entry, keystore, timeout=1.5)
        time.sleep(0.2)
        assert bytes(port.got) == b"\x02"  # the probe, and nothing more
        r = subprocess.run([sys.executable, "-m", "host_tools.cli", "read", "--port", port.name,
                            "--meter", str(METER), "--keystore", str(keystore.path)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "REPL is open" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert b"~" not in port.got  # never a frame
    finally:
        port.close()


def test_a_repl_too_slow_for_the_check_is_still_named(keystore: Keystore) -> None:
    """A REPL that did not answer the check in time (a starved VM) and then gets the frame:
    the error says a REPL is open, not "is the firmware running?"."""

    def slow_repl(got: bytes) -> bytes | None:
        if got.endswith(b"\n"):
            return (b"\r\nTraceback (most recent call last):\r\n  File \"<stdin>\", line 1\r\n"
                    b"SyntaxError: invalid syntax\r\n>>> ")
        return None

    port = FakePort(slow_repl, repl=True)
    try:
        entry = keystore.get(METER)
        assert entry is not None
        with MeterLink(port.name, entry, keystore, timeout=1.0) as link:
            with pytest.raises(LinkError, match=r"a MicroPython REPL is open .* a frame reached"):
                link.request(wire.K_READ)
    finally:
        port.close()


def test_a_port_another_program_holds_is_named(keystore: Keystore) -> None:
    """mpremote opens a port with pyserial's exclusive=True (a flock): meterctl says the port
    is in use instead of "cannot open" (flash) or blaming the firmware (read)."""
    import serial

    from host_tools.transport.serial import Board, BoardError

    port = FakePort(lambda got: None)
    holder = serial.Serial(port.name, exclusive=True)  # what mpremote does
    try:
        entry = keystore.get(METER)
        assert entry is not None
        with pytest.raises(LinkError, match=r"in use by another program \(mpremote\?\)"):
            MeterLink(port.name, entry, keystore)
        with pytest.raises(BoardError, match=r"in use by another program \(mpremote\?\)"):
            Board(port.name)
        assert bytes(port.got) == b""  # nothing reached the board
        holder.close()
        with MeterLink(port.name, entry, keystore) as link:  # free again
            assert link.ser.is_open
    finally:
        holder.close()
        port.close()


def test_a_request_aborted_from_another_thread_ends_at_once_and_its_port_stays_its_own(
        keystore: Keystore) -> None:
    """The power-cut watcher's way to end a request: abort(), not closing the port under the
    reading thread (whose freed descriptor number another thread's open could get)."""
    port = FakePort(lambda _got: None)  # a meter that never answers
    try:
        entry = keystore.get(METER)
        assert entry is not None
        with MeterLink(port.name, entry, keystore, timeout=10.0) as link:
            fd = link.ser.fd
            threading.Timer(0.3, link.abort, args=("the meter's power was cut",)).start()
            t0 = time.monotonic()
            with pytest.raises(LinkError, match="the meter's power was cut"):
                link.request(wire.K_READ)
            assert time.monotonic() - t0 < 2
            assert link.ser.is_open and link.ser.fd == fd  # closed by its own thread only
        assert b"\n" in port.got  # the request went out before the abort
    finally:
        port.close()


def test_a_board_silent_mid_exec_gives_a_clear_error_in_time() -> None:
    # A raw REPL that accepts the code, prints half of its output and goes silent.
    def raw_repl(got: bytes) -> bytes | None:
        if got.endswith(b"\r\x01"):
            return b"raw REPL; CTRL-B to exit\r\n>"
        if got.endswith(b"\x05A\x01"):
            return b"R\x00"  # no raw-paste: plain raw REPL
        if got.endswith(b"\x04") and b"print" in got:
            return b"OK12"  # ... and never the \x04 that ends the output
        return None

    port = FakePort(raw_repl, repl=True)
    try:
        with Board(port.name, timeout=4) as b:
            b.enter_raw(soft_reset=False)
            t0 = time.monotonic()
            with pytest.raises(BoardError, match="reading: timeout") as e:
                b.exec("print(1234)", "reading")
            assert port.name in str(e.value)
            assert time.monotonic() - t0 < 30
    finally:
        port.close()


def test_the_keystore_is_private_and_one_others_can_read_is_refused(keystore: Keystore,
                                                                    tmp_path: Path) -> None:
    path = keystore.path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for mode in (0o644, 0o640, 0o604, 0o660, 0o601):
        os.chmod(path, mode)
        with pytest.raises(KeystoreError, match=f"chmod 600 {path}"):
            keystore.get(METER)
    for mode in (0o644,):  # and meterctl says so, with the fix
        os.chmod(path, mode)
        r = subprocess.run([sys.executable, "-m", "host_tools.cli", "read", "--port",
                            "/dev/null", "--keystore", str(path)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 1
        assert "let others read" in r.stderr and "chmod 600" in r.stderr, r.stderr
        assert MASTER.hex() not in r.stdout + r.stderr
    os.chmod(path, 0o600)
    assert keystore.get(METER) is not None
    # a counter update keeps it private
    keystore.next_down_ctr(METER)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_keys_never_reach_a_repr_or_a_message(keystore: Keystore) -> None:
    entry = keystore.get(METER)
    assert entry is not None
    entry.os_key = bytes(range(100, 132))
    for text in (repr(entry), str(entry), repr(wire.Keys.derive(METER, MASTER))):
        assert MASTER.hex() not in text and entry.os_key.hex() not in text
        assert "master" not in text
    # a meter that never answers: the error names the port and the meter, not the key
    port = FakePort(lambda got: None)
    try:
        r = subprocess.run([sys.executable, "-m", "host_tools.cli", "read", "--port", port.name,
                            "--meter", str(METER), "--keystore", str(keystore.path),
                            "--timeout", "1"], capture_output=True, text=True, timeout=60)
    finally:
        port.close()
    assert r.returncode == 1 and "did not answer" in r.stderr, r.stderr
    assert MASTER.hex() not in r.stdout + r.stderr


@pytest.fixture(autouse=True)
def _no_stray_threads() -> Iterator[None]:
    n = threading.active_count()
    yield
    assert threading.active_count() <= n


def test_mpremote_output_captured_in_threads_never_takes_the_process_stdout(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Board sessions in many threads at once each capture what mpremote prints; every other
    print still reaches the process's stdout, which is the same object afterwards (with
    contextlib.redirect_stdout a soak's progress lines once vanished into a left-over
    StringIO)."""
    import io

    from host_tools.transport.serial import capture_stdout

    real = sys.stdout
    bufs = [io.StringIO() for _ in range(16)]
    start = threading.Barrier(len(bufs) + 1)

    def session(k: int) -> None:
        start.wait()
        for n in range(200):
            with capture_stdout(bufs[k]):
                print(f"mpremote {k} {n}")
                time.sleep(0)

    threads = [threading.Thread(target=session, args=(k,)) for k in range(len(bufs))]
    for th in threads:
        th.start()
    start.wait()
    for n in range(200):  # a progress line meanwhile, from the main thread
        print(f"progress {n}")
        time.sleep(0)
    for th in threads:
        th.join()
    assert sys.stdout is real
    out = capsys.readouterr().out
    assert out.split("\n")[:-1] == [f"progress {n}" for n in range(200)]
    for k, b in enumerate(bufs):
        assert b.getvalue().split("\n")[:-1] == [f"mpremote {k} {n}" for n in range(200)]
