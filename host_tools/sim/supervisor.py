"""One virtual meter: the board around a real MicroPython VM.

Run as its own process (``python -S supervisor.py ...``), one per meter, by
``host_tools.sim.fleet``. Standard library only, so that it stays small in RAM
(the fleet's RSS budget is per meter). It

- owns the pty that clients (mpremote, pyserial, ampy, meterctl) open, in raw
  mode, and survives clients connecting and disconnecting, as a USB CDC port
  does; output while no client is attached is dropped, as on a Pico;
- runs the VM (``micropython -i -c BOOT``: the board's ROM, board/virtual/host/rom.py, run in
  place from a read-only mapping) on a pty of its own, with the heap capped like a Pico's;
- reboots the VM when it exits on a soft reset (the unix port exits where a
  board reboots), printing what a board prints and returning to the REPL mode
  the board was in: boot.py only after a raw-REPL soft reset, boot.py and
  main.py otherwise;
- turns a client's Ctrl-C into SIGINT while the VM is executing with its
  interrupt character enabled (raw-paste included), and passes it as a byte
  otherwise (at a prompt, or after ``micropython.kbd_intr(-1)``); one that comes while the
  board boots is held and handed to the file the ROM starts next (``_hand_over``);
- backs the hardware surface: input pins the host sets, output pins it reads,
  the waveform parameters of the ADC, and the HAN TX line on a second pty;
- answers a JSON control socket (``ctl.sock``): status, power-cut, power-on, pins,
  set-clock (time paced by the host), link-fault (a serial fault on request), stop;
- passes every byte between the client and the VM unchanged (the native launcher gives the VM
  a board's console input, vmlaunch.py); an open relay cuts the current the ADC sees.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import pty
import re
import select
import signal
import socket
import struct
import sys
import time
import tty

TYPE_CHECKING = False  # mypy sees True; importing typing would cost RAM at run time
if TYPE_CHECKING:
    from typing import Any

CTRL_A, CTRL_C = 0x01, 0x03
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
FRIENDLY_BANNER = re.compile(
    rb"MicroPython [^\r\n]*\r\nType \"help\(\)\" for more information\.\r\n>>> ")
SOFT_REBOOT = b"MPY: soft reboot\r\n"
OUT_CAP = 64 * 1024  # bytes buffered towards a slow client before the VM is held back
SIGINT_BIT = 1 << (signal.SIGINT - 1)
LINK_FAULTS = ("flip", "drop", "cut")  # the link-fault command's modes
FLIP_MASK = 0x01  # a flipped byte has its lowest bit inverted (one bit of line noise)
SIGINT_SETTLE_S = 0.3  # how long a SIGINT may take to reach the VM's prompt
# A SIGINT still unanswered once the VM's main thread has run this long since it went out has
# been lost (the VM looks at a pending interrupt within microseconds of running); one that
# meets a busy host may have to wait for the CPU, up to SIGINT_WAIT_MAX_S.
SIGINT_CPU_NS = 30_000_000
# ... or, SIGINT_SLICES_S after it went out, once it has been on a CPU this many times since: a
# VM idling in time.sleep_ms uses little CPU (a sleeping main.py, an idle meter: 30 ms of it
# took over 10 s), but its wake-ups run bytecode, where a pending interrupt is raised (a signal
# and the VM's own polls wake it too: three wake-ups within a second were no proof, and the
# second SIGINT then met the first)
SIGINT_SLICES = 20
SIGINT_SLICES_S = 2.0
SIGINT_WAIT_MAX_S = 30.0
BELL_BYTES = 8  # hw-bell.bin: byte 0 counts the hardware pipe's messages (mod 256)
HELD_INPUT_S = 5.0  # client input waiting longer than this is logged (_note_held_input)
VM_FDS = (3, 4, 5)  # hw in, hw out, HAN out, as the VM sees them

# The fallback VM process, when the native launcher (vmlaunch.py) cannot be
# built: CPython hosting the unix port's pybind11 module. SIGINT goes
# back to its default so that only MicroPython's own handler is ever seen, and
# the VM dies with its supervisor (PR_SET_PDEATHSIG) instead of lingering.
# It maps the ROMFS partition, the ROM, the ADC's ring and the battery-backed RAM as the native
# launcher does (vmlaunch.py).
LAUNCHER = (
    "import sys,signal,os,ctypes\n"
    "c=ctypes.CDLL(None)\n"
    "c.prctl(1,signal.SIGKILL)\n"
    "os.getppid()==int(sys.argv[1]) or sys.exit(1)\n"
    "signal.signal(signal.SIGINT,signal.SIG_DFL)\n"
    "c.mmap.restype=ctypes.c_void_p\n"
    "c.mmap.argtypes=[ctypes.c_void_p,ctypes.c_size_t,ctypes.c_int,ctypes.c_int,ctypes.c_int,"
    "ctypes.c_long]\n"
    "for e,fl,pr in (('MPVM_ROMFS',1,1),('MPVM_BOARDROM',2,1),('MPVM_ADC',1,1),"
    "('MPVM_NVRAM',1,3),('MPVM_BELL',1,3)):\n"
    " os.environ.pop(e+'_MAP',None)\n"
    " r=os.environ.get(e,'')\n"
    " n=os.path.getsize(r) if r and os.path.isfile(r) else 0\n"
    " if n:\n"
    "  fd=os.open(r,os.O_RDWR if pr&2 else os.O_RDONLY)\n"
    "  p=c.mmap(None,n,pr,fl,fd,0);os.close(fd)\n"
    "  if p and p!=ctypes.c_void_p(-1).value:os.environ[e+'_MAP']='%d %d'%(p,n)\n"
    "sys.path.insert(0,sys.argv[2])\n"
    "from micropython_run import run_main\n"
    "sys.exit(run_main(sys.argv[3:]))\n"
)

# The first code the VM runs (``micropython -i -c BOOT ARGS``): it mounts the board's ROM (the
# launcher's read-only mapping of a ROMFS image of board/virtual/host/rom.py compiled,
# ``MPVM_BOARDROM_MAP``, fleet.rom_image()) and runs it in place, outside the heap, as a board
# runs its ROM's code from flash; rom.boot() unmounts it and goes on as a board's port does.
BOOT = (
    "import os,sys,vfs,uctypes\n"
    "a=os.getenv('MPVM_BOARDROM_MAP').split()\n"
    "vfs.mount(vfs.VfsRom(uctypes.bytearray_at(int(a[0]),int(a[1]))),'/_rom')\n"
    "sys.path[:]=['/_rom']\n"
    "import rom\n"
    "del a,os,sys,vfs,uctypes\n"
    "rom.boot(globals())\n"
)

# The ADC's DMA ring (board/virtual/__init__.py _Adc, the ROM's _vhw.adc_*): this process is the
# board's analog front end. It synthesises the samples (board/virtual/host/waveform.py) and
# writes them into a file that the VM's launcher maps read-only and shared, a little ahead of
# real time, as a board's ADC writes them into RAM by DMA; the firmware takes them as its clock
# reaches them. The VM's heap holds none of it.
ADC_RATE = 4000  # samples a second per channel: the virtual board's ADC_RATE_HZ
ADC_LEAD = 8000  # samples written ahead of real time (2 s): a busy host may hold this process
ADC_RING = 32768  # samples per channel the ring holds (8 s)
ADC_HEAD = struct.Struct("<QIII")  # written (since power-on), rate, lead, ring size
ADC_DATA = 32  # V ring at ADC_DATA, I ring after it (u16 each, little-endian)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "board", "virtual", "host"))
import waveform  # noqa: E402 - the front end's own code, next to the ROM


class AdcRing:
    def __init__(self, path: str) -> None:
        self.path = path
        size = ADC_DATA + 4 * ADC_RING
        with open(path, "wb") as f:
            # the fields that never change are written once, before any VM maps the file
            f.write(ADC_HEAD.pack(0, ADC_RATE, ADC_LEAD, ADC_RING) + bytes(size - ADC_HEAD.size))
        self.f = open(path, "r+b")  # open for the process's life
        self.mm = mmap.mmap(self.f.fileno(), size)
        mv = memoryview(self.mm)
        self.v = mv[ADC_DATA:ADC_DATA + 2 * ADC_RING].cast("H")
        self.i = mv[ADC_DATA + 2 * ADC_RING:].cast("H")
        self.written = 0
        self.t0 = 0.0
        self.wave: Any = None

    def start(self, wave: Any) -> None:
        """A new VM: sample 0 is now."""
        self.written, self.t0, self.wave = 0, time.monotonic(), wave
        self._head()
        self.top_up()

    def restart(self, wave: Any) -> None:
        """A new load from now on: what was written ahead of now is written again."""
        self.wave = wave
        self.written = min(self.written, self._now())
        self.top_up()

    def relay(self, closed: bool) -> None:
        """The relay moved: from the sample due now on, the current is the load's (closed) or
        none at all (open: offset and noise only); what was written ahead is written again."""
        if self.wave is None or self.wave.relay_open == (not closed):
            return
        self.wave.set_relay(closed)
        self.written = min(self.written, self._now())
        self.top_up()

    def _now(self) -> int:
        return int((time.monotonic() - self.t0) * ADC_RATE)

    def _head(self) -> None:
        # Only the count changes, in one aligned 8-byte store. struct.pack_into zeroes its
        # target before it packs: a VM that read the head in between saw a rate of 0 and its
        # ADC model divided by it (ZeroDivisionError in doctor's ADC probe, in CI).
        self.mm[0:8] = self.written.to_bytes(8, "little")

    def top_up(self) -> None:
        if self.wave is None:
            return
        target = self._now() + ADC_LEAD
        self.written = max(self.written, target - ADC_RING // 2)  # after a long stall
        while self.written < target:
            k = self.written
            pos = k % ADC_RING
            n = min(target - k, ADC_RING - pos, 1000)
            self.wave.fill(self.v[pos:pos + n], self.i[pos:pos + n], k, n)
            self.written = k + n
        self._head()


class OpenWatch:
    """Wakes the loop when a client opens a port (inotify IN_OPEN on the pty's slave).

    Without it the loop had to look every 50 ms whether a client had come (a pty master whose
    slave nobody holds reports POLLHUP, so it cannot be waited on): 20 wake-ups a second for
    each idle meter. ``fd`` is -1 where inotify is missing; the loop then looks every 50 ms as
    before. Costs one ctypes import (about 0.4 MB) per supervisor."""

    IN_OPEN = 0x20

    def __init__(self) -> None:
        self.fd = -1
        try:
            import ctypes

            self._libc = ctypes.CDLL(None, use_errno=True)
            self.fd = int(self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        except (OSError, AttributeError):
            self.fd = -1

    def watch(self, path: str) -> None:
        if self.fd >= 0 and self._libc.inotify_add_watch(self.fd, path.encode(),
                                                        self.IN_OPEN) < 0:
            os.close(self.fd)  # a port it cannot watch: back to looking every 50 ms
            self.fd = -1

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self.fd, 4096):
                pass


def open_pty() -> tuple[int, str]:
    """A pty whose master we keep; the slave is for clients, raw, closed here."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    name = os.ttyname(slave)
    os.close(slave)
    os.set_blocking(master, False)
    return master, name


def vm_threads(pid: int) -> str:
    """Each VM thread's state and the kernel function it waits in: where a VM that ignores
    Ctrl-C is stuck (for the supervisor's log)."""
    out = []
    try:
        for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
                with open(f"/proc/{pid}/task/{tid}/wchan") as f:
                    wchan = f.read().strip() or "-"
            except OSError:
                continue
            out.append(f"{tid} {state} {wchan}")
    except OSError:
        return "gone"
    return ", ".join(out)


def vm_pcs(pid: int, samples: int = 5) -> str:
    """Where the VM's main thread is running, a few samples 20 ms apart, each its instruction
    pointer as a mapping and offset ("micropython_run...so+0x1234"; "[anon]+0x..": code the
    VM made, such as the ROM's machine code): for the log when a Ctrl-C had no effect on a VM
    that was on a CPU, which /proc alone cannot say. ptrace (x86-64 Linux only); "" when it
    cannot be read. The VM is stopped for a moment per sample."""
    import ctypes
    import platform

    if platform.machine() != "x86_64":
        return ""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return ""
    seize, interrupt, getregs, detach = 0x4206, 0x4207, 12, 17
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
    regs = (ctypes.c_ulong * 27)()  # struct user_regs_struct; rip is its 17th field
    pcs = []
    for k in range(samples):
        if k:
            time.sleep(0.02)
        if libc.ptrace(seize, pid, None, None) != 0:
            return ""
        try:
            libc.ptrace(interrupt, pid, None, None)
            os.waitpid(pid, 0x40000000)  # __WALL
            if libc.ptrace(getregs, pid, None, ctypes.byref(regs)) == 0:
                pcs.append(regs[16])
        except OSError:
            pass
        finally:
            libc.ptrace(detach, pid, None, None)
    maps = []
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split()
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                name = os.path.basename(parts[5]) if len(parts) > 5 else "[anon]"
                maps.append((lo, hi, int(parts[2], 16), parts[1], name))
    except OSError:
        return " ".join(hex(pc) for pc in pcs)
    out = []
    for pc in pcs:
        where = hex(pc)
        for lo, hi, off, perm, name in maps:
            if lo <= pc < hi:
                where = f"{name}+{pc - lo + off:#x} ({perm})"
                break
        out.append(where)
    return ", ".join(out)


def main_thread_cpu_ns(pid: int) -> int:
    """CPU time the VM's main thread (the one a SIGINT interrupts) has had, in ns."""
    try:
        with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/task/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0


def main_thread_slices(pid: int) -> int:
    """How many times the VM's main thread has been on a CPU (schedstat's third field; -1
    where the kernel has no schedstat)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return -1


def sigint_caught(pid: int) -> bool:
    """True while the VM has its SIGINT handler installed, i.e. it is executing
    code with the interrupt character enabled. Idle at a prompt, or after
    kbd_intr(-1), the unix port leaves SIGINT at its default (terminate)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & SIGINT_BIT)
    except OSError:
        pass
    return False


def write_json_atomic(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Supervisor:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.dir = os.path.abspath(a.dir)
        self.fs = os.path.join(self.dir, "fs")
        os.makedirs(self.fs, exist_ok=True)
        # The ROMFS partition: flash outside the filesystem, erased (0xFF) until an image is
        # written through vfs.rom_ioctl (rom.py); the launcher maps it read-only.
        self.romfs = os.path.join(self.dir, "romfs.bin")
        # Battery-backed RAM (board.nvram): the launcher maps this file shared and writable
        # (MPVM_NVRAM_MAP), outside the VM's heap; what the VM stores into it is in the host's
        # page cache at once, so a SIGKILL power cut keeps it, as VBAT does.
        self.nvram = os.path.join(self.dir, "nvram.bin")
        if a.nvram_bytes and (not os.path.exists(self.nvram)
                              or os.path.getsize(self.nvram) != a.nvram_bytes):
            with open(self.nvram + ".tmp", "wb") as f:
                f.write(bytes(a.nvram_bytes))
            os.replace(self.nvram + ".tmp", self.nvram)
        if a.romfs_bytes and (not os.path.exists(self.romfs)
                              or os.path.getsize(self.romfs) != a.romfs_bytes):
            with open(self.romfs + ".tmp", "wb") as f:
                f.write(b"\xff" * a.romfs_bytes)
            os.replace(self.romfs + ".tmp", self.romfs)
        self.adc = AdcRing(os.path.join(self.dir, "adc.bin"))
        # The hardware pipe's doorbell: a byte of a shared mapping (MPVM_BELL_MAP) counted up
        # with every message sent down the pipe (_send_hw), which the VM's flash model reads
        # without a system call: its poll(0) checked for a pending KeyboardInterrupt and raised
        # a Ctrl-C inside a flash operation (flashdev.py _arm_check).
        self.bell_path = os.path.join(self.dir, "hw-bell.bin")
        with open(self.bell_path, "wb") as f:
            f.write(bytes(BELL_BYTES))
        with open(self.bell_path, "r+b") as f:
            self.bell = mmap.mmap(f.fileno(), BELL_BYTES)
        self.log_f = open(os.path.join(self.dir, "supervisor.log"), "a", buffering=1)
        self.hw_path = os.path.join(self.dir, "hw.json")
        self.hw = self._load_hw()
        # The port profile (host_tools/sim/profiles.py) the fleet chose for this meter and kept
        # in its directory, so that restarts and power cuts keep it; none: the unix profile.
        self.profile = self._load_profile()
        self._time_scale(float(a.time_scale))
        self.client, self.port = open_pty()
        self.han, self.han_port = open_pty()
        self.opens = OpenWatch()
        self.opens.watch(self.port)
        self.opens.watch(self.han_port)
        for link, target in (("port", self.port), ("han", self.han_port)):
            p = os.path.join(self.dir, link)
            if os.path.lexists(p):
                os.unlink(p)
            os.symlink(target, p)
        self.ctl_path = os.path.join(self.dir, "ctl.sock")
        if os.path.exists(self.ctl_path):
            os.unlink(self.ctl_path)
        self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctl.bind(self.ctl_path)
        self.ctl.listen(16)
        self.ctl.setblocking(False)
        self.conns: dict[int, tuple[socket.socket, bytearray]] = {}
        self.waiters: list[socket.socket] = []  # answered when the VM is ready
        self.client_connected = False
        self.han_connected = False
        self.to_client = bytearray()
        self.to_vm = bytearray()  # client bytes not yet given to the VM
        self.han_buf = bytearray()
        self.vm_pid = 0
        self.vm_pidfd = -1
        self.vm_con = -1
        self.hw_in = self.hw_out = self.han_in = -1
        self.hw_line = bytearray()
        self.state = "off"  # off | booting | raw-boot | on
        self.repl = "friendly"
        self.scan_tail = b""
        self.boot_buf = bytearray()
        self.raw_stage = 0  # raw-boot: 0 until the friendly banner, 1 until the raw one
        self.rom_active = False  # the ROM runs its own code (not a file, not the REPL)
        self.file_running = False  # boot.py or main.py runs
        self.sigint_at = 0.0  # when the last SIGINT went out, until the VM acted on it
        self.held_since, self.held_logged = 0.0, False  # client input the VM has not taken
        self.sigint_retries = 0
        self.handed_to: str | None = None  # the file a held Ctrl-C was handed to (_hand_over)
        self.sigint_cpu_ns = 0  # the VM main thread's CPU time when the last SIGINT went out
        self.sigint_slices = -1  # ... and its times on a CPU (main_thread_slices)
        self.power_mode = "run"
        self.last_cr = False
        self.expect_kill = False
        self.cold = True  # the first start, and every start after a chip reset (on_vm_exit)
        self.hard_reset = False
        self.cut_off_time = a.off_time
        self.power_on_at = 0.0
        self.running = True
        self.files: dict[str, str] = {}
        self.stats = {"boots": 0, "soft_reboots": 0, "power_cuts": 0, "crashes": 0,
                      "link_faults": 0,
                      "sigints": 0, "han_bytes": 0, "han_ignored_in": 0, "led_toggles": 0}
        self.led_changed = 0.0
        self.recent_exits: list[float] = []
        # The power-cut campaign's write-point hook (rom.py _wp_hit): armed for one VM run.
        self.wcut: dict[str, Any] = {"k": 0, "armed": False, "cuts": 0, "points": [],
                                     "last": None}
        self.arm_waiters: list[socket.socket] = []
        # A serial fault armed by link-fault: mode, dir, after (bytes), seen (bytes so far).
        self.fault: dict[str, Any] | None = None
        self.replug_at = 0.0  # while the cable is pulled (a "cut"): when it is plugged again

    # -- persisted hardware state ------------------------------------------
    def _load_hw(self) -> dict[str, Any]:
        # A new meter's relay is closed: shipped connected (docs/OFFSWITCH.md, "The relay at
        # first boot"); the firmware's first boot adopts it as it finds it.
        hw: dict[str, Any] = {"inputs": {"button": 0, "tamper": 0, "cover": 0, "jumper": 0},
                              "outputs": {"relay": 1},
                              "wave": {}, "relay_changes": 0, "rtc_offset": 0,
                              "time_scale": 1.0, "time_anchor": 0.0, "sim_time": None}
        try:
            with open(self.hw_path) as f:
                saved = json.load(f)
            for k in hw:
                if k in saved:
                    # inputs added since (cover, jumper) start released
                    hw[k] = {**hw[k], **saved[k]} if k == "inputs" else saved[k]
        except (OSError, ValueError):
            pass
        return hw

    def _load_profile(self) -> dict[str, Any] | None:
        try:
            with open(os.path.join(self.dir, "profile.json")) as f:
                p = json.load(f)
        except FileNotFoundError:
            return None
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise SystemExit(f"{self.dir}/profile.json: not a port profile")
        return p

    def _time_scale(self, scale: float) -> None:
        """Virtual board only (the soak, host_tools/reliability/soak.py): the RTC runs
        ``scale`` times as fast as host time from an anchor, RTC = anchor + (now - anchor) *
        scale + rtc_offset (board/virtual/__init__.py). A new scale re-anchors at now and
        moves the offset so that the RTC goes on from where it was."""
        if scale <= 0:
            raise SystemExit("--time-scale must be > 0")
        old, anchor = float(self.hw["time_scale"]), float(self.hw["time_anchor"])
        if scale == old:
            return
        now = time.time()
        rtc_now = int(anchor + (now - anchor) * old) + int(self.hw["rtc_offset"])
        self.hw.update(time_scale=scale, time_anchor=now, rtc_offset=rtc_now - int(now))
        write_json_atomic(self.hw_path, self.hw)

    def _rtc(self) -> int:
        """The board's RTC, as board/virtual/__init__.py rtc_get() computes it (host time, or
        the head-end's set-clock time, scaled; plus the offset the firmware set)."""
        t = self.hw["sim_time"]
        if t is None:
            t = time.time()
            scale, anchor = float(self.hw["time_scale"]), float(self.hw["time_anchor"])
            if scale != 1:
                t = anchor + (t - anchor) * scale
        return int(t) + int(self.hw["rtc_offset"])

    def _wave(self) -> Any:
        """The front end for the load set now (without "irms": the household day, by the RTC)."""
        fe = (self.profile or {}).get("front_end")  # a board's: its adapter's CAL_DEFAULT
        wave = waveform.Waveform(self.a.seed, dict(self.hw["wave"]), ADC_RATE, self._rtc,
                                 (fe["v_peak"], fe["i_peak"]) if fe else None)
        wave.set_relay(bool(self.hw["outputs"].get("relay", 1)))  # a latching relay
        return wave

    def log(self, msg: str) -> None:
        now = time.time()
        self.log_f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(now))}"
                         f".{int(now * 1000) % 1000:03d} {msg}\n")

    # -- the VM ------------------------------------------------------------
    def power_on(self, mode: str) -> None:
        """Start the VM. mode 'run': boot.py + main.py; 'raw': boot.py, then the raw
        REPL; 'repl': boot.py, then the friendly REPL."""
        con_master, con_slave = pty.openpty()
        tty.setraw(con_slave)
        hw_in_r, hw_in_w = os.pipe()
        hw_out_r, hw_out_w = os.pipe()
        han_r, han_w = os.pipe()
        vm_args = ["micropython", "-X", f"heapsize={self.a.heap}", "-i", "-c", BOOT, self.fs, mode,
                   *(str(fd) for fd in VM_FDS), str(self.a.flash_bytes)]
        if self.a.launcher:
            # The native launcher (vmlaunch.py): the same VM without a CPython around it.
            exe = self.a.launcher
            argv = [exe, str(os.getpid()), self.a.vm_so, *vm_args]
        else:
            exe = sys.executable
            argv = [exe, "-S", "-c", LAUNCHER, str(os.getpid()), self.a.site, *vm_args]
        actions = [(os.POSIX_SPAWN_DUP2, src, dst) for src, dst in (
            (con_slave, 0), (con_slave, 1), (con_slave, 2),
            (hw_in_r, VM_FDS[0]), (hw_out_w, VM_FDS[1]), (han_w, VM_FDS[2]))]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.dir,
               "MPVM_BOARDROM": self.a.rom, "MPVM_ADC": self.adc.path}
        self.adc.start(self._wave())
        if self.a.romfs_bytes:
            env["MPVM_ROMFS"] = self.romfs
        if self.profile is not None and self.profile.get("port") != "unix":
            # the unix profile is the ROM's own default: nothing of it need take the VM's heap
            env["MPVM_PROFILE"] = json.dumps(self.profile, separators=(",", ":"))
        if self.a.nvram_bytes:
            env["MPVM_NVRAM"] = self.nvram
        env["MPVM_BELL"] = self.bell_path
        if self.profile is not None and self.profile.get("board_pools"):
            env["MPVM_QSTR_FILL"] = "1"  # fleet.start board_pools
        self.vm_pid = os.posix_spawn(exe, argv, env, file_actions=actions, setsid=True)
        for fd in (con_slave, hw_in_r, hw_out_w, han_w):
            os.close(fd)
        self.vm_con, self.hw_in, self.hw_out, self.han_in = con_master, hw_in_w, hw_out_r, han_r
        for fd in (con_master, hw_out_r, han_r):
            os.set_blocking(fd, False)
        self.vm_pidfd = os.pidfd_open(self.vm_pid)
        self.state = "raw-boot" if mode == "raw" else "booting"
        self.repl = "friendly"
        self.boot_buf.clear()
        self.rom_active, self.file_running, self.sigint_at = True, False, 0.0
        self.handed_to = None
        self.raw_stage = 0
        self.scan_tail = b""
        self.files = {}
        self.stats["boots"] += 1
        self.wcut.update(k=0, armed=False)  # a new VM starts disarmed
        for c in self.arm_waiters:
            self._reply(c, {"ok": False, "error": "the VM restarted before it was armed"})
        self.arm_waiters.clear()
        # What the pins read at power-up, and which meter this is.
        self._send_hw({"inputs": self.hw["inputs"], "outputs": self.hw["outputs"],
                       "wave": self.hw["wave"],
                       "meter": self._meter_info()})
        self.log(f"power on ({mode}) pid={self.vm_pid}")

    def _meter_info(self) -> dict[str, Any]:
        return {"index": self.a.index, "seed": self.a.seed, "rtc_offset": self.hw["rtc_offset"],
                "cold": self.cold,
                "time_scale": self.hw["time_scale"], "time_anchor": self.hw["time_anchor"],
                "sim_time": self.hw["sim_time"]}

    def _send_hw(self, msg: dict[str, Any]) -> None:
        if self.hw_in >= 0:
            try:
                os.write(self.hw_in, json.dumps(msg).encode() + b"\n")
            except OSError as e:
                self.log(f"hw write failed: {e}")
            self.bell[0] = (self.bell[0] + 1) & 0xFF

    def _close_vm_fds(self) -> None:
        for fd in (self.vm_con, self.hw_in, self.hw_out, self.han_in, self.vm_pidfd):
            if fd >= 0:
                os.close(fd)
        self.vm_con = self.hw_in = self.hw_out = self.han_in = self.vm_pidfd = -1

    def on_vm_exit(self) -> None:
        _, status = os.waitpid(self.vm_pid, 0)
        # Drain what the VM said last before its pty goes away.
        self._read_vm(final=True)
        self._read_hw()
        self._close_vm_fds()
        self.vm_pid = 0
        was_raw = self.repl == "raw"
        self.state = "off"
        now = time.monotonic()
        # The next start is cold (chip reset: a power cut, a crash, machine.reset()) or warm
        # (a soft reset: what survives it on a board, its RTC, survives here).
        self.cold = self.expect_kill or os.WIFSIGNALED(status) or self.hard_reset
        self.hard_reset = False
        if self.expect_kill:
            self.expect_kill = False
            self.stats["power_cuts"] += 1
            self.log("power cut")
            self.power_on_at = now + self.cut_off_time
            self.power_mode = "run"
            return
        # Exit status 1 while our SIGINT was in flight: the interrupt ended the VM instead of
        # the code it interrupted. Either a second SIGINT met the ROM after the file had ended,
        # or the unix port raised the KeyboardInterrupt while the heap was locked (inside its
        # GC, with the off-switch's thread running) and died on "MemoryError: heap is
        # locked" + "FATAL: uncaught NLR". A board's Ctrl-C always reaches the REPL, so both
        # reboot into the REPL the client asked for, and the bytes held behind the Ctrl-C
        # (mpremote's Ctrl-A) go to the new VM.
        died_on_interrupt = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1
        interrupted = self.sigint_at and (
            (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGINT)
            or died_on_interrupt)
        if interrupted:
            # Our SIGINT met the VM just as it left the code it interrupted (the
            # handler was gone): for the client it was a Ctrl-C at a prompt.
            if os.WIFSIGNALED(status) and self.files.get("main.py") == "running":
                # Killed by SIGINT's default action while main.py runs: the firmware turned
                # Ctrl-C off (a sealed meter, firmware/lib/seal.py) as the SIGINT went out,
                # and a Pico would have handed it the byte. Never a REPL.
                self.log("SIGINT met main.py with Ctrl-C off; rebooting into main.py")
                mode = "run"
            else:
                self.log("the VM died on the interrupt (exit 1); rebooting into the REPL"
                         if died_on_interrupt and not self.sigint_retries else
                         "SIGINT arrived after execution ended; rebooting into the same REPL")
                mode = "raw" if was_raw else "repl"
        elif os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            self.stats["crashes"] += 1
            self.log(f"VM died on signal {sig}")
            self._to_client(f"\r\n[virtual board: VM died on signal {sig}; resetting]\r\n".encode())
            mode = "run"
        else:
            self.stats["soft_reboots"] += 1
            self.log(f"soft reboot (exit {os.WEXITSTATUS(status)}, repl {self.repl})")
            self._to_client(SOFT_REBOOT)
            mode = "raw" if was_raw else "run"
        # A VM that keeps dying at once is held off, as a watchdog would be.
        self.recent_exits = [t for t in self.recent_exits if now - t < 5] + [now]
        delay = 1.0 if len(self.recent_exits) > 5 else 0.0
        self.power_on_at = now + delay
        self.power_mode = mode

    def _read_vm(self, final: bool = False) -> None:
        while self.vm_con >= 0:
            if not final and len(self.to_client) >= OUT_CAP and self.client_connected:
                return  # hold the VM back until the client reads
            try:
                data = os.read(self.vm_con, 4096)
            except BlockingIOError:
                return
            except OSError:
                return  # EIO: the VM closed its side
            if not data:
                return
            self._from_vm(data)

    def _cook(self, data: bytes) -> bytes:
        # A board sends "\r\n" for every "\n" it prints; the unix port leaves
        # that to a terminal's output processing, which our raw pty does not do.
        out = bytearray()
        for b in data:
            if b == 0x0A and not self.last_cr:
                out.append(0x0D)
            out.append(b)
            self.last_cr = b == 0x0D
        return bytes(out)

    def _from_vm(self, data: bytes) -> None:
        data = self._cook(data)
        scan = self.scan_tail + data
        raw_at = scan.rfind(RAW_BANNER)
        friendly_at = max((m.start() for m in FRIENDLY_BANNER.finditer(scan)), default=-1)
        if raw_at > friendly_at:
            self.repl = "raw"
        elif friendly_at > raw_at:
            self.repl = "friendly"
        self.scan_tail = scan[-160:]
        if self.state != "raw-boot":
            self._to_client(data)
            return
        # Soft reset from the raw REPL: the VM boots into its friendly REPL;
        # show boot.py's output, hide that banner, and enter the raw REPL.
        self.boot_buf += data
        if self.raw_stage == 0:
            m = FRIENDLY_BANNER.search(self.boot_buf)
            if m:
                self._to_client(bytes(self.boot_buf[: m.start()]))
                del self.boot_buf[: m.end()]
                os.write(self.vm_con, bytes([CTRL_A]))
                self.raw_stage = 1
        if self.raw_stage == 1:
            i = self.boot_buf.find(RAW_BANNER)
            if i >= 0:
                self._to_client(bytes(self.boot_buf[i:]))
                self.boot_buf.clear()
                self._ready()

    def _to_client(self, data: bytes) -> None:
        if self.client_connected and data:
            data = self._fault(data, "out")
        if self.a.trace:
            self.log(f"vm>client {'' if self.client_connected else '(dropped) '}{data!r}")
        if self.client_connected and data:
            self.to_client += data

    def _ready(self) -> None:
        self.state = "on"
        for c in self.waiters:
            self._reply(c, self.status())
        self.waiters.clear()

    def _read_hw(self) -> None:
        while self.hw_out >= 0:
            try:
                data = os.read(self.hw_out, 4096)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            self.hw_line += data
            while b"\n" in self.hw_line:
                line, _, rest = bytes(self.hw_line).partition(b"\n")
                self.hw_line = bytearray(rest)
                try:
                    self._hw_event(json.loads(line))
                except ValueError:
                    self.log(f"bad hw line {line[:80]!r}")

    def _hw_event(self, ev: dict[str, Any]) -> None:
        if "out" in ev:
            name, v = str(ev["out"]), int(ev["v"])
            old = self.hw["outputs"].get(name)
            self.hw["outputs"][name] = v
            if name == "led":
                if old != v:
                    self.stats["led_toggles"] += 1
                    self.led_changed = time.monotonic()
                return
            if name == "relay" and old != v:
                self.hw["relay_changes"] += 1
                self.log(f"relay -> {v}")
                self.adc.relay(bool(v))
            write_json_atomic(self.hw_path, self.hw)
        elif ev.get("ev") == "rtc":
            # The RTC's offset from host time: kept across soft resets; across power cuts too
            # where the board's RTC is battery-backed (a Pico's is not: its model starts it
            # again at a cold start, _meter_info's "cold").
            self.hw["rtc_offset"] = int(ev["offset"])
            write_json_atomic(self.hw_path, self.hw)
        elif ev.get("ev") == "reset":
            # machine.reset() (a port model): the VM exits as for a soft reset, but the chip
            # starts cold, as after a power cut (ports/rp2/main.c starts its RTC in main())
            self.hard_reset = ev.get("kind") == "hard"
        elif ev.get("ev") == "booted":
            if self.state == "booting":
                self._ready()
        elif ev.get("ev") == "file":
            name = str(ev["name"])
            if ev.get("go"):
                self._hand_over(name)
            elif ev["s"] == "end" and self.handed_to == name:
                self.handed_to = None
                if ev.get("err") != "KeyboardInterrupt":
                    # it ended without taking the Ctrl-C handed to it (a boot.py that never
                    # turned Ctrl-C off): it goes to what runs next (main.py, or the REPL)
                    self.to_vm[:0] = bytes([CTRL_C])
                    if self.a.trace:
                        self.log(f"ctrl-c not taken by {name}; held again")
            self.file_running = ev["s"] == "start"
            if not self.file_running:
                self.sigint_at = 0.0  # whatever interrupted it has been handled
            self.files[str(ev["name"])] = "running" if ev["s"] == "start" else (
                f"ended ({ev['err']})" if ev.get("err") else "ended")
        elif ev.get("ev") == "rom-done":
            self.rom_active = False
        elif ev.get("ev") == "cut-armed":
            self.wcut.update(k=int(ev["k"]), armed=bool(ev["k"]))
            if ev["k"]:
                self.wcut["points"] = []  # disarming keeps what a counting run saw
            for c in self.arm_waiters:
                self._reply(c, self.status())
            self.arm_waiters.clear()
        elif ev.get("ev") == "wp":  # counting: one persisted write point
            pts = self.wcut["points"]
            if len(pts) < 1000:
                pts.append([ev["n"], ev["op"], ev["path"]])
        elif ev.get("ev") == "cut":  # the VM stopped at the k-th write point: cut the power
            self.wcut.update(armed=False, k=0, cuts=self.wcut["cuts"] + 1,
                             last={"n": ev["n"], "op": ev["op"], "path": ev["path"],
                                   "torn": ev["torn"], "boot": self.stats["boots"],
                                   "at": time.monotonic()})
            self.log(f"power cut at write point {ev['n']}: {ev['op']} {ev['path']}"
                     f"{' (torn)' if ev['torn'] else ''}")
            if self.vm_pid:
                self.expect_kill = True
                os.kill(self.vm_pid, signal.SIGKILL)

    def _read_han(self) -> None:
        while self.han_in >= 0:
            try:
                data = os.read(self.han_in, 4096)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            self.stats["han_bytes"] += len(data)
            if self.han_connected:
                self.han_buf += data
                if len(self.han_buf) > OUT_CAP:  # a reader that stopped reading loses the oldest
                    del self.han_buf[: len(self.han_buf) - OUT_CAP]

    # -- client side ---------------------------------------------------------
    def _from_client(self, data: bytes) -> None:
        data = self._fault(data, "in")
        if self.a.trace:
            self.log(f"client>vm {data!r}")
        self.to_vm += data
        self._feed_vm()

    def _fault(self, data: bytes, direction: str) -> bytes:
        """The armed serial fault, once, at byte ``after`` of the direction's stream counted
        from when it was armed: flip one bit of that byte, drop it, or pull the cable there
        (it and what follows never arrive)."""
        f = self.fault
        if f is None or f["dir"] != direction:
            return data
        i = int(f["after"]) - int(f["seen"])
        if i >= len(data):
            f["seen"] += len(data)
            return data
        self.fault = None
        self.stats["link_faults"] += 1
        self.log(f"link fault: {f['mode']} {direction} at byte {f['after']} (0x{data[i]:02x})")
        if f["mode"] == "flip":
            return data[:i] + bytes([data[i] ^ FLIP_MASK]) + data[i + 1:]
        if f["mode"] == "drop":
            return data[:i] + data[i + 1:]
        self._unplug(float(f["replug_s"]))
        return data[:i] if direction == "in" else b""

    def _unplug(self, replug_s: float) -> None:
        """The cable is pulled: the port vanishes (its clients read EOF/EIO), what the board
        was sending is lost, and a new port appears under the same name (``port``, as a
        board keeps its /dev/serial/by-id link) ``replug_s`` later. The board runs on."""
        if self.client >= 0:
            os.close(self.client)
        self.client = -1
        self.client_connected = False
        self.to_client.clear()
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.dir, "port"))
        self.replug_at = time.monotonic() + replug_s

    def _replug(self) -> None:
        self.client, self.port = open_pty()
        self.opens.watch(self.port)
        link = os.path.join(self.dir, "port")
        with contextlib.suppress(OSError):
            os.unlink(link)
        os.symlink(self.port, link)
        self.replug_at = 0.0
        self.log(f"cable plugged in again: port={self.port}")

    def _feed_vm(self) -> None:
        """Pass client bytes to the VM, turning Ctrl-C into SIGINT where a board
        would raise KeyboardInterrupt."""
        # Until the ROM runs (its "booted" event), a Ctrl-C could be neither a
        # signal MicroPython handles nor a byte anyone reads: hold input back,
        # as a board's USB stack does while it boots.
        if self.state != "on" or self.vm_con < 0:
            return
        while self.to_vm and not self._interrupt_pending():
            i = self.to_vm.find(bytes([CTRL_C]))
            chunk = self.to_vm if i < 0 else self.to_vm[:i]
            if chunk:
                try:
                    n = os.write(self.vm_con, chunk)
                except BlockingIOError:
                    return
                except OSError:
                    return
                del self.to_vm[:n]
                if n < len(chunk):
                    return
                continue
            # to_vm starts with Ctrl-C
            caught = sigint_caught(self.vm_pid)
            if caught and self._hold_ctrl_c():
                return
            if self.a.trace:
                self.log(f"ctrl-c -> {'SIGINT' if caught else 'byte'} (state {self.state})")
            if caught:
                self._sigint(retry=False)
            else:
                self.sigint_at = 0.0
                try:
                    if os.write(self.vm_con, bytes([CTRL_C])) != 1:
                        return
                except OSError:
                    return
            del self.to_vm[:1]

    def _sigint(self, retry: bool, sig: int = signal.SIGINT) -> None:
        self.sigint_cpu_ns = main_thread_cpu_ns(self.vm_pid)
        self.sigint_slices = main_thread_slices(self.vm_pid)
        os.kill(self.vm_pid, sig)
        self.sigint_at = time.monotonic()
        self.sigint_retries = self.sigint_retries + 1 if retry else 0
        self.stats["sigints"] += 1

    def _hand_over(self, name: str) -> None:
        """The ROM is about to run ``name`` and waits for this answer ("go"). A Ctrl-C held
        while the ROM ran its own code (_hold_ctrl_c: the board still booting) is handed to
        the file first: SIGUSR2 marks it in the native launcher, which makes it pending when
        the file turns Ctrl-C off, or drops it when the file ends without doing so (then it
        is held again for what runs next: the "file" end event); a file that neither ends nor
        turns Ctrl-C off gets it as a SIGINT from _check_sigint (vmlaunch.py, rom.py
        _run_file). A SIGINT sent here instead landed wherever the file had got to by then:
        past firmware/main.py's micropython.kbd_intr(-1) (its first line; Ctrl-C stays off
        while it reads the seal) the Ctrl-C went as a byte, which the firmware then read as
        WAN input, and mpremote, its Ctrl-A eaten too, never got the raw REPL."""
        self._feed_vm()  # what came before the Ctrl-C goes first (it waits: file not started)
        if self.a.launcher and self.state == "on" and self.vm_pid \
                and self.to_vm[:1] == bytes([CTRL_C]):
            if self.a.trace:
                self.log(f"ctrl-c -> handed to {name}")
            self._sigint(retry=False, sig=signal.SIGUSR2)
            del self.to_vm[:1]
            self.handed_to = name
        self._send_hw({"go": 1})

    def _sigint_unsettled(self) -> bool:
        """True while the last SIGINT may still be pending in the VM: sent less than
        SIGINT_SETTLE_S ago, or since then the VM's main thread has neither had SIGINT_CPU_NS of
        CPU nor (after SIGINT_SLICES_S) been on a CPU SIGINT_SLICES times (a loaded host) and
        its handler is still
        installed (at a prompt it is not). Under
        the fallback (CPython) launcher the unix port's own handler runs, and a SIGINT that
        meets one still pending makes it exit(1) inside the handler, which can hang the VM; the
        native launcher's handler only schedules the interrupt (vmlaunch.py). Either way no
        second SIGINT goes out before this is False."""
        if not self.sigint_at:
            return False
        waited = time.monotonic() - self.sigint_at
        if waited < SIGINT_SETTLE_S:
            return True
        if not (self.vm_pid and sigint_caught(self.vm_pid)) or waited > SIGINT_WAIT_MAX_S:
            return False
        if waited >= SIGINT_SLICES_S and self.sigint_slices >= 0 and \
                main_thread_slices(self.vm_pid) - self.sigint_slices >= SIGINT_SLICES:
            return False
        return main_thread_cpu_ns(self.vm_pid) - self.sigint_cpu_ns < SIGINT_CPU_NS

    def _check_sigint(self) -> None:
        """The VM now and then loses a SIGINT while the firmware imports. One cause is
        known: MicroPython's import takes whatever a Python VFS's stat raises for "not
        found" (extmod/vfs.c, mp_vfs_import_stat), and the virtual board's filesystem is
        Python (board/virtual/host/rom.py, JailFS; flashdev.py on a board profile), so a
        KeyboardInterrupt raised there while main.py imports is swallowed; a board's littlefs
        stat is C. A board never loses a Ctrl-C, so one that has had no effect once the VM has
        run on (_sigint_unsettled) is sent again, at most twice; so is a Ctrl-C handed to a
        file that has not turned Ctrl-C off (_hand_over). Giving up logs where the VM's threads
        wait."""
        if not self.sigint_at or self._sigint_unsettled():
            return
        if self.sigint_retries < 2 and self.vm_pid and sigint_caught(self.vm_pid) and (
                self.file_running or not self.rom_active) and \
                time.monotonic() - self.sigint_at <= SIGINT_WAIT_MAX_S:
            self.log("Ctrl-C had no effect; SIGINT again")
            self._sigint(retry=True)
        else:
            if self.file_running and self.vm_pid:
                threads = vm_threads(self.vm_pid)
                where = vm_pcs(self.vm_pid) if f"{self.vm_pid} R " in f"{threads} " else ""
                self.log(f"Ctrl-C had no effect; giving up (VM threads: {threads}"
                         + (f"; its main thread at: {where})" if where else ")"))
            self.sigint_at = 0.0

    def _interrupt_pending(self) -> bool:
        """After a Ctrl-C became SIGINT in a running file, the bytes that follow belong to
        what runs after the interrupt (the REPL), as on a board, where the USB stack acts
        on Ctrl-C at once: they wait until the file has ended (or the SIGINT is given up),
        so that firmware reading stdin never swallows mpremote's Ctrl-A."""
        return bool(self.sigint_at) and self.file_running

    def _hold_ctrl_c(self) -> bool:
        """While the VM executes, a Ctrl-C waits if a SIGINT now could hit the
        ROM's own code (between files: it must land in boot.py, main.py or the
        REPL), or if the previous SIGINT may not have been acted on yet (two quick
        Ctrl-Cs must not find the VM between its handler and its prompt)."""
        if self.rom_active and not self.file_running:
            return True
        return self._sigint_unsettled()

    # -- control socket --------------------------------------------------------
    def status(self) -> dict[str, Any]:
        age = time.monotonic() - self.led_changed if self.led_changed else None
        return {"ok": True, "id": self.a.index, "port": self.port, "han": self.han_port,
                "dir": self.dir, "pid": os.getpid(), "vm_pid": self.vm_pid, "vm": self.state,
                "repl": self.repl, "files": self.files,
                "pins": {**self.hw["outputs"], **self.hw["inputs"]},
                "relay_changes": self.hw["relay_changes"], "wave": self.hw["wave"],
                "led_last_change_s": None if age is None else round(age, 3),
                "client_connected": self.client_connected, "heap": self.a.heap,
                # heap: the VM's (-X heapsize); free_at_boot: what the ROM's ballast leaves
                # the firmware at the REPL, the board's (None: no ballast)
                "free_at_boot": (self.profile or {}).get("free_at_boot"),
                "profile": self.profile["name"] if self.profile else "unix",
                "sim_time": self.hw["sim_time"],
                "write_cut": self.wcut, "link_fault": self.fault, **self.stats}

    def _reply(self, c: socket.socket, obj: dict[str, Any]) -> None:
        try:
            c.setblocking(True)
            c.sendall(json.dumps(obj).encode() + b"\n")
        except OSError:
            pass
        self.conns.pop(c.fileno(), None)
        c.close()

    def _ctl_request(self, c: socket.socket, req: dict[str, Any]) -> None:
        cmd = req.get("cmd")
        if cmd == "status":
            self._reply(c, self.status())
        elif cmd == "power-cut":
            self.cut_off_time = float(req.get("off_s", self.a.off_time))
            if self.vm_pid:
                self.expect_kill = True
                os.kill(self.vm_pid, signal.SIGKILL)
            self.waiters.append(c)  # answered once the meter has booted again
            self.conns.pop(c.fileno(), None)
        elif cmd == "arm-cut":
            # Virtual board only: cut the power at the k-th persisted write from now (k < 0:
            # count them, k == 0: disarm); answered once the VM has armed.
            if self.state != "on" or not self.vm_pid:
                self._reply(c, {"ok": False, "error": "the VM is not running"})
                return
            self.cut_off_time = float(req.get("off_s", self.a.off_time))
            # level "file": a board profile's write points are the firmware's file operations
            # (as on the unix profile), not the flash chip's erases and programs
            self._send_hw({"cut": {"k": int(req.get("k", 0)), "torn": bool(req.get("torn")),
                                   "match": str(req.get("match") or ""),
                                   "level": str(req.get("level") or "block")}})
            self.arm_waiters.append(c)
            self.conns.pop(c.fileno(), None)
        elif cmd == "set-inputs":
            inputs = {str(k): int(v) for k, v in dict(req.get("inputs", {})).items()}
            self.hw["inputs"].update(inputs)
            write_json_atomic(self.hw_path, self.hw)
            self._send_hw({"inputs": inputs})
            self._reply(c, self.status())
        elif cmd == "set-wave":
            self.hw["wave"] = dict(req.get("wave", {}))
            write_json_atomic(self.hw_path, self.hw)
            self.adc.restart(self._wave())
            self._send_hw({"wave": self.hw["wave"]})
            self._reply(c, self.status())
        elif cmd == "set-clock":
            # Virtual board only (the soak, host_tools/reliability/soak.py): the time the
            # RTC counts from is no longer host time but ``t``, held until the next
            # set-clock, so that simulated time moves only when the head-end moves it
            # (RTC = t + rtc_offset, board/virtual/__init__.py); ``t: null`` gives host time back.
            t = req.get("t")
            self.hw["sim_time"] = None if t is None else int(t)
            write_json_atomic(self.hw_path, self.hw)
            self._send_hw({"meter": self._meter_info()})
            self._reply(c, self.status())
        elif cmd == "link-fault":
            # Virtual board only: damage the serial link once (flip a bit of one byte, drop
            # one, or pull the cable) at byte `after` of the client's bytes ("in") or the
            # board's ("out"), counted from now; "cut" plugs it in again after `replug_s`.
            mode, direction = req.get("mode"), req.get("dir", "in")
            if mode == "off":  # disarm one that has not happened
                self.fault = None
                self._reply(c, self.status())
                return
            try:
                after = int(req.get("after", 0))
                replug_s = float(req.get("replug_s", 0.5))
            except (TypeError, ValueError):
                after = replug_s = -1
            if mode not in LINK_FAULTS or direction not in ("in", "out") or after < 0 \
                    or replug_s < 0:
                self._reply(c, {"ok": False, "error": "link-fault needs mode flip|drop|cut|off, "
                                                      "dir in|out, after >= 0 (bytes)"})
                return
            self.fault = {"mode": mode, "dir": direction, "after": after, "seen": 0,
                          "replug_s": replug_s}
            self._reply(c, self.status())
        elif cmd == "power-on":
            # End a power cut now (one given a long off_s: a meter off until told).
            self.power_on_at = time.monotonic()
            self._reply(c, self.status())
        elif cmd == "stop":
            self._reply(c, {"ok": True, "id": self.a.index})
            self.running = False
        else:
            self._reply(c, {"ok": False, "error": f"unknown command {cmd!r}"})

    def _ctl_read(self, fd: int) -> None:
        c, buf = self.conns[fd]
        try:
            data = c.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.conns.pop(fd, None)
            c.close()
            return
        buf += data
        if b"\n" in buf:
            line = bytes(buf).split(b"\n", 1)[0]
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("not an object")
            except ValueError as e:
                self._reply(c, {"ok": False, "error": f"bad request: {e}"})
                return
            self._ctl_request(c, req)

    # -- main loop ---------------------------------------------------------------
    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "running", False))
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.power_on("run")
        self.log(f"supervisor up: port={self.port} han={self.han_port}")
        while self.running:
            self._step()
        self.shutdown()

    def _step(self) -> None:
        if self.vm_pid:
            self.adc.top_up()
        now = time.monotonic()
        if self.state == "off" and self.vm_pid == 0 and now >= self.power_on_at:
            self.power_on(self.power_mode)
        p = select.poll()
        # A pty master whose slave nobody holds reports POLLHUP at once; while
        # that lasts the port counts as unplugged and is looked at again
        # after a short sleep instead of spinning.
        if self.client < 0 and now >= self.replug_at:
            self._replug()
        self.client_connected = self.client >= 0 and not self._hup(self.client)
        if not self.client_connected:
            self.to_client.clear()
        self.han_connected = not self._hup(self.han)
        if not self.han_connected:
            self.han_buf.clear()
        if self.client_connected:
            p.register(self.client, select.POLLIN | (select.POLLOUT if self.to_client else 0))
        if self.han_connected:
            p.register(self.han, select.POLLIN | (select.POLLOUT if self.han_buf else 0))
        if self.vm_con >= 0:
            ev = 0
            if len(self.to_client) < OUT_CAP or not self.client_connected:
                ev |= select.POLLIN
            if self.to_vm and self.state == "on" and not self._interrupt_pending():
                ev |= select.POLLOUT
            p.register(self.vm_con, ev)
        for fd in (self.hw_out, self.han_in, self.vm_pidfd):
            if fd >= 0:
                p.register(fd, select.POLLIN)
        p.register(self.ctl, select.POLLIN)
        for fd in self.conns:
            p.register(fd, select.POLLIN)
        if self.opens.fd >= 0:
            # a client opening a port ends the wait: no need to look for one every 50 ms
            p.register(self.opens.fd, select.POLLIN)
            timeout = 500  # the ADC's top-up: well within its 2-s lead
            if self.client < 0:  # the cable is pulled: plugged again at replug_at
                timeout = min(timeout, max(0, int((self.replug_at - now) * 1000)) + 1)
        else:
            timeout = 50 if not (self.client_connected and self.han_connected) else 500
        if (self.to_vm and self.state == "on") or self.sigint_at:
            timeout = 10  # held input (a Ctrl-C waiting for the VM) is looked at again soon
        if self.state == "off":
            timeout = min(timeout, max(0, int((self.power_on_at - now) * 1000)) + 1)
        for fd, ev in p.poll(timeout):
            if fd == self.client and fd >= 0:
                if ev & select.POLLIN:
                    try:
                        self._from_client(os.read(fd, 4096))
                    except OSError:
                        pass
                if ev & select.POLLOUT and self.to_client and self.client >= 0:
                    self._flush(self.client, self.to_client)
            elif fd == self.han:
                if ev & select.POLLIN:
                    # The HAN port is a data diode: whatever comes in is dropped.
                    try:
                        self.stats["han_ignored_in"] += len(os.read(self.han, 4096))
                    except OSError:
                        pass
                if ev & select.POLLOUT and self.han_buf:
                    self._flush(self.han, self.han_buf)
            elif fd == self.vm_con:
                if ev & select.POLLOUT:
                    self._feed_vm()
                if ev & (select.POLLIN | select.POLLHUP):
                    self._read_vm()
                    # on to the client now, not one loop later (a WAN answer's latency); what
                    # the client's pty cannot take yet waits for its POLLOUT as before
                    if self.to_client and self.client >= 0 and self.client_connected:
                        self._flush(self.client, self.to_client)
            elif fd == self.hw_out:
                self._read_hw()
            elif fd == self.han_in:
                self._read_han()
            elif fd == self.vm_pidfd:
                self.on_vm_exit()
            elif fd == self.ctl.fileno():
                try:
                    c, _ = self.ctl.accept()
                    c.setblocking(False)
                    self.conns[c.fileno()] = (c, bytearray())
                except OSError:
                    pass
            elif fd in self.conns:
                self._ctl_read(fd)
            elif fd == self.opens.fd:
                self.opens.drain()  # the next step sees the client (its HUP gone)
        if self.state != "off":
            self._check_sigint()
            self._feed_vm()
        self._note_held_input(now)

    def _note_held_input(self, now: float) -> None:
        """Client bytes the VM has not taken for HELD_INPUT_S are logged once, with what holds
        them: a board takes its input at once, so this is the trace a hung session leaves."""
        if not self.to_vm:
            self.held_since = 0.0
            return
        if not self.held_since:
            self.held_since, self.held_logged = now, False
        elif now - self.held_since > HELD_INPUT_S and not self.held_logged:
            self.held_logged = True
            self.log(f"client input held {now - self.held_since:.1f} s: {bytes(self.to_vm[:16])!r} "
                     f"state={self.state} repl={self.repl} rom_active={self.rom_active} "
                     f"file_running={self.file_running} sigint_at={self.sigint_at:.1f} "
                     f"retries={self.sigint_retries} vm_pid={self.vm_pid} "
                     f"caught={bool(self.vm_pid) and sigint_caught(self.vm_pid)}")

    @staticmethod
    def _hup(master: int) -> bool:
        p = select.poll()
        p.register(master, select.POLLIN)
        return any(ev & select.POLLHUP for _, ev in p.poll(0))

    @staticmethod
    def _flush(fd: int, buf: bytearray) -> None:
        try:
            n = os.write(fd, buf)
            del buf[:n]
        except (BlockingIOError, OSError):
            pass

    def shutdown(self) -> None:
        if self.vm_pid:
            os.kill(self.vm_pid, signal.SIGKILL)
            os.waitpid(self.vm_pid, 0)
        self._close_vm_fds()
        for c in self.waiters:
            self._reply(c, {"ok": False, "error": "meter stopped"})
        for name in ("ctl.sock", "port", "han"):
            try:
                os.unlink(os.path.join(self.dir, name))
            except OSError:
                pass
        self.log("supervisor stopped")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="one virtual meter (see module docstring)")
    ap.add_argument("--dir", required=True, help="the meter's directory (fs/ is its flash)")
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heap", default="192K")
    ap.add_argument("--flash-bytes", type=int, default=1408 * 1024)
    ap.add_argument("--romfs-bytes", type=int, default=256 * 1024,
                    help="size of the ROMFS partition (0: none), outside the filesystem")
    ap.add_argument("--nvram-bytes", type=int, default=4096,
                    help="battery-backed RAM (board.nvram, kept in nvram.bin; 0: none)")
    ap.add_argument("--off-time", type=float, default=0.2, help="seconds without power on a cut")
    ap.add_argument("--trace", action="store_true", help="log every byte to supervisor.log")
    ap.add_argument("--time-scale", type=float, default=1.0,
                    help="the RTC runs this many times as fast as host time (soak tests)")
    ap.add_argument("--site", required=True, help="directory holding micropython_run")
    ap.add_argument("--rom", required=True,
                    help="the board's ROM: a ROMFS image of board/virtual/host/rom.py compiled "
                         "(fleet.rom_image())")
    ap.add_argument("--launcher", help="native VM launcher (vmlaunch.py); else CPython hosts it")
    ap.add_argument("--vm-so", help="the VM extension module the native launcher loads")
    Supervisor(ap.parse_args(argv)).run()


if __name__ == "__main__":
    main()
