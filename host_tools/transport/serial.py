"""How bytes reach a board: a serial port (a Pico's USB CDC, a USB-UART, or a
virtual meter's pty), through mpremote's own SerialTransport.

Commands (flash, head-end, bench) use :class:`Board` and never touch pyserial
or mpremote directly. Every failure surfaces as :class:`BoardError` with a
one-line message naming the port.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import serial
import serial.tools.list_ports
from mpremote.transport import TransportError, TransportExecError
from mpremote.transport_serial import SerialTransport

# USB vendor ids of MicroPython boards: Raspberry Pi (RP2040) and MicroPython (pyboard).
BOARD_VIDS = {0x2E8A: "rp2", 0xF055: "pyboard"}


class _ThreadStdout(io.TextIOBase):
    """sys.stdout while some thread captures what mpremote prints: that thread's prints go to
    its own buffer, every other thread's to the stdout it replaced. (contextlib.
    redirect_stdout swaps the process-wide sys.stdout: threads doing it at once left a
    StringIO behind, and a soak's progress lines went into it for the rest of the run.)"""

    def __init__(self, wrapped: Any) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.local = threading.local()

    def write(self, s: str) -> int:
        buf = getattr(self.local, "buf", None)
        return int((buf if buf is not None else self.wrapped).write(s))

    def flush(self) -> None:
        buf = getattr(self.local, "buf", None)
        (buf if buf is not None else self.wrapped).flush()

    # what a console asks of stdout (rich: is it a terminal, how wide, which encoding)
    def isatty(self) -> bool:
        return bool(self.wrapped.isatty())

    def fileno(self) -> int:
        return int(self.wrapped.fileno())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self.wrapped, "encoding", "utf-8"))


_capture_lock = threading.Lock()
_capture_users = 0
_capture_stdout: _ThreadStdout | None = None


@contextlib.contextmanager
def capture_stdout(buf: io.StringIO) -> Iterator[None]:
    """What this thread prints goes to buf (and nothing of the others'), thread-safely."""
    global _capture_users, _capture_stdout
    with _capture_lock:
        if _capture_users == 0:
            _capture_stdout = _ThreadStdout(sys.stdout)
            sys.stdout = _capture_stdout
        _capture_users += 1
        proxy = _capture_stdout
    assert proxy is not None
    proxy.local.buf = buf
    try:
        yield
    finally:
        proxy.local.buf = None
        with _capture_lock:
            _capture_users -= 1
            if _capture_users == 0:
                if sys.stdout is proxy:
                    sys.stdout = proxy.wrapped
                _capture_stdout = None


class BoardError(Exception):
    """A board-level failure, with a message fit to print as one line."""


class SealedError(BoardError):
    """The board is a sealed meter: it said so when asked for its REPL (firmware/tasks/comm.py
    SEALED_NOTICE), and it will not give one until it is unsealed."""


# What a sealed meter answers to a Ctrl-C (firmware/tasks/comm.py SEALED_NOTICE).
SEALED_MARK = "meter sealed:"
HOW_TO_UNSEAL = ("unseal it with `meterctl unseal --port {port}` (authenticated with the meter's "
                 "keys from the keystore), or on site with the service input: the terminal "
                 "cover open and the service jumper fitted at power-up")


@dataclass(frozen=True)
class BoardInfo:
    name: str  # sys.implementation.name
    version: str
    platform: str  # sys.platform: linux (virtual), rp2, pyboard
    machine: str
    mpy: int | None  # sys.implementation._mpy, None where the port lacks it

    @property
    def mpy_version(self) -> tuple[int, int] | None:
        if self.mpy is None:
            return None
        return self.mpy & 0xFF, (self.mpy >> 8) & 3

    @property
    def arch(self) -> str | None:
        """The native architecture for mpy-cross -march, if the board has one."""
        if self.mpy is None:
            return None
        archs = [None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp",
                 "armv7emdp", "xtensa", "xtensawin", "rv32imc", "rv64imc"]
        idx = self.mpy >> 10
        return archs[idx] if idx < len(archs) else None

    def describe(self) -> str:
        mv = self.mpy_version
        mpy = f"mpy v{mv[0]}.{mv[1]} {self.arch or 'bytecode'}" if mv else "no mpy info"
        return f"{self.name} {self.version}, {self.platform}, {mpy}"


def find_boards() -> list[tuple[str, str]]:
    """(device, kind) for every USB serial port with a MicroPython board's VID."""
    return [(p.device, BOARD_VIDS[p.vid]) for p in serial.tools.list_ports.comports()
            if p.vid in BOARD_VIDS]


def usb_id(port: str) -> tuple[int, int] | None:
    """(VID, PID) of the USB serial port behind ``port`` (a /dev/serial/by-id link works
    too); None for anything else: a pty, a plain UART, a URL."""
    if "://" in port:
        return None
    real = os.path.realpath(port)
    for p in serial.tools.list_ports.comports():
        if p.vid is not None and os.path.realpath(p.device) == real:
            return p.vid, p.pid or 0
    return None


IN_USE = ("{port}: in use by another program (mpremote?): it holds the port's exclusive lock; "
          "close it and try again")


def port_in_use(port: str) -> bool:
    """Whether another program holds ``port``'s exclusive lock: the flock(LOCK_EX) that
    pyserial takes with ``exclusive=True`` on POSIX, as mpremote's SerialTransport does (and
    so do meterctl's own links). A port nobody locks, or that cannot be opened, is not "in
    use" (the open error says what is wrong instead)."""
    import fcntl

    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def resolve_port(port: str) -> str:
    """Turn "auto" into the one connected board's port; check that a path exists."""
    if port == "auto":
        boards = find_boards()
        if not boards:
            raise BoardError("no MicroPython board found on USB (looked for VID 2E8A rp2, "
                             "F055 pyboard); give --port")
        if len(boards) > 1:
            listed = ", ".join(f"{d} ({k})" for d, k in boards)
            raise BoardError(f"several boards found: {listed}; choose one with --port")
        return boards[0][0]
    if "://" not in port and not os.path.exists(port):
        raise BoardError(f"{port}: no such port")
    if "://" not in port and not stat.S_ISCHR(os.stat(port).st_mode):
        raise BoardError(f"{port}: not a serial device")
    return port


INFO_CODE = (
    "import sys\n"
    "print(repr((sys.implementation.name, '.'.join(str(v) for v in sys.implementation.version[:3])"
    " + ('-' + sys.implementation.version[3] if len(sys.implementation.version) > 3 and"
    " sys.implementation.version[3] else ''), sys.platform,"
    " getattr(sys.implementation, '_machine', ''), getattr(sys.implementation, '_mpy', None))))\n"
)


class Board:
    """A MicroPython board on a serial port, driven through its raw REPL."""

    def __init__(self, port: str, timeout: float = 10.0, read_timeout: float = 10.0,
                 exec_timeout: float = 10.0) -> None:
        self.port = resolve_port(port)
        self.timeout = timeout
        self.exec_timeout = exec_timeout  # the longest silence of code run by exec/eval
        try:
            # A read timeout keeps a silent board from blocking forever (mpremote
            # reads ptys with a blocking read otherwise). It also bounds the wait for each
            # raw-paste flow-control byte: a slow emulator (rp2040js) needs a longer one. And
            # the board's answer to the raw-paste request: mpremote reads it once, and one
            # that came later than this (a busy host: 1 s was seen) is then read where the
            # command's "OK" should be ("could not exec command (response: b'R\x01')").
            # 3 s was seen too short once more: a virtual board's soft reset in raw mode starts a
            # new VM process, whose first answer can take seconds on a loaded host. Only those
            # direct reads wait this long (mpremote's read_until polls with its own limits).
            self.t = SerialTransport(self.port, baudrate=115200, timeout=read_timeout)
        except (TransportError, serial.SerialException, OSError) as e:
            # mpremote's SerialTransport says only "failed to access": ask the lock ourselves
            if "://" not in self.port and port_in_use(self.port):
                raise BoardError(IN_USE.format(port=self.port)) from None
            raise BoardError(f"{self.port}: cannot open ({_short(e)})") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.t.close()

    def __enter__(self) -> Board:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        printed = io.StringIO()
        try:
            with capture_stdout(printed):  # mpremote prints on failure
                yield
        except TransportExecError as e:
            raise BoardError(f"{self.port}: {doing} failed on the board: "
                             f"{e.error_output.strip().splitlines()[-1] if e.error_output else e}"
                             ) from None
        except TransportError as e:
            msg = str(e.args[0]) if e.args else str(e)
            if "raw repl" in msg and SEALED_MARK in printed.getvalue():
                raise SealedError(f"{self.port}: the meter is sealed: its REPL is closed, so "
                                  f"{doing} is refused; "
                                  + HOW_TO_UNSEAL.format(port=self.port)) from None
            if "raw repl" in msg:
                raise BoardError(f"{self.port}: the board does not answer (no raw REPL within "
                                 f"{self.timeout:g} s) while {doing}") from None
            raise BoardError(f"{self.port}: {doing}: {msg}") from None
        except (serial.SerialException, OSError) as e:
            raise BoardError(f"{self.port}: board disconnected while {doing} ({_short(e)})"
                             ) from None

    def enter_raw(self, soft_reset: bool = True) -> None:
        try:
            with self._errors("entering the raw REPL"):
                self.t.enter_raw_repl(soft_reset=soft_reset,
                                      timeout_overall=self.timeout / 2)
        except SealedError:
            raise
        except BoardError:
            # A Ctrl-C that reached firmware starting up (or reading stdin) can be lost, and
            # the Ctrl-A after it eaten: interrupt once more and try again, as a user would.
            with self._errors("entering the raw REPL"):
                self.t.serial.write(b"\r\x03\x03")
                time.sleep(0.3)
                self.t.enter_raw_repl(soft_reset=soft_reset,
                                      timeout_overall=self.timeout / 2)

    def exit_raw(self) -> None:
        with self._errors("leaving the raw REPL"):
            self.t.exit_raw_repl()

    def exec(self, code: str, doing: str = "running code",
             data_consumer: Callable[[bytes], None] | None = None) -> bytes:
        with self._errors(doing):
            # mpremote's exec, with our limit on the silence instead of its fixed 10 s
            out, err = self.t.exec_raw(code, timeout=self.exec_timeout,
                                       data_consumer=data_consumer)
            if err:
                raise TransportExecError(out, err.decode())
            return bytes(out)

    def eval(self, expr: str, doing: str = "evaluating") -> Any:
        import ast

        out = self.exec(f"print(repr({expr}))", doing)
        with self._errors(doing):
            return ast.literal_eval(out.strip().decode())

    def info(self) -> BoardInfo:
        import ast

        out = self.exec(INFO_CODE, "reading sys.implementation")
        name, version, platform, machine, mpy = ast.literal_eval(out.decode().strip())
        return BoardInfo(name, version, platform, machine, mpy)

    def write_file(self, path: str, data: bytes,
                   progress: Callable[[int, int], None] | None = None, chunk: int = 512) -> None:
        with self._errors(f"writing {path}"):
            self.t.fs_writefile(path, data, chunk_size=chunk, progress_callback=progress)

    def soft_reset_to_main(self) -> None:
        """Soft-reset from the friendly REPL, so that boot.py and main.py run."""
        with self._errors("soft-resetting"):
            self.t.exit_raw_repl()
            self.t.read_until(1, b">>> ", timeout=2)
            self.t.serial.write(b"\x04")
            self.t.read_until(1, b"soft reboot\r\n", timeout=self.timeout)


def _short(e: BaseException) -> str:
    s = str(e).strip() or type(e).__name__
    return s.splitlines()[0]
