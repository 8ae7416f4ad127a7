"""``make typecheck``: mypy over the firmware and each real board's adapter, against that
port's MicroPython stubs.

What mypy sees is what the board holds: the image of ``build.sources(board)`` (firmware/ plus
board/<name>/ as the package ``board``) staged under its on-board paths, with ``/`` and ``/lib``
on the import path as on the device. Errors are reported against the repository's files.

The stubs. micropython-rp2-rpi_pico-stubs and micropython-stm32-stubs (dev extras) both install
top-level ``machine.pyi``, ``time.pyi``, ... into the same site-packages, so the second one
installed overwrites the first's copies of 21 files. Each port therefore gets its own typeshed,
assembled in the cache (``~/.cache/meterctl/typeshed/``) from three layers, later ones winning:

1. mypy's bundled typeshed (the parts of the standard library MicroPython lacks stay complete,
   so the MicroPython stubs' own imports resolve);
2. micropython-stdlib-stubs (MicroPython's ``sys``, ``os``, ``io``, ``builtins``, ...);
3. the port's stubs (``machine``, ``micropython``, ``time``, ``rp2`` or ``pyb``, ...), each also
   registered in the typeshed's VERSIONS so that mypy takes it as part of the platform.

A layer comes from the installed distribution when its files are intact (their sha256 matches
the wheel's RECORD), otherwise from its wheel, of the installed version, fetched once with
``pip download`` (the ordinary client, the project's configured index). Errors inside the stubs
are not ours and mypy keeps them quiet, as it does for any typeshed.

What is checked. The board adapters (``board/<name>/``, and the boot.py they put on the
board) with ``check_untyped_defs``: every function body against the port's stubs, since this is
where the firmware meets ``machine``, ``pyb`` and friends. The firmware with mypy's defaults:
every module it imports must exist on the port (this is how the Pyboard's missing cryptolib
showed; wan.py now falls back to lib/aes128.py), and module-level code and annotated
functions are checked. ``--strict-firmware`` checks the firmware's untyped function bodies
too; it reports mostly inference noise in untyped code (empty containers, dicts of mixed
values), so it is a tool for the firmware's authors, not the gate. ``--no-site-packages``
keeps the host's packages (``cryptography``, ...) out: the board has none of them.

    python -m host_tools.flash.typecheck [--board NAME]... [--strict-firmware]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from host_tools.flash.build import REPO, BuildError, sources

# Board definition -> the stub distribution of its MicroPython port.
BOARD_STUBS = {
    "rp2_pico": "micropython-rp2-rpi_pico-stubs",
    "rp2_pico2": "micropython-rp2-rpi_pico-stubs",  # the same rp2 port and modules (RP2350)
    "stm32_pybv11": "micropython-stm32-stubs",
}
STDLIB_STUBS = "micropython-stdlib-stubs"
# Modules the firmware imports that a port's standard build lacks, so its stubs do too:
# board -> {module: the stub distribution to take it from}. lib/wan.py tries cryptolib first
# and falls back to lib/aes128.py (the PYBV11 builds have none), but mypy resolves an import
# inside a try all the same; cryptolib is extmod code, the same API on every port, so the rp2
# stubs describe it.
EXTRA_MODULES = {
    "stm32_pybv11": {"cryptolib": "micropython-rp2-rpi_pico-stubs"},
}
# The virtual board runs the unix port, for which no stubs exist; its adapter needs the ROM's
# built-in module _vhw. The device tests cover it.
NOT_CHECKED = {"virtual": "the unix port has no stubs; covered by tests_device"}
STAGE_DIR = REPO / "build" / "typecheck"

MYPY_CONFIG = """\
[mypy]
python_version = 3.11
mypy_path = {mypy_path}
custom_typeshed_dir = {typeshed}
no_site_packages = True
explicit_package_bases = True
check_untyped_defs = {strict_firmware}
warn_unused_ignores = True
warn_redundant_casts = True
strict_equality = True
show_error_codes = True
cache_dir = {cache}

# The board adapter, its boot.py and the adapter code the real boards share (lib/hw_common.py):
# every function body.
[mypy-board,board.*,boot,hw_common]
check_untyped_defs = True

# firmware/lib's fallbacks for unit tests on CPython import host packages; the board has none.
[mypy-cryptography.*]
ignore_missing_imports = True
"""


class TypecheckError(Exception):
    """The stubs or mypy could not be set up; the message says what to do."""


@dataclass
class Result:
    board: str
    stubs: str  # "name version"
    files: int
    errors: list[str] = field(default_factory=list)
    output: str = ""


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "meterctl"


# -- the stub layers ------------------------------------------------------------------------
def _record_hash(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _installed_files(dist: metadata.Distribution) -> dict[str, bytes] | None:
    """The distribution's files (RECORD paths -> bytes), or None if any was overwritten."""
    out: dict[str, bytes] = {}
    for f in dist.files or ():
        if ".dist-info" in f.parts[0] or f.hash is None:
            continue
        path = Path(str(dist.locate_file(f)))
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if f.hash.mode != "sha256" or f.hash.value != _record_hash(data):
            return None
        out[f.as_posix()] = data
    return out or None


def _wheel_files(name: str, version: str, wheels: Path) -> dict[str, bytes]:
    wheels.mkdir(parents=True, exist_ok=True)
    stem = name.replace("-", "_").lower()
    found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(f"{stem}-{version}-")]
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--only-binary=:all:", "--dest", str(wheels), f"{name}=={version}"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        found = [w for w in wheels.glob("*.whl")
                 if w.name.lower().startswith(f"{stem}-{version}-")]
        if r.returncode != 0 or not found:
            last = (r.stderr or r.stdout).strip().splitlines()
            raise TypecheckError(
                f"the installed {name} {version} was overwritten by another stub package, and "
                f"its wheel could not be fetched ({last[-1] if last else 'pip download failed'}); "
                "run once with network access")
    out: dict[str, bytes] = {}
    with zipfile.ZipFile(found[0]) as z:
        for info in z.infolist():
            if not info.is_dir() and ".dist-info/" not in info.filename:
                out[info.filename] = z.read(info)
    return out


def _layer(name: str, wheels: Path) -> tuple[str, dict[str, bytes]]:
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise TypecheckError(f"{name} is not installed: make setup (it is a dev extra)") from None
    files = _installed_files(dist)
    if files is None:
        files = _wheel_files(name, dist.version, wheels)
    return dist.version, files


def _mypy_typeshed() -> Path:
    import mypy

    return Path(mypy.__file__).parent / "typeshed"


def _read_versions(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if ":" in line:
            mod, rng = line.split(":", 1)
            out[mod.strip()] = rng.strip()
    return out


def typeshed_for(board: str, cache: Path | None = None) -> tuple[Path, str]:
    """(the assembled typeshed for the board's port, "stubs version"), built once."""
    port_stubs = BOARD_STUBS[board]
    cache = cache or cache_root()
    wheels = cache / "wheels"
    port_version, port_files = _layer(port_stubs, wheels)
    std_version, std_files = _layer(STDLIB_STUBS, wheels)
    import mypy.version

    key = hashlib.sha256(
        f"{port_stubs}={port_version}|{STDLIB_STUBS}={std_version}|mypy={mypy.version.__version__}"
        f"|{sorted(EXTRA_MODULES.get(board, {}).items())}".encode()).hexdigest()[:16]
    out = cache / "typeshed" / f"{board}-{key}"
    label = f"{port_stubs} {port_version}"
    if (out / "stdlib" / "VERSIONS").exists():
        return out, label

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{board}-", dir=out.parent))
    try:
        base = _mypy_typeshed()
        shutil.copytree(base / "stdlib", tmp / "stdlib")
        shutil.copytree(base / "stubs", tmp / "stubs")
        versions = _read_versions((base / "stdlib" / "VERSIONS").read_text())
        # 2. micropython-stdlib-stubs: stdlib/ and stubs/ overlay typeshed's; its helper
        # package _mpy_shed (imported by its stdlib stubs) becomes a stdlib module.
        for rel, data in std_files.items():
            if rel.startswith(("stdlib/", "stubs/")):
                dest = tmp / rel
            elif rel.startswith("_mpy_shed/"):
                dest = tmp / "stdlib" / rel
            else:
                continue
            if rel == "stdlib/VERSIONS":
                for mod, rng in _read_versions(data.decode()).items():
                    versions.setdefault(mod, rng)
                continue
            _write(dest, data)
        versions["_mpy_shed"] = "3.0-"
        # 3. the port's stubs: every top-level module and package joins the stdlib.
        for module, dist_name in EXTRA_MODULES.get(board, {}).items():
            _, extra = _layer(dist_name, wheels)
            port_files.update({rel: data for rel, data in extra.items()
                               if rel.split("/", 1)[0].removesuffix(".pyi") == module})
        for rel, data in port_files.items():
            if not rel.endswith(".pyi"):
                continue
            top = rel.split("/", 1)[0].removesuffix(".pyi")
            if top == "__builtins__":
                continue  # pyright's implicit builtins; mypy reads builtins.pyi
            _write(tmp / "stdlib" / rel, data)
            versions[top] = "3.0-"
        (tmp / "stdlib" / "VERSIONS").write_text(
            "".join(f"{m}: {r}\n" for m, r in sorted(versions.items())))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        for stale in out.parent.glob(f"{board}-*"):  # built for other stub or mypy versions
            if stale != out:
                shutil.rmtree(stale, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out, label


def _write(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)


# -- checking a board -------------------------------------------------------------------------
def stage(board: str, stage_dir: Path) -> dict[str, Path]:
    """Copy the board's image sources to stage_dir under their on-board paths; returns
    {staged path relative to stage_dir: repository file}. Only changed files are rewritten, so
    mypy's cache stays warm."""
    mapping: dict[str, Path] = {}
    for src, dest in sources(board):
        if src.suffix != ".py":
            continue
        rel = dest.lstrip("/")
        mapping[rel] = src
        target = stage_dir / rel
        data = src.read_bytes()
        if not target.exists() or target.read_bytes() != data:
            _write(target, data)
    for p in sorted(stage_dir.rglob("*.py")):
        rel = p.relative_to(stage_dir).as_posix()
        if rel not in mapping:
            p.unlink()
    return mapping


def check(board: str, cache: Path | None = None, stage_root: Path = STAGE_DIR,
          strict_firmware: bool = False) -> Result:
    if board not in BOARD_STUBS:
        raise TypecheckError(f"no stubs known for board {board!r} "
                             f"(known: {', '.join(sorted(BOARD_STUBS))})")
    typeshed, label = typeshed_for(board, cache)
    work = stage_root / board
    root = work / "image"
    mapping = stage(board, root)
    config = work / "mypy.ini"
    config.write_text(MYPY_CONFIG.format(
        mypy_path=f"{root}{os.pathsep}{root / 'lib'}", typeshed=typeshed, cache=work / "cache",
        strict_firmware=strict_firmware))
    files = sorted(mapping)
    r = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config),
                        "--no-error-summary", *files],
                       capture_output=True, text=True, cwd=root)
    res = Result(board, label, len(files))
    lines = []
    for line in (r.stdout + r.stderr).splitlines():
        path, sep, rest = line.partition(":")
        if sep and path in mapping:
            line = f"{_shown(mapping[path])}:{rest}"
        lines.append(line)
        if ": error:" in line:
            res.errors.append(line)
    res.output = "\n".join(lines)
    if r.returncode not in (0, 1) or (r.returncode == 1 and not res.errors):
        raise TypecheckError(f"mypy failed for {board}:\n{res.output}")
    return res


def _shown(p: Path) -> str:
    try:
        return p.relative_to(REPO).as_posix()
    except ValueError:
        return str(p)


def boards() -> list[str]:
    from host_tools.flash.build import board_names

    return [b for b in board_names() if b in BOARD_STUBS]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m host_tools.flash.typecheck",
                                 description="mypy over firmware/ + board/<name> against the "
                                             "port's MicroPython stubs")
    ap.add_argument("--board", action="append", help="only this board (repeatable)")
    ap.add_argument("--strict-firmware", action="store_true",
                    help="check the firmware's untyped function bodies too (not the gate)")
    ap.add_argument("--prepare", action="store_true",
                    help="only assemble the stub trees (fetching what is missing), then stop")
    args = ap.parse_args(argv)
    from host_tools.flash.build import board_names

    names = args.board or boards()
    if args.prepare:
        try:
            for b in names:
                path, label = typeshed_for(b)
                print(f"{b}: {label} in {path}")
        except TypecheckError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    for b in board_names():
        if b not in names and not args.board:
            print(f"{b}: not checked ({NOT_CHECKED.get(b, 'no MicroPython port stubs for it')})")
    failed = 0
    for b in names:
        try:
            res = check(b, strict_firmware=args.strict_firmware)
        except (TypecheckError, BuildError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if res.output:
            print(res.output)
        print(f"{b}: {len(res.errors)} error(s) in {res.files} files against {res.stubs}")
        failed += bool(res.errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
