"""``meterctl doctor``: what a board is, how it is doing, and what is wrong with it.

1. Interrupt the firmware with Ctrl-C into the raw REPL (no soft reset: the heap and the
   imported modules are the running firmware's, so the memory figures are its own).
   Read the board's MicroPython (sys.implementation) and the built-in modules the firmware
   uses; an unsupported version or board, or a missing module, stops here with one line that
   names the firmware to flash (host_tools/flash/versions.py).
2. Run one probe on the board: sys.implementation, machine.freq(), gc.mem_free/mem_alloc,
   os.statvfs, the firmware version (meter.VERSION), every pin of the `board` package read
   through it (relay, button, tamper, led), whether the ADC delivers samples, the RTC,
   the files that matter (main.py, the flash manifest, the WAN keys).
3. Soft-reset back into main.py, whatever happened in between.

Each problem comes with its fix. The library returns a :class:`DoctorReport`; the CLI prints
``report.lines()``.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from host_tools.flash import versions
from host_tools.flash.build import MPY_CROSS_VERSION, board_for_platform
from host_tools.transport.serial import Board, BoardError

KEYS = "/data/cs_keys.json"  # firmware/tasks/cs_security.py KEYS
MANIFEST = "/.flash-manifest.json"  # host_tools/flash/deploy.py MANIFEST
EARLIEST = 1704067200  # 2024-01-01: an RTC below this was never set (tasks/clock.py)
LOW_FLASH = 64 * 1024  # bytes free on the filesystem
LOW_HEAP = 16 * 1024  # bytes of heap free while the firmware runs
ADC_WAIT_MS = 100
FIRST_TRY_S = 3.0  # to reach the raw REPL; a healthy board needs well under a second
MEMORY_FIX = ("imported .mpy code lives in the heap: freeze the firmware into the MicroPython "
              "build so that it runs from flash (docs/hardware.md, 'Memory')")
PINS = ("relay", "button", "tamper", "led")

# The probe: small snippets, each compiled and run on its own and printing one literal. A
# running firmware leaves the heap fragmented (on the VM at 192K: ~58 KB free, the largest
# piece under 4 KB), and compiling one long probe would not fit. Memory is read first, before
# the probe's own allocations; the firmware is imported last (if it was not running, that
# import may fill the heap).
_FILES = ("/main.py", MANIFEST, KEYS, "/data")
PROBES: tuple[tuple[str, str], ...] = (
    ("mem", "import gc\ngc.collect()\nprint((gc.mem_free(), gc.mem_alloc()))\n"),
    ("impl", "import sys\nim = sys.implementation\n"
             "print((im.name, '.'.join(str(v) for v in im.version[:3]), "
             "getattr(im, '_machine', ''), getattr(im, '_mpy', None)))\n"),
    ("platform", "import sys\nprint(repr(sys.platform))\n"),
    # the kernel stays imported while the firmware runs (meter.py, which builds it, does not)
    ("running", "import sys\nprint('kernel' in sys.modules)\n"),
    ("freq", "try:\n import machine\n f = machine.freq()\n"
             " print(list(f) if isinstance(f, tuple) else f)\nexcept Exception:\n print(None)\n"),
    ("fs", "import os\ntry:\n st = os.statvfs('/')\n print((st[1] * st[2], st[1] * st[4]))\n"
           "except Exception as e:\n print(repr('error: ' + repr(e)))\n"),
    ("mounts", "import os\ntry:\n print([m for _, m in os.mount()])\n"
               "except Exception:\n print(None)\n"),
    ("files", "import os\nr = {}\nfor p in " + repr(_FILES) + ":\n try:\n  os.stat(p)\n"
              "  r[p] = True\n except OSError:\n  r[p] = False\nprint(r)\n"),
    # Its start only: json.dumps(sort_keys=True) puts "board" first, and the whole file (a
    # hash per file) can be bigger than the largest free piece of a busy heap.
    ("manifest", "try:\n f = open(" + repr(MANIFEST) + ")\n print(repr(f.read(100)))\n"
                 " f.close()\nexcept OSError:\n print(None)\n"),
    ("board", "try:\n import board\n print(repr(board.NAME))\n"
              "except Exception as e:\n print(repr('error: ' + repr(e)))\n"),
    ("pins", "import board\nr = {}\nfor n in " + repr(PINS) + ":\n try:\n"
             "  r[n] = str(getattr(board, n).value())\n except Exception as e:\n"
             "  r[n] = 'error: ' + repr(e)\nprint(r)\n"),
    ("adc", "import board\nfrom array import array\ntry:\n v = array('H', bytes(1024))\n"
            " i = array('H', bytes(1024))\n board.adc.read_into(v, i)\n"
            " import time\n t = time.ticks_ms()\n"
            " board.sleep_ms(" + str(ADC_WAIT_MS) + ")\n"
            " n = board.adc.read_into(v, i)\n"
            " print((n, board.ADC_RATE_HZ, time.ticks_diff(time.ticks_ms(), t)))\n"
            "except Exception as e:\n print(repr('error: ' + repr(e)))\n"),
    ("rtc", "import board\ntry:\n print(board.rtc.get())\n"
            "except Exception as e:\n print(repr('error: ' + repr(e)))\n"),
    ("fw", "try:\n import meter\n print(repr(meter.VERSION))\n"
           "except Exception as e:\n print(repr('error: ' + repr(e)))\n"),
)
BOARD_PROBES = ("pins", "adc", "rtc")  # need the board package


@dataclass(frozen=True)
class Problem:
    problem: str
    fix: str

    def line(self) -> str:
        return f"problem: {self.problem}; fix: {self.fix}"


@dataclass
class DoctorReport:
    port: str
    implementation: str  # "micropython 1.29.0"
    machine: str  # sys.implementation._machine
    platform: str  # sys.platform
    mpy: str  # ".mpy v6.3 armv6m" or "no .mpy support reported"
    freq: int | list[int] | None  # machine.freq(): Hz, or the stm32's (sysclk, hclk, ...)
    mem_free: int
    mem_alloc: int
    fs_total: int | None
    fs_free: int | None
    firmware: str | None  # meter.VERSION
    firmware_running: bool  # main.py had the firmware running when we interrupted it
    board: str | None  # board.NAME
    flashed_board: str | None  # the board definition in the flash manifest
    pins: dict[str, str] = field(default_factory=dict)  # name -> value, or "error: ..."
    adc_samples: int | None = None  # samples delivered in adc_ms (about ADC_WAIT_MS)
    adc_rate_hz: int | None = None
    adc_ms: int | None = None  # the board's own measure of the wait (a busy host stretches it)
    rtc: int | None = None
    keys: bool = False
    modules: dict[str, bool] = field(default_factory=dict)  # versions.MODULES: importable?
    flash_life: str | None = None  # the flash life line (flash_life_line())
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """Every field (``rtc`` in epoch seconds), ``ok`` and the problems with their fixes:
        `meterctl doctor --json`."""
        return {**dataclasses.asdict(self), "ok": self.ok}

    def lines(self) -> list[str]:
        out = [f"port: {self.port}",
               f"board: {self.implementation} on {self.machine} (sys.platform {self.platform}, "
               f"{self.mpy})",
               f"cpu: {_freq(self.freq)}",
               f"heap: {_kib(self.mem_free)} free, {_kib(self.mem_alloc)} used"
               + (" (by the running firmware)" if self.firmware_running else ""),
               "filesystem: " + (f"{_kib(self.fs_free)} free of {_kib(self.fs_total)}"
                                 if self.fs_total is not None and self.fs_free is not None
                                 else "unknown"),
               f"firmware: {self.firmware or 'none'}"
               + (" (was running)" if self.firmware_running else " (was not running)"),
               f"board definition: {self.board or 'none'}"
               + (f" (flashed as {self.flashed_board})" if self.flashed_board else "")]
        for name in PINS:
            if name in self.pins:
                v = self.pins[name]
                out.append(f"pin {name}: "
                           + (v if v.startswith("error") else f"answers, reads {v}"))
        if self.adc_samples is not None:
            out.append(f"adc: {self.adc_samples} samples in {self.adc_ms} ms "
                       f"(board rate {self.adc_rate_hz} Hz)")
        if self.rtc is not None:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.rtc))
            out.append(f"clock: {when} ({self.rtc - int(time.time()):+d} s from the host's)")
        out.append(f"keys: {'provisioned' if self.keys else 'none'} ({KEYS})")
        if self.flash_life:
            out.append(self.flash_life)
        if self.modules:
            out.append("build: " + ", ".join(f"{m} {'yes' if ok else 'no'}"
                                             for m, ok in self.modules.items()))
            out.extend(f"without {m}: {versions.OPTIONAL_MODULES[m]}"
                       for m, ok in self.modules.items()
                       if not ok and m in versions.OPTIONAL_MODULES)
        out.extend(p.line() for p in self.problems)
        out.append("ok: nothing wrong found" if self.ok
                   else f"{len(self.problems)} problem(s) found")
        return out


def _kib(n: int | None) -> str:
    return "?" if n is None else f"{n / 1024:.1f} KiB"


def _freq(f: int | list[int] | None) -> str:
    if f is None:
        return "machine.freq() not available"
    if isinstance(f, list):
        return "machine.freq() " + ", ".join(f"{v / 1e6:g} MHz" for v in f)
    return f"machine.freq() {f / 1e6:g} MHz"


def doctor(port: str, timeout: float = 10.0) -> DoctorReport:
    """Examine the board on ``port`` (a path, a virtual meter's pty, or "auto"), then
    soft-reset it back into main.py, even when the examination fails."""
    with Board(port, timeout=timeout) as b:
        try:
            _interrupt(b)
            try:
                ident = versions.check(b)  # UnsupportedBoard: one line, nothing else done
                raw = _probe(b)
            except versions.UnsupportedBoard:
                raise
            except BoardError as e:
                if "MemoryError" not in str(e):
                    raise
                # What the firmware left fills the heap; a soft reset frees it (main.py
                # does not run from the raw REPL), and the probe then runs on its own.
                b.enter_raw(soft_reset=True)
                ident = versions.check(b)
                raw = _probe(b)
                raw["out_of_memory"] = str(e).split("board: ", 1)[-1]
            raw["modules"] = ident.modules
        except BaseException:
            with contextlib.suppress(BoardError):
                b.soft_reset_to_main()
            raise
        b.soft_reset_to_main()
    rep = diagnose(b.port, raw)
    rep.flash_life = flash_life_line(b.port, rep.platform)
    return rep


def flash_life_line(port: str, platform: str, sim_dirs: list[Path] | None = None) -> str:
    """A virtual meter: its flash model's erase counters (flash-wear.json in its directory,
    found by its port among the fleets in ``sim_dirs``, default the sim's default directory).
    A board: this firmware's write pattern as measured on the virtual board's flash model for
    that port (host_tools/reliability/wear.py MODELLED, docs/hardware.md "Flash wear")."""
    from host_tools.reliability import wear
    from host_tools.sim import flashwear, fleet

    mdir = _virtual_meter(port, sim_dirs if sim_dirs is not None else [fleet.default_dir()])
    if mdir is not None:
        try:
            s = flashwear.summary(mdir)
        except flashwear.WearError as e:
            return f"flash life: unknown ({e})"
        if s is None:
            return "flash life: no flash model (the unix profile: a host directory)"
        w = flashwear.read(mdir)
        if w is not None and s["unit"] == "block" and s["erases_total"]:
            # littlefs levels over the blocks in its rotation (wear.Erased.levelled): the
            # average of those it erased, not the day's hottest
            n = sum(1 for c in w["counts"] if c)
            per = s["erases_total"] / n / s["seconds"] * flashwear.SECONDS_PER_DAY
            life = wear.life_text(wear.years_at(s["rated"], per))
            return (f"flash life at this write rate: {life}"
                    f" (littlefs: {s['erases_total']} erases levelled over the {n} blocks in "
                    f"rotation, {per:.2f} each a day; rated {s['rated'] // 1000}k "
                    f"({s['chip']}); over {s['seconds']:.0f} s of board time)")
        return flashwear.life_line(s)
    m = wear.MODELLED.get(platform)
    if m is None:
        return f"flash life: no write-pattern model for platform {platform!r}"
    return "flash life (this firmware's write pattern, modelled): " + m.line()


def _virtual_meter(port: str, bases: list[Path]) -> Path | None:
    # the virtual meter whose pseudo-terminal `port` is (its directory's "port" file)
    try:
        want = os.path.realpath(port)
    except OSError:
        return None
    for base in bases:
        for d in sorted(base.glob("meter-*")):
            link = d / "port"  # a symlink to the meter's pty (sim/supervisor.py)
            if link.is_symlink() and os.path.realpath(link) == want:
                return d
    return None


def _interrupt(b: Board) -> None:
    """Ctrl-C into the raw REPL, and once more if that goes unanswered: a board that crashes
    on the interrupt reboots into main.py, which the second Ctrl-C stops. (The virtual board
    does this now and then while the firmware's off-switch thread runs: the VM dies with
    "MemoryError: heap is locked".)"""
    full = b.timeout
    b.timeout = min(FIRST_TRY_S, full)
    try:
        b.enter_raw(soft_reset=False)
        return
    except BoardError as e:
        if "does not answer" not in str(e):
            raise
    finally:
        b.timeout = full
    b.enter_raw(soft_reset=False)


def _probe(b: Board) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for key, code in PROBES:
        board = raw.get("board")
        if key in BOARD_PROBES and (not isinstance(board, str) or board.startswith("error: ")):
            continue
        try:
            raw[key] = _last_line(b, b.exec(code, f"reading {key}"))
        except BoardError as e:
            if key in ("mem", "impl", "platform", "files"):
                raise  # nothing to report without these
            raw[key] = "error: " + str(e).split("board: ", 1)[-1]
    board = raw.get("board")
    if isinstance(board, str) and board.startswith("error: "):
        raw["board"], raw["board_error"] = None, board[len("error: "):]
    fw = raw.get("fw")
    if isinstance(fw, str) and fw.startswith("error: "):
        raw["fw"], raw["fw_error"] = None, fw[len("error: "):]
    return raw


def _last_line(b: Board, out: bytes) -> Any:
    try:
        return ast.literal_eval(out.decode().strip().splitlines()[-1])
    except (ValueError, SyntaxError, IndexError) as e:
        raise BoardError(f"{b.port}: unexpected answer from the board ({e}): "
                         f"{out[-200:]!r}") from None


def diagnose(port: str, r: dict[str, Any]) -> DoctorReport:
    """The report, with its problems, from the probe's answer (pure: tests call it)."""
    name, version, machine, mpy = r["impl"]
    fs = r.get("fs")
    fs_total, fs_free = (fs if isinstance(fs, tuple) else (None, None))
    flashed = None
    m = re.match(r'\{"board": "([^"]+)"', str(r.get("manifest")))
    if m:
        flashed = m.group(1)
    rep = DoctorReport(
        port=port, implementation=f"{name} {version}", machine=machine or "?",
        platform=r["platform"], mpy=_mpy(mpy), freq=r.get("freq"),
        mem_free=r["mem"][0], mem_alloc=r["mem"][1], fs_total=fs_total, fs_free=fs_free,
        firmware=r.get("fw"), firmware_running=bool(r.get("running")), board=r.get("board"),
        flashed_board=flashed, pins=_dict(r.get("pins")),
        keys=bool(r["files"].get(KEYS)), modules=_dict(r.get("modules")))
    adc = r.get("adc")
    if isinstance(adc, tuple):
        rep.adc_samples, rep.adc_rate_hz, rep.adc_ms = adc
    if isinstance(r.get("rtc"), int):
        rep.rtc = r["rtc"]
    rep.problems = _problems(port, r, rep)
    return rep


def _dict(v: object) -> dict[str, Any]:
    return {str(k): x for k, x in v.items()} if isinstance(v, dict) else {}


def _mpy(mpy: int | None) -> str:
    if mpy is None:
        return "no .mpy support reported"
    archs = [None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp",
             "armv7emdp", "xtensa", "xtensawin", "rv32imc", "rv64imc"]
    idx = mpy >> 10
    arch = archs[idx] if idx < len(archs) else f"arch {idx}"
    return f".mpy v{mpy & 0xFF}.{(mpy >> 8) & 3} {arch or 'bytecode only'}"


def _problems(port: str, r: dict[str, Any], rep: DoctorReport) -> list[Problem]:
    p: list[Problem] = []
    flash = f"meterctl flash --port {port}"
    files = r["files"]
    # with a micro SD card the board's boot.py mounts the card at / and leaves /flash alone
    if r.get("mounts") and "/" not in r["mounts"] and ("/flash" in r["mounts"]
                                                        or "/sd" in r["mounts"]):
        where = "/sd" if "/sd" in r["mounts"] else "/flash"
        what = "micro SD card" if where == "/sd" else "flash filesystem"
        p.append(Problem(f"the {what} is mounted at {where}, so the firmware's paths "
                         "(/main.py, /data) do not reach it: the board's boot.py is missing",
                         f"{flash} (it installs the Pyboard's boot.py, which mounts the "
                         f"{what} at /)"))
    if r.get("out_of_memory"):
        p.append(Problem("the heap was full when doctor interrupted the firmware "
                         f"({r['out_of_memory']}); the figures above are from after a soft "
                         "reset", MEMORY_FIX))
    if not files.get("/main.py"):
        p.append(Problem("no firmware: /main.py is missing", flash))
    elif rep.firmware is None and "MemoryError" in str(r.get("fw_error")):
        p.append(Problem(f"the firmware does not fit in the heap ({r.get('fw_error')})",
                         MEMORY_FIX))
    elif rep.firmware is None:
        p.append(Problem(f"the firmware does not import ({r.get('fw_error', '?')})",
                         f"{flash}; then watch it boot: mpremote connect {port} repl, Ctrl-D"))
    elif not rep.firmware_running:
        p.append(Problem("main.py was not running when doctor connected (it ended or crashed)",
                         f"watch it boot: mpremote connect {port} repl, then Ctrl-D"))
    if rep.board is None and files.get("/main.py"):
        p.append(Problem(f"no board package ({r.get('board_error', '?')})", flash))
    if rep.board is not None:
        with contextlib.suppress(Exception):
            expected = board_for_platform(rep.platform, rep.machine)
            if expected != rep.board:
                p.append(Problem(f"the board definition is {rep.board!r} but this is a "
                                 f"{rep.platform} board ({expected!r} expected)",
                                 f"meterctl flash --port {port} --board {expected}"))
    if rep.flashed_board and rep.board and rep.flashed_board != rep.board:
        p.append(Problem(f"the flash manifest says {rep.flashed_board!r} but the board package "
                         f"is {rep.board!r}", flash))
    for key in ("pins",):
        v = r.get(key)
        if isinstance(v, str) and v.startswith("error: "):
            p.append(Problem(f"reading the {key} failed ({v[7:]})",
                             f"run doctor again; if it persists, mpremote connect {port} repl"))
    for name, v in rep.pins.items():
        if v.startswith("error"):
            p.append(Problem(f"pin {name} does not answer ({v[7:]})",
                             "check the pin map at the top of the board adapter "
                             f"(board/{rep.board}/__init__.py) against the wiring"))
    adc = r.get("adc")
    if isinstance(adc, str):
        p.append(Problem(f"the ADC fails ({adc[7:]})",
                         f"check the ADC pins and the sampling timer in board/{rep.board}/"))
    elif rep.adc_samples == 0:
        p.append(Problem(f"the ADC delivered no samples in {ADC_WAIT_MS} ms",
                         "the sampling timer is not running: check its interrupt in the "
                         f"board adapter (board/{rep.board}/__init__.py)"))
    if isinstance(r.get("rtc"), str):
        p.append(Problem(f"the RTC fails ({r['rtc'][7:]})", f"check board/{rep.board}/"))
    elif rep.rtc is not None and rep.rtc < EARLIEST:
        p.append(Problem(f"the clock reads {time.strftime('%Y-%m-%d', time.gmtime(rep.rtc))}: "
                         "it was never set (a board without an RTC battery loses it at power-off)",
                         f"meterctl provision --port {port} sets it"))
    if files.get("/main.py") and not rep.keys:
        p.append(Problem(f"no WAN keys provisioned ({KEYS} is absent): the meter answers "
                         "every command with NOT_PROVISIONED",
                         f"meterctl provision --port {port}"))
    if rep.fs_free is not None and rep.fs_free < LOW_FLASH:
        p.append(Problem(f"low flash: {_kib(rep.fs_free)} free on the filesystem",
                         f"list what is there (mpremote connect {port} fs ls -r /) and remove "
                         "what is not the meter's; the image's own size: make mpy"))
    if rep.firmware_running and rep.mem_free < LOW_HEAP:
        p.append(Problem(f"low memory: {_kib(rep.mem_free)} of heap free while the firmware runs",
                         MEMORY_FIX))
    for m, ok in rep.modules.items():
        if not ok and m in versions.REQUIRED_MODULES:  # (versions.check refused it already)
            p.append(Problem(f"this MicroPython build has no {m}: "
                             f"{versions.REQUIRED_MODULES[m]}",
                             f"flash MicroPython v{versions.LATEST} (docs/hardware.md, "
                             "'Boards and versions')"))
    mv = r["impl"][3]
    if mv is not None and (mv & 0xFF, (mv >> 8) & 3) != MPY_CROSS_VERSION:
        p.append(Problem(f"the board loads {_mpy(mv)}, our mpy-cross writes "
                         f"v{MPY_CROSS_VERSION[0]}.{MPY_CROSS_VERSION[1]}: flash sends sources "
                         "(slower imports, more RAM)",
                         f"flash MicroPython v{versions.LATEST} (.mpy v6.3, as every "
                         "supported release)"))
    return p
