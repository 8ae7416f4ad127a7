"""``meterctl bench``: the orchestration, as a library that the CLI and the tests call.

- ``sim``: virtual meters. Meter 0 is started alone, flashed (``host_tools.flash``) and
  provisioned (``host_tools.headend.provision``, with a short load-profile interval so that S4
  takes seconds, not hours), and the component tests C1–C14 run on it while it is the only VM
  on the host. Then the fleet the system tests need is started: meter 0's flash image (the
  files of its flash manifest, checked against their sha256) is copied into every other
  meter's flash, as a production line clones a verified image, every meter is provisioned,
  and S1–S4 run for each setup. The fleet is stopped whatever happens.
- ``port``: the component tests on one board.
- ``ports``: the component tests on the first board, the system tests on all of them.
- ``emulated``: the component tests on an emulated board (``run_emulated``).

A board that stops answering ends the bench with :class:`BenchAborted`: the returned
:class:`BenchRun` has ``aborted`` set (the test and the message) and every result measured
before it.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from host_tools.bench import system
from host_tools.bench.results import BenchAborted, Result
from host_tools.sim import flashimg

MODES = ("sim", "port", "ports", "emulated")
EMULATED = ("m0plus", "m4", "m33", "rp2040")
DEFAULT_RUNS = 10  # the paper's
QUICK_RUNS = 3  # --quick: enough for a spread, and the 10-minute goal on 2 cores
DEFAULT_SIZES = (3, 50)
SIM_INTERVAL_S = 2  # the virtual meters' load-profile interval (a real meter: 900 s)
Progress = Callable[[str], None]


def _failures() -> tuple[type[BaseException], ...]:
    from host_tools.flash.build import BuildError
    from host_tools.headend.lopa.headend import METER_FAILURES
    from host_tools.headend.provision import ProvisionError
    from host_tools.sim.fleet import SimError

    return (*METER_FAILURES, SimError, ProvisionError, BuildError)


FAILURES = _failures()


def _why(e: BaseException) -> str:
    return str(e).strip() or type(e).__name__


class BenchError(Exception):
    """The bench cannot start as asked (bad options, no meters); nothing was measured."""


@dataclass
class BenchConfig:
    mode: str
    ports: list[str] = field(default_factory=list)
    board: str | None = None  # --emulated
    quick: bool = False
    runs: int | None = None  # None: DEFAULT_RUNS, or QUICK_RUNS with --quick
    sizes: list[int] = field(default_factory=lambda: list(DEFAULT_SIZES))
    setups: list[str] | None = None  # None: all four, or 1x3,1x25 with --quick
    keystore: Path | None = None
    interval_s: int | None = None  # sim: SIM_INTERVAL_S; ports: re-provision with it if given
    timeout: float = 30.0
    sim_dir: Path | None = None  # sim: where the fleet lives (default: a temporary directory)
    heap: str = "192K"
    check: bool = True  # S4: aggregates against the lab truth on the last run

    def resolved(self) -> BenchConfig:
        """Defaults filled in and checked; raises BenchError on bad input."""
        if self.mode not in MODES:
            raise BenchError(f"mode {self.mode!r}: one of {', '.join(MODES)}")
        runs = self.runs if self.runs is not None else (QUICK_RUNS if self.quick
                                                          else DEFAULT_RUNS)
        if runs < 1:
            raise BenchError("--runs must be at least 1")
        sizes = sorted(set(self.sizes))
        if not sizes or min(sizes) < 3:
            raise BenchError("--sizes: group sizes of at least 3 members (e.g. 3,50)")
        if max(sizes) > 512:
            raise BenchError("--sizes: the protocol caps a group at 512 members")
        setups = self.setups if self.setups is not None else list(
            system.QUICK_SETUPS if self.quick else system.ALL_SETUPS)
        try:
            setups = system.parse_setups(",".join(setups))
        except system.SetupError as e:
            raise BenchError(f"--setups: {e}") from None
        if self.mode == "port" and len(self.ports) != 1:
            raise BenchError("--port takes one board")
        if self.mode == "ports" and not self.ports:
            raise BenchError("--ports: give the boards, comma-separated")
        if self.mode == "ports":
            need = system.meters_needed(setups)
            if self.setups is None:  # the defaults: those that fit
                setups = [s for s in setups if system.meters_needed([s]) <= len(self.ports)]
            elif need > len(self.ports):
                raise BenchError(f"--setups {','.join(setups)} needs {need} meters; --ports "
                                 f"gives {len(self.ports)}")
        if self.mode == "emulated" and self.board not in EMULATED:
            raise BenchError(f"--emulated: one of {', '.join(EMULATED)}")
        if self.interval_s is not None and not 1 <= self.interval_s <= 86400:
            raise BenchError("--interval must be 1..86400 seconds")
        interval = self.interval_s
        if self.mode == "sim" and interval is None:
            interval = SIM_INTERVAL_S
        return BenchConfig(self.mode, list(self.ports), self.board, self.quick, runs, sizes,
                           setups, self.keystore, interval, self.timeout, self.sim_dir,
                           self.heap, self.check)

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "ports": self.ports, "board": self.board,
                "quick": self.quick, "runs": self.runs, "sizes": self.sizes,
                "setups": self.setups, "interval_s": self.interval_s,
                "timeout_s": self.timeout, "heap": self.heap if self.mode == "sim" else None,
                "lab_check": self.check}


@dataclass
class BenchRun:
    """What a bench produced: every Result, the platforms, notes, and whether it was cut
    short (``aborted``: the test and the message)."""

    config: BenchConfig
    results: list[Result] = field(default_factory=list)
    platforms: dict[str, str] = field(default_factory=dict)  # "components"/"system"/"head-end"
    notes: list[str] = field(default_factory=list)
    capacity: dict[str, Any] | None = None
    aborted: dict[str, str] | None = None  # the first failure
    failures: list[dict[str, str]] = field(default_factory=list)  # every one
    started: float = field(default_factory=time.time)
    elapsed_s: float = 0.0
    phases_s: dict[str, float] = field(default_factory=dict)
    phase: str = "set-up"  # what is running (named when a failure ends the bench)
    interrupted: bool = False  # Ctrl-C ended it (the CLI still writes what was measured)

    def fail(self, test: str, message: str) -> None:
        """Record a test the bench could not finish (the first one is ``aborted``)."""
        f = {"test": test, "message": message.removeprefix(f"{test}: ")}
        self.failures.append(f)
        if self.aborted is None:
            self.aborted = f

    def add(self, results: list[Result]) -> None:
        known = {id(r) for r in self.results}
        self.results += [r for r in results if id(r) not in known]


def host_cpu() -> str:
    from host_tools.sim.bench import cpu_model

    return cpu_model()


# -- pieces ------------------------------------------------------------------------------------
def _components() -> Any:
    """The component tests' module (written beside this one; absent in a partial tree)."""
    try:
        from host_tools.bench import components
    except ImportError as e:
        raise BenchError(f"the component tests are not available ({e})") from None
    return components


class _Phases:
    def __init__(self, run: BenchRun, say: Progress) -> None:
        self.run = run
        self.say = say
        self.t0 = time.monotonic()

    def mark(self, name: str, since: float) -> None:
        self.run.phases_s[name] = round(self.run.phases_s.get(name, 0.0)
                                        + time.monotonic() - since, 1)


def _quiet_threads(fn: Callable[[Any], Any], items: list[Any], workers: int) -> list[Any]:
    """``fn`` over ``items`` in threads, results in order. mpremote's silencing swaps
    sys.stdout process-wide; threads doing it at once can leave a StringIO behind: restore."""
    out, err = sys.stdout, sys.stderr
    try:
        with cf.ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as ex:
            return list(ex.map(fn, items))
    finally:
        sys.stdout, sys.stderr = out, err


def clone_image(src: Path, dest: Path) -> int:
    """Copy the flash image of the virtual meter in directory ``src`` into the one in ``dest``:
    its flash manifest's files and the manifest (in ``fs/``) and, when the manifest says the
    modules are in the ROMFS partition, the partition (``romfs.bin``), each checked against
    the manifest's sha256. Returns the bytes copied. The meter's own data (/data: keys, logs,
    profile) is never copied. A meter whose flash is an image (a board profile) is cloned as a
    board is programmed: the whole image, checked against its manifest, then its /data
    removed; the clone's erase counts start at zero."""
    if flashimg.geometry(src) is not None:
        return _clone_flash_image(src, dest)
    src_fs, dest_fs = src / "fs", dest / "fs"
    manifest = src_fs / ".flash-manifest.json"
    try:
        man = json.loads(manifest.read_text())
        files: dict[str, str] = man["files"]
        rom: dict[str, Any] = man.get("romfs") or {}
    except (OSError, ValueError, KeyError, AttributeError) as e:
        raise BenchError(f"{src_fs}: no usable flash manifest to clone ({e})") from None
    copies: list[tuple[str, bytes]] = []
    for name, sha in sorted(files.items()):
        rel = "fs/" + name.lstrip("/")
        data = (src / rel).read_bytes()
        if hashlib.sha256(data).hexdigest() != sha:
            raise BenchError(f"{src / rel}: differs from the flash manifest; not cloned")
        copies.append((rel, data))
    if rom:
        part = (src / "romfs.bin").read_bytes()
        if hashlib.sha256(part[:int(rom["size"])]).hexdigest() != rom["sha256"]:
            raise BenchError(f"{src / 'romfs.bin'}: differs from the flash manifest; not cloned")
        copies.append(("romfs.bin", part))
    for rel, data in copies:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(data)
    shutil.copyfile(manifest, dest_fs / ".flash-manifest.json")
    return sum(len(d) for _, d in copies)


def _clone_flash_image(src: Path, dest: Path) -> int:
    name = "/.flash-manifest.json"
    try:
        man = json.loads(flashimg.read_file(src, name))
        files: dict[str, str] = man["files"]
        rom: dict[str, Any] = man.get("romfs") or {}
    except (OSError, ValueError, KeyError, AttributeError, flashimg.FlashImageError) as e:
        raise BenchError(f"{src / flashimg.IMAGE}: no usable flash manifest to clone ({e})"
                         ) from None
    sums = flashimg.sha256s(src, sorted(files))
    for path, sha in sorted(files.items()):
        if sums[path] != sha:
            raise BenchError(f"{src / flashimg.IMAGE}:{path}: differs from the flash manifest; "
                             "not cloned")
    copies = [flashimg.IMAGE]
    if flashimg.sd_bytes(src):
        # a Pyboard booting from its micro SD card: the firmware is on the card, and the
        # clone's profile says it has one (flashimg reads the card by it)
        copies += [flashimg.SD_IMAGE, "profile.json"]
    if rom:
        part = (src / "romfs.bin").read_bytes()
        if hashlib.sha256(part[:int(rom["size"])]).hexdigest() != rom["sha256"]:
            raise BenchError(f"{src / 'romfs.bin'}: differs from the flash manifest; not cloned")
        copies.append("romfs.bin")
    dest.mkdir(parents=True, exist_ok=True)
    for rel in copies:
        shutil.copyfile(src / rel, dest / rel)
    geo = json.loads((src / flashimg.GEOMETRY).read_text())
    geo.update(created=time.time(), created_sim=None)
    (dest / "flash-wear.bin").unlink(missing_ok=True)  # a new chip: no erases yet
    (dest / "sd-writes.bin").unlink(missing_ok=True)  # and a new card
    (dest / flashimg.GEOMETRY).write_text(json.dumps(geo))
    if flashimg.exists(dest, "/data"):
        flashimg.remove(dest, "/data")
    return sum((dest / rel).stat().st_size for rel in copies)


def _provision_all(ports: list[str], keystore: Any, interval_s: int | None,
                   timeout: float, tries: int = 3) -> list[Any]:
    """Provision freshly started virtual meters (new keys), several at once. A meter that does
    not answer its REPL is asked again after a pause: dozens of VMs booting their firmware at
    once on two cores can keep one from answering within the timeout."""
    from host_tools.headend.client import LinkError
    from host_tools.headend.provision import provision
    from host_tools.transport.serial import BoardError

    def one(port: str) -> Any:
        for i in range(tries):
            try:
                return provision(port, keystore, force=True, interval_s=interval_s,
                                 timeout=timeout)
            except (BoardError, LinkError):
                if i == tries - 1:
                    raise
                time.sleep(2.0)
        raise AssertionError("unreachable")

    return _quiet_threads(one, ports, 6)


def _run_components(run: BenchRun, port: str, say: Progress, keystore: Path | None) -> None:
    comp = _components()
    run.phase = f"component tests on {port}"
    cfg = run.config
    assert cfg.runs is not None
    try:
        res = comp.run_components(port, sizes=cfg.sizes, runs=cfg.runs, quick=cfg.quick,
                                  progress=say, keystore=keystore, timeout=cfg.timeout)
    except BenchAborted as e:
        run.add(e.results)
        _platforms(run, e.results)
        raise _heap_hint(e, cfg.sizes) from None
    run.add(res)
    _platforms(run, res)
    cap = getattr(comp, "capacity", None)
    if cap is not None:
        say("capacity: the largest group and the most groups within the heap")
        try:
            run.capacity = dict(cap(port, keystore=keystore, quick=cfg.quick,
                                    timeout=cfg.timeout, progress=say,
                                    commit_groups=not cfg.quick))
        except BenchAborted as e:
            run.add(e.results)
            raise
        except Exception as e:  # a figure we report, not a reason to drop the bench
            run.notes.append(f"capacity not measured: {e}")
    else:
        run.notes.append("capacity not measured: components.capacity is not available")


def _platforms(run: BenchRun, results: list[Result]) -> None:
    platforms = {r.platform for r in results}
    if platforms:
        run.platforms["components"] = "; ".join(sorted(platforms))


def _heap_hint(e: BenchAborted, sizes: list[int]) -> BenchAborted:
    """A component test that ran out of heap: say which sizes were asked for."""
    msg = str(e)
    if "MemoryError" in msg or "does not fit" in msg or "no memory" in msg:
        head = f"{e.test}: "
        body = msg[len(head):] if msg.startswith(head) else msg
        return BenchAborted(e.test, f"{body} (the board's heap does not hold a group of the "
                            f"sizes asked, --sizes {','.join(map(str, sizes))}; try smaller "
                            "ones)", e.results)
    return e


def _run_system(run: BenchRun, ports: list[str], keystore: Any, platform: str,
                say: Progress, fleet_dir: Path | None = None) -> None:
    from host_tools.headend.lopa import targets_from_ports

    cfg = run.config
    assert cfg.runs is not None and cfg.setups is not None
    if not cfg.setups:
        run.notes.append("system tests not run: no setup fits the boards given")
        return
    run.phase = "system tests"
    targets = targets_from_ports(ports, keystore)
    bench = system.SystemBench(targets, keystore, platform=platform, runs=cfg.runs,
                               progress=say, timeout=max(10.0, cfg.timeout / 3),
                               check=cfg.check, fleet_dir=fleet_dir)
    run.platforms["system"] = platform
    run.platforms["head-end"] = f"meterctl head-end on {host_cpu()}"
    try:
        bench.run(cfg.setups)
    finally:
        run.add(bench.results)
    if bench.interval_s is not None:
        cfg_note = (f"S4 waits for {system.ROUNDS} load-profile intervals of "
                    f"{bench.interval_s} s (the paper: 15 min); its busy time leaves the "
                    "waits out")
        run.notes.append(cfg_note)


def _system_platform(run: BenchRun, port: str, keystore: Any, virtual: bool,
                     timeout: float) -> str:
    """The meters' platform for the system tests: the component tests' label when they ran
    on one of these boards, else what the board's INFO says."""
    comp = run.platforms.get("components")
    if comp:
        return comp
    if virtual:
        return f"virtual board (MicroPython unix VM) on {host_cpu()}"
    from host_tools.headend import wire
    from host_tools.headend.client import open_link

    try:
        with open_link(port, keystore, None, timeout) as link:
            info = link.request(wire.K_INFO)
        return f"board {info.get('board', '?')} (firmware {info.get('fw', '?')})"
    except Exception:
        return "board (unknown)"


# -- the modes -----------------------------------------------------------------------------------
def first_meter(base: Path, keystore: Any, *, interval_s: int | None, heap: str = "192K",
                timeout: float = 30.0, say: Progress = lambda _m: None) -> dict[str, Any]:
    """Start virtual meter 0 alone in ``base``, flash it and provision it; its record."""
    from host_tools.flash.deploy import flash
    from host_tools.sim import fleet

    say("starting virtual meter 0")
    # the unix profile: its figures are labelled "virtual board" whatever it presents itself as,
    # and its ROMFS keeps a 50-member group within the 192K heap the bench's setups assume; its
    # qstr pools a board's (board_pools: docs/virtual-board.md, the ROM's names)
    rec0 = fleet.start(1, base, heap=heap, timeout=max(60.0, timeout), profile="unix",
                       board_pools=True)[0]
    say(f"flashing meter 0 ({rec0['port']})")
    flash(rec0["port"], timeout=timeout)
    _provision_all([rec0["port"]], keystore, interval_s, timeout)
    return rec0


def grow_fleet(base: Path, n: int, keystore: Any, *, interval_s: int | None,
               heap: str = "192K", timeout: float = 30.0,
               say: Progress = lambda _m: None) -> list[str]:
    """With meter 0 flashed and the fleet stopped: clone meter 0's image into meters 1..n-1,
    start the n meters and provision every one. Their ports, meter 0 first."""
    from host_tools.sim import fleet

    if n > 1:
        say(f"cloning meter 0's flash image into meters 1..{n - 1}")
    for i in range(1, n):
        clone_image(fleet.meter_dir(base, 0), fleet.meter_dir(base, i))
    say(f"starting {n} virtual meters")
    recs = fleet.start(n, base, heap=heap, timeout=max(120.0, timeout), profile="unix",
                       board_pools=True)
    ports = [str(r["port"]) for r in recs]
    say(f"provisioning {n} meters (interval {interval_s} s)")
    _provision_all(ports, keystore, interval_s, timeout)
    return ports


def _sim(run: BenchRun, say: Progress, ph: _Phases) -> None:
    from host_tools.headend.keystore import Keystore
    from host_tools.sim import fleet

    cfg = run.config
    assert cfg.setups is not None
    n = system.meters_needed(cfg.setups) if cfg.setups else 1
    own = cfg.sim_dir is None
    base = Path(tempfile.mkdtemp(prefix="meterctl-bench-")) if own else cfg.sim_dir
    assert base is not None
    base = base.resolve()
    ks_path = base / "keystore.json"
    keystore = Keystore(ks_path)
    run.notes.append(f"virtual meters: {n} (heap {cfg.heap}); component tests on meter 0 "
                     "alone, with the firmware's 900-s load-profile interval; system tests "
                     f"with a {cfg.interval_s}-s interval (meterctl provision --interval "
                     f"{cfg.interval_s})")
    done = False
    try:
        t = time.monotonic()
        run.phase = "set-up: virtual meter 0 (start, flash, provision)"
        # The component tests see the meter as in the field: the firmware's own 15-min
        # interval (a 2-s one would put a LoPA round into every second C6 window).
        rec0 = first_meter(base, keystore, interval_s=None, heap=cfg.heap,
                           timeout=cfg.timeout, say=say)
        ph.mark("fleet", t)
        t = time.monotonic()
        try:
            _run_components(run, rec0["port"], say, ks_path)
        except BenchAborted as e:
            # The system tests run on meters of their own: they still run, and the bench
            # still ends with an error.
            run.add(e.results)
            run.fail(e.test, str(e))
            say(f"component tests aborted in {e.test}: {e}; going on with the system tests")
        finally:
            ph.mark("components", t)
        if not cfg.setups:
            done = True
            return
        t = time.monotonic()
        run.phase = f"set-up: {n} virtual meters (clone, start, provision)"
        fleet.stop(base)
        ports = grow_fleet(base, n, keystore, interval_s=cfg.interval_s, heap=cfg.heap,
                           timeout=cfg.timeout, say=say)
        ph.mark("fleet", t)
        t = time.monotonic()
        try:
            platform = _system_platform(run, ports[0], keystore, True, cfg.timeout)
            _run_system(run, ports, keystore, platform, say, fleet_dir=base)
        finally:
            ph.mark("system", t)
        done = True
    finally:
        say("stopping the virtual meters")
        fleet.stop(base)
        if own and done:
            shutil.rmtree(base, ignore_errors=True)
        elif own:  # the meters' logs (supervisor.log) and flash say what went wrong
            run.notes.append(f"fleet directory kept for inspection: {base}")


def _ports(run: BenchRun, say: Progress, ph: _Phases) -> None:
    from host_tools.headend.keystore import Keystore

    cfg = run.config
    keystore = Keystore(cfg.keystore)
    if cfg.interval_s is not None and cfg.mode == "ports":
        say(f"setting the load-profile interval to {cfg.interval_s} s (meterctl provision)")
        from host_tools.headend.provision import provision

        _quiet_threads(lambda p: provision(p, keystore, interval_s=cfg.interval_s,
                                           timeout=cfg.timeout), cfg.ports, 8)
        run.notes.append(f"load-profile interval set to {cfg.interval_s} s on every board")
    t = time.monotonic()
    try:
        _run_components(run, cfg.ports[0], say, cfg.keystore)
    finally:
        ph.mark("components", t)
    if cfg.mode == "ports":
        t = time.monotonic()
        try:
            platform = _system_platform(run, cfg.ports[0], keystore, False, cfg.timeout)
            _run_system(run, cfg.ports, keystore, platform, say)
        finally:
            ph.mark("system", t)


def _emulated(run: BenchRun, say: Progress, ph: _Phases) -> None:
    comp = _components()
    if not hasattr(comp, "run_emulated"):
        raise BenchError("--emulated: the emulated component tests are not available")
    cfg = run.config
    run.phase = f"component tests on the emulated {cfg.board}"
    t = time.monotonic()
    try:
        res = comp.run_emulated(cfg.board, sizes=cfg.sizes, runs=cfg.runs, quick=cfg.quick,
                                progress=say)
    except BenchAborted as e:
        run.add(e.results)
        raise
    finally:
        ph.mark("components", t)
    run.add(res)
    _platforms(run, res)
    run.notes.append("emulated board: component tests only (no serial line to a head-end)")
    impl = next((r.extra["x25519"][0] for r in res if r.test == "C1" and "x25519" in r.extra),
                "")
    if impl:
        run.notes.append(f"X25519 on the board: {X25519_CODE.get(impl, impl)}")


# x25519.IMPL on the board -> what it means
X25519_CODE = {"armv7e-m": "ARMv7E-M machine code (UMULL/UMAAL: x25519_v7m)",
               "armv6-m": "ARMv6-M machine code (x25519_thumb)",
               "python": "pure Python (no machine code on this port)"}


def run_bench(config: BenchConfig, progress: Progress | None = None) -> BenchRun:
    """Run the bench as configured. Bad options raise BenchError before anything runs; a
    board that fails mid-bench ends it with ``BenchRun.aborted`` set (results kept)."""
    cfg = config.resolved()
    t0 = time.monotonic()

    def say(msg: str) -> None:
        if progress:
            progress(f"[{time.monotonic() - t0:6.1f} s] {msg}")

    run = BenchRun(cfg)
    if cfg.quick:
        run.notes.append(f"--quick: setups {','.join(cfg.setups or [])}, {cfg.runs} runs "
                         f"(the paper: 10), sizes {','.join(map(str, cfg.sizes))}")
    ph = _Phases(run, say)
    try:
        {"sim": _sim, "port": _ports, "ports": _ports, "emulated": _emulated}[cfg.mode](
            run, say, ph)
    except BenchAborted as e:
        run.add(e.results)
        run.fail(e.test, str(e))
    except system.SetupError as e:
        raise BenchError(str(e)) from None
    except FAILURES as e:
        # A board or the fleet failed outside a test (set-up, clean-up): keep what was measured.
        run.fail(run.phase, _why(e))
    except KeyboardInterrupt as e:
        # Ctrl-C: the results measured so far are the user's (the CLI writes them, exit 130)
        run.add(getattr(e, "results", []))
        run.interrupted = True
        run.fail(run.phase, "interrupted (Ctrl-C)")
    finally:
        run.elapsed_s = round(time.monotonic() - t0, 1)
    return run

