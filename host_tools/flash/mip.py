"""mip packages of the firmware (issue 20, Build 6): ``mpremote mip install`` beside
``meterctl flash``.

Two package files, both with relative URLs, so that any base serves them (a GitHub repository,
``github:ORG/REPO``, or any HTTP server over a checkout):

- ``package.json`` at the repository's root: ``firmware/``, board-independent;
- ``board/<name>/package.json``: that board's definition (its ``__init__.py`` as the package
  ``board``, and its ``root/`` files, such as the Pyboard's ``boot.py``, at the root).

Installed with ``--target /`` they give the same files, at the same places, as
``meterctl flash --source`` (:func:`host_tools.flash.build.sources` is the one mapping): .py
sources, no flash manifest and no ROMFS. They are generated from the tree (``make mip``) and a
host test keeps them equal to it.

Sources compile on the board at every import, and the whole firmware does not fit a Pico's
heap that way (the virtual meter under the rp2-pico profile ends with a MemoryError, as a Pico
would). So :func:`build_index` also writes a mip *index* of compiled packages, the layout of
micropython-lib's (``package/<mpy>/<name>/<version>.json`` listing content hashes,
``file/<hh>/<hash>``): one package per board, ``hasm-meter-<board>``, compiled by the same
mpy-cross as ``meterctl flash`` for the board's architecture (``main.py`` stays source, as
flash leaves it). Served over HTTP (``python -m http.server -d build/mip``):

    mpremote mip install --index http://HOST:8000 --target / hasm-meter-rp2_pico

Each board installs its own package (:func:`index_package` of the definition `meterctl flash`
picks: a Pico's is ``hasm-meter-rp2_pico``). mpremote cannot check that: it picks the index's
directory by the .mpy version alone (``sys.implementation._mpy & 0xFF``), so another board's
package installs, and the meter stops at boot with an ImportError from that board's ``board``
(docs/flash.md, "mip packages").
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from host_tools.flash.build import BOARDS_DIR, FIRMWARE_DIR, REPO, board_names, sources

# boards with hardware behind them, or the virtual board's VM; not the emulated ones (no
# filesystem to install into: their modules are uploaded by the bench)
MIP_BOARDS = tuple(b for b in board_names() if not b.startswith("emulated"))


def _version() -> str:
    import tomllib

    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def firmware_package() -> dict[str, Any]:
    """The root package.json: every file of firmware/, its URL relative to the root."""
    urls = [[dest.lstrip("/"), src.relative_to(REPO).as_posix()]
            for src, dest in sources(MIP_BOARDS[0]) if src.is_relative_to(FIRMWARE_DIR)]
    return {"urls": urls, "version": _version()}


def board_package(board: str) -> dict[str, Any]:
    """board/<board>/package.json: the board's files, their URLs relative to its directory."""
    base = BOARDS_DIR / board
    urls = [[dest.lstrip("/"), src.relative_to(base).as_posix()]
            for src, dest in sources(board) if src.is_relative_to(base)]
    return {"urls": urls, "version": _version()}


def packages() -> dict[Path, dict[str, Any]]:
    """Every package file and its content."""
    out = {REPO / "package.json": firmware_package()}
    for b in MIP_BOARDS:
        out[BOARDS_DIR / b / "package.json"] = board_package(b)
    return out


# The native architecture each board's index package is compiled for: the one its official
# build reports in sys.implementation._mpy, which `meterctl flash` compiles for (RP2040:
# armv6m; RP2350 and STM32F405: armv7emsp, py/persistentcode.h at v1.28.0; the virtual board's
# VM reports the host's). One entry per board of MIP_BOARDS (tests_host/test_mip.py).
INDEX_ARCH: dict[str, str | None] = {"rp2_pico": "armv6m", "rp2_pico2": "armv7emsp",
                                     "stm32_pybv11": "armv7emsp",
                                     "virtual": "x64" if platform.machine() in ("x86_64",
                                                                                "AMD64")
                                     else None}
INDEX_PREFIX = "hasm-meter-"


def index_package(board: str) -> str:
    """The index package of a board definition: the one a board that `meterctl flash` would
    give ``board`` must install (another board's ``board`` package does not import there)."""
    return INDEX_PREFIX + board


def build_index(out: Path, boards: tuple[str, ...] = MIP_BOARDS) -> list[str]:
    """Write the compiled mip index into ``out``; returns the package names."""
    import hashlib

    from host_tools.flash.build import MPY_CROSS_VERSION, build_image

    names = []
    for board in boards:
        name = index_package(board)
        hashes = []
        for f in build_image(board, INDEX_ARCH[board]):
            h = hashlib.sha256(f.data).hexdigest()[:16]
            path = out / "file" / h[:2] / h
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f.data)
            hashes.append([f.dest.lstrip("/"), h])
        pkg = {"hashes": hashes, "version": _version()}
        for version in (_version(), "latest"):
            dest = out / "package" / str(MPY_CROSS_VERSION[0]) / name / f"{version}.json"
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(json.dumps(pkg, indent=1) + "\n")
        names.append(name)
    return names


def text(pkg: dict[str, Any]) -> str:
    """The file's text: one line per file, so that a diff shows a file added or gone."""
    urls = ",\n".join(f"  {json.dumps(u)}" for u in pkg["urls"])
    return f'{{\n "urls": [\n{urls}\n ],\n "version": {json.dumps(pkg["version"])}\n}}\n'



def main() -> None:
    """``make mip``: write the package files, and the compiled index into build/mip."""
    for path, pkg in packages().items():
        path.write_text(text(pkg))
        print(f"wrote {path.relative_to(REPO)} ({len(pkg['urls'])} files)")
    out = REPO / "build" / "mip"
    for name in build_index(out):
        print(f"wrote {out.relative_to(REPO)}: {name}")


if __name__ == "__main__":
    main()
