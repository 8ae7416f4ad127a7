"""The serial link is byte-exact: what a client sends reaches the board unchanged and in full,
through the raw REPL, raw-paste and the script's own stdin, with the host's cores busy.

A virtual meter once turned LF into CR (so a CRLF script reached the lexer as two newlines) and
threw away input that had arrived but not been read whenever its REPL switched terminal modes
(docs/virtual-board.md). Every check here compares a SHA-256 the board computes over what it
received with the host's own. The meter is bare (no firmware): the link alone is under test.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mpremote.transport_serial import SerialTransport

from host_tools.headend import wire
from host_tools.sim import fleet

from .conftest import _LIVE_FLEETS, mpremote

# Python source may hold any byte in a bytes literal except these: the literal's own quote and
# escape, line ends (kept for the CRLF checks below), and raw-paste's Ctrl-C/Ctrl-D; the plain
# raw REPL also acts on Ctrl-A and Ctrl-B (shared/runtime/pyexec.c). NUL is left out too: the
# VM's lexer (not the link) reads it as 0x01, on a board as here.
_NOT_IN_LITERAL = frozenset(b"'\\\r\n\x03\x04\x00")
PASTE_BYTES = bytes(b for b in range(256) if b not in _NOT_IN_LITERAL)
RAW_BYTES = bytes(b for b in PASTE_BYTES if b not in b"\x01\x02")
CHUNK = 1024  # bytes per h.update(b'...') line
SCRIPT_CHUNKS = 24  # ~24 KB of source per script: the VM holds it all while it compiles


@contextlib.contextmanager
def cpu_hogs() -> Iterator[None]:
    """A busy loop on every core of the host, for as long as the block runs."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for h in hogs:
            h.kill()
            h.wait()


@pytest.fixture(scope="module")
def bare_port(tmp_path_factory: pytest.TempPathFactory, real_port: str | None) -> Iterator[str]:
    """A virtual meter of this module's own (no firmware), or --port."""
    if real_port:
        yield real_port
        return
    base = tmp_path_factory.mktemp("link") / "fleet"
    recs = fleet.start(1, base)
    _LIVE_FLEETS.append(base)
    try:
        yield str(recs[0]["port"])
    finally:
        _LIVE_FLEETS.remove(base)
        fleet.stop(base)


@pytest.fixture
def raw(bare_port: str) -> Iterator[SerialTransport]:
    t = SerialTransport(bare_port, baudrate=115200)
    t.enter_raw_repl(soft_reset=False)
    try:
        yield t
    finally:
        with contextlib.suppress(Exception):
            t.exit_raw_repl()
        t.close()


def _script(rng: random.Random, alphabet: bytes) -> tuple[bytes, str]:
    """A CRLF script of random bytes literals with a line continuation; what it must print."""
    h = hashlib.sha256()
    lines = [b"import hashlib, binascii", b"h = hashlib.sha256()"]
    for _ in range(SCRIPT_CHUNKS):
        data = bytes(rng.choice(alphabet) for _ in range(CHUNK))
        h.update(data)
        lines.append(b"h.update(b'" + data + b"')")
    # A continuation breaks if a line end reaches the lexer as two; a CR alone is one too.
    lines += [b"n = 1 + \\", b"    2\rprint(binascii.hexlify(h.digest()).decode(), n)"]
    return b"\r\n".join(lines) + b"\r\n", f"{h.hexdigest()} 3"


@pytest.mark.parametrize("paste", [True, False], ids=["raw-paste", "raw-repl"])
def test_scripts_arrive_byte_exact_under_load(raw: SerialTransport, paste: bool) -> None:
    """~150 KB of source in random bytes literals, CRLF line ends, through raw-paste (with its
    flow-control window) or the plain raw REPL, while every core of the host is busy."""
    raw.use_raw_paste = paste
    rng = random.Random(17 + paste)
    with cpu_hogs():
        for i in range(6):
            src, want = _script(rng, PASTE_BYTES if paste else RAW_BYTES)
            out, err = raw.exec_raw(src, timeout=60)
            assert err == b"", f"script {i}: {err!r}"
            assert out.decode().strip() == want, f"script {i} arrived changed"


_READER = b"""import sys, micropython, hashlib, binascii
micropython.kbd_intr(-1)
n = %d
h = hashlib.sha256()
print('READY')
while n:
    b = sys.stdin.buffer.read(min(n, 512))
    h.update(b)
    n -= len(b)
micropython.kbd_intr(3)
print(binascii.hexlify(h.digest()).decode())
"""


@pytest.mark.parametrize("paste", [True, False], ids=["raw-paste", "raw-repl"])
def test_stdin_every_byte_value_under_load(raw: SerialTransport, paste: bool) -> None:
    """256 KB of random bytes of every value (NUL, CR, LF, CRLF, Ctrl-C and Ctrl-D are data
    once the script has turned its interrupt character off) read from stdin by a running
    script, sent in one burst, while every core of the host is busy."""
    raw.use_raw_paste = paste
    rng = random.Random(4 + paste)
    payload = bytes(range(256)) + b"\r\n\r\x03\x04\n\r" + rng.randbytes(256 * 1024)
    with cpu_hogs():
        raw.exec_raw_no_follow(_READER % len(payload))
        raw.read_until(1, b"READY\r\n", timeout=60)
        raw.serial.write(payload)
        out, err = raw.follow(timeout=120)
    assert err == b"", err
    assert out.decode().strip() == hashlib.sha256(payload).hexdigest()


_ECHO = b"""import sys
n = %d
print('READY')
while n:
    line = bytearray()
    while True:
        b = sys.stdin.buffer.read(1)
        line += b
        if b == b'\\n':
            break
    sys.stdout.buffer.write(line)
    n -= 1
print('DONE')
"""


def test_wan_lines_of_every_byte_value_cross_the_link_both_ways(raw: SerialTransport) -> None:
    """WAN frame lines (docs/PROTOCOL.md "Lines": bytes as they are, Ctrl-A..Ctrl-E, CR, LF
    and ESC escaped) whose frames hold every byte value reach a script reading stdin
    unchanged, with Ctrl-C still the interrupt character (an unsealed meter: one raw 0x03
    would stop the script), and its echo on stdout (the supervisor writes a CR before each
    LF, as a board's terminal sees it) reaches the head-end's LineReader unchanged."""
    frames = [bytes(range(256)), bytes(range(255, -1, -1)) * 4, random.Random(9).randbytes(1024),
              bytes((1, 2, 3, 4, 5, 10, 13, 27)) * 80, bytes(1024), b"\xff" * 1024]
    lines = [wire.to_line(f) for f in frames]
    raw.exec_raw_no_follow(_ECHO % len(lines))
    raw.read_until(1, b"READY\r\n", timeout=60)
    raw.serial.write(b"".join(lines))
    out = raw.read_until(1, b"DONE\r\n", timeout=120)
    texts: list[bytes] = []
    got = wire.LineReader(on_text=texts.append).feed(out)
    assert texts == [b"DONE"]
    assert [wire.from_line(x) for x in got] == frames
    raw.follow(timeout=30)


def test_input_sent_ahead_of_the_command_is_kept(raw: SerialTransport) -> None:
    """Bytes sent in the same write as a raw-REPL command, before it runs, wait for the script
    that reads them: a board's input ring keeps them (the unix port's switch of terminal
    modes before it runs a command threw them away)."""
    payload = b"ahead\r\n" * 100
    raw.read_until(1, b">")
    raw.serial.write(b"import sys\nprint(len(sys.stdin.buffer.read(%d)))\n\x04" % len(payload)
                     + payload)
    raw.read_until(2, b"OK", timeout=30)
    out, err = raw.follow(timeout=30)
    assert (out.strip(), err) == (str(len(payload)).encode(), b"")


def test_friendly_repl_keeps_lines_typed_ahead(bare_port: str) -> None:
    """Three lines pasted at once into the friendly REPL all run (on a board the input ring
    holds the later lines while the first runs)."""
    t = SerialTransport(bare_port, baudrate=115200)
    try:
        t.enter_raw_repl(soft_reset=False)
        t.exit_raw_repl()  # the friendly REPL
        t.read_until(1, b">>> ", timeout=10)
        t.serial.write(b"x = 6\ry = 7\rprint('got', x * y)\r")
        out = t.read_until(1, b"got 42\r\n>>> ", timeout=30)
        assert out.endswith(b"got 42\r\n>>> "), out
    finally:
        t.close()


def test_fs_cp_both_ways_under_load(bare_port: str, tmp_path: Path) -> None:
    """mpremote copies a random binary file to the board and back, unchanged, while every
    core of the host is busy; the board's own sha256sum agrees."""
    data = random.Random(3).randbytes(96 * 1024) + bytes(range(256)) + b"\r\n\x03\x04"
    src, back = tmp_path / "rand.bin", tmp_path / "back.bin"
    src.write_bytes(data)
    with cpu_hogs():
        t0 = time.monotonic()
        r = mpremote(bare_port, "fs", "cp", str(src), ":rand.bin", "+", "fs", "sha256sum",
                     ":rand.bin", "+", "fs", "cp", ":rand.bin", str(back), timeout=300)
        took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(data).hexdigest() in r.stdout
    assert back.read_bytes() == data, f"changed on the way ({took:.0f} s)"
    mpremote(bare_port, "fs", "rm", ":rand.bin")
