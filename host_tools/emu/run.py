"""Run an emulated board with its UART on a pty, reachable like a Pico: under QEMU (the
instruction-counting boards m0plus and m4) or under rp2040js (the cycle-counting rp2040).

``qemu-system-arm -icount shift=0,sleep=off`` makes the guest's clock count instructions:
1 ns of virtual time per instruction, so ``time.ticks_us()`` on the board reads
instructions / 1000 and ``emu.count()`` reads them to the timer's resolution (63 ns on the
M0+ board, 40 ns on the M4). The UART is a QEMU pty: ``host_tools.transport.serial.Board``
and ``mpremote connect <pty>`` reach the raw REPL exactly as on a real board.

The rp2040 board runs the same ARMv6-M code on rp2040js (Node.js), an RP2040 model that
counts Cortex-M0+ cycles; its UART is the harness's stdin/stdout, which a thread here bridges
to a pty of our own, so that it is reached the same way.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import tty
from pathlib import Path
from types import TracebackType

from host_tools.emu.build import BoardSpec, EmuError, board_spec, build, ensure_rp2040js

PTY_RE = re.compile(r"char device redirected to (/dev/pts/\d+)")


def qemu_command(spec: BoardSpec, image: Path, shift: int = 0,
                 preload: tuple[Path, int] | None = None) -> list[str]:
    """``shift``: 2**shift ns of virtual time per instruction (0: the benches' 1 ns; 3: 8 ns,
    a 125 MHz core at one instruction per cycle, host_tools/emu/c6.py). ``preload``: (file,
    address) that QEMU's generic loader puts into RAM before power-on (the RAM filesystem's
    image, ramfs.c)."""
    qemu = shutil.which("qemu-system-arm") or "qemu-system-arm"
    extra = [] if preload is None else [
        "-device", f"loader,file={preload[0]},addr={preload[1]:#x},force-raw=on"]
    return [qemu, *spec.qemu_args, "-display", "none", "-monitor", "none",
            "-chardev", "pty,id=ser0", "-serial", "chardev:ser0", "-semihosting",
            "-icount", f"shift={shift},sleep=off", *extra, "-kernel", str(image)]


class Emulator:
    """One emulated board: ``with Emulator("m0plus") as emu: Board(emu.port)``."""

    def __init__(self, board: str = "m0plus", image: Path | None = None,
                 quiet: bool = True, shift: int = 0,
                 preload: tuple[Path, int] | None = None) -> None:
        self.spec = board_spec(board)
        self.shift = shift
        self.preload = preload
        self.image = image or build(board, quiet=quiet)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = ""
        self._dir = tempfile.TemporaryDirectory(prefix="meter-emu-")
        self._pty: tuple[int, ...] = ()
        self.log_path = Path(self._dir.name) / "qemu.log"
        # What a client (host_tools.transport.serial.Board) should allow: the wait for each
        # byte it reads (raw-paste flow control) and the longest silence of running code.
        # Emulated time runs slower than wall time (rp2040js about 40 times slower than
        # QEMU), and slower still on a loaded host.
        qemu = self.spec.runner == "qemu"
        self.read_timeout = 10.0 if qemu else 30.0
        self.exec_timeout = 300.0 if qemu else 1800.0

    def start(self, timeout: float = 10.0) -> str:
        """Start the emulator; returns the pty of the board's UART."""
        if self.spec.runner == "rp2040js":
            return self._start_rp2040js()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(qemu_command(self.spec, self.image, self.shift,
                                                      self.preload),
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = PTY_RE.search(self.log())
            if m:
                self.port = m.group(1)
                return self.port
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        out = self.log().strip().splitlines()
        self.stop()
        raise EmuError(f"qemu ({self.spec.name}) did not start: "
                       f"{out[-1] if out else 'no output'}")

    def _start_rp2040js(self) -> str:
        mods = ensure_rp2040js()
        node = shutil.which("node") or "node"
        script = self.spec.board_dir / "run.js"
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo or line editing before the client configures it
        self._pty = (master, slave)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([node, str(script), str(self.image.with_suffix(".bin"))],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log, env=dict(os.environ, NODE_PATH=str(mods)),
                                         start_new_session=True)
        self._bridge = threading.Thread(target=self._pump, args=(master, self.proc),
                                        daemon=True)
        self._bridge.start()
        self.port = os.ttyname(slave)
        return self.port

    @staticmethod
    def _pump(master: int, proc: subprocess.Popen[bytes]) -> None:
        """Copy bytes between the pty's master side and the harness until either closes."""
        assert proc.stdin is not None and proc.stdout is not None
        out_fd, in_fd = proc.stdout.fileno(), proc.stdin.fileno()
        try:
            while proc.poll() is None:
                ready, _, _ = select.select([master, out_fd], [], [], 0.2)
                if master in ready:
                    os.write(in_fd, os.read(master, 4096))
                if out_fd in ready:
                    data = os.read(out_fd, 4096)
                    if not data:
                        return
                    os.write(master, data)
        except OSError:
            return

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.proc = None
        for fd in self._pty:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._pty = ()

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> Emulator:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
