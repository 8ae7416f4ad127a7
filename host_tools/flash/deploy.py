"""``meterctl flash``: deploy the image to a board, safely and incrementally.

1. Enter the raw REPL with a soft reset (main.py stops; boot.py runs). A board
   whose flash is mounted at /flash (the stm32 port, before our boot.py is on
   it) has it remounted at / for the session, so the image lands on the flash.
2. Pick the board definition: --board, else the USB VID:PID of the port (2E8A
   rp2_pico, F055 stm32_pybv11), else the board's sys.platform. Read the
   board's sys.implementation: the mpy version and architecture decide between
   .mpy for that architecture and plain source.
3. Build the whole image first; a file that does not compile stops the flash
   before the board is touched.
4. Hash what the board holds (one round trip) and skip every file that is
   already identical.
5. Stage each changed file as ``<path>.new`` and check its sha256 on the board.
6. Commit in one command: rename the staged files into place, remove the
   files of the previous image that the new one no longer has (only files
   listed in our manifest: we never delete what we did not write), and write
   the manifest last.
7. Soft-reset from the friendly REPL, so that main.py runs.

Until step 6, the board's previous firmware is untouched and boots as before.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from host_tools.flash.build import (
    FIRMWARE_DIR,
    MPY_CROSS_VERSION,
    BuildError,
    board_for_platform,
    board_for_usb,
    build_image,
)
from host_tools.transport.serial import Board, BoardError, BoardInfo, usb_id

MANIFEST = "/.flash-manifest.json"
STAGED = ".new"
CHUNK = 512

# Called with (stage, done, total): stage is "hash", "write <path>" or "commit".
Progress = Callable[[str, int, int], None]

_HASH_FN = """
import os, hashlib, binascii
def _fl_hash(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return None
    h = hashlib.sha256()
    b = bytearray(512)
    mv = memoryview(b)
    while True:
        n = f.readinto(b)
        if not n:
            break
        h.update(mv[:n])
    f.close()
    return binascii.hexlify(h.digest()).decode()
def _fl_mkdirs(p):
    cur = ''
    for part in p.split('/')[1:-1]:
        cur += '/' + part
        try:
            os.mkdir(cur)
        except OSError:
            pass
def _fl_rm(p):
    try:
        os.remove(p)
    except OSError:
        pass
"""

# The stm32 port mounts its flash at /flash; the image's paths are absolute, as
# on a Pico. The board's boot.py (board/stm32_pybv11/root/boot.py) remounts it
# at / on every boot; this does the same for a flash session on a board that
# does not have that boot.py yet.
ROOT_FN = """
def _fl_root():
    import os
    try:
        mounts = os.mount()
    except Exception:
        return ''
    for fs, mp in mounts:
        if mp == '/flash':
            os.umount('/flash')
            os.mount(fs, '/')
            os.chdir('/')
            return 'remounted /flash at / for this session'
    return ''
"""


@dataclass
class FlashReport:
    port: str
    board: BoardInfo
    board_name: str
    mode: str  # ".mpy for <arch>" or "source"
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    notes: list[str] = field(default_factory=list)


def choose_mode(info: BoardInfo, source: bool) -> tuple[bool, str | None, str]:
    """(as_source, arch, description) for this board."""
    if source:
        return True, None, "source (--source)"
    if info.mpy_version is None:
        return True, None, "source (the board does not report its .mpy version)"
    if info.mpy_version != MPY_CROSS_VERSION:
        have = "{}.{}".format(*info.mpy_version)
        want = "{}.{}".format(*MPY_CROSS_VERSION)
        return True, None, f"source (the board loads .mpy v{have}, mpy-cross writes v{want})"
    return False, info.arch, f".mpy for {info.arch or 'any architecture (bytecode only)'}"


def pick_board(port: str, info: BoardInfo) -> tuple[str, str]:
    """(board definition, why): by the port's USB VID:PID when the vendor is a
    MicroPython board's, else by the board's sys.platform."""
    ids = usb_id(port)
    if ids is not None:
        name = board_for_usb(ids[0])
        if name is not None:
            return name, f"USB VID:PID {ids[0]:04X}:{ids[1]:04X}"
    return board_for_platform(info.platform), f"sys.platform {info.platform!r}"


def flash(port: str, *, source: bool = False, board_name: str | None = None,
          firmware_dir: Path = FIRMWARE_DIR, progress: Progress | None = None,
          timeout: float = 10.0) -> FlashReport:
    def step(stage: str, done: int, total: int) -> None:
        if progress:
            progress(stage, done, total)

    with Board(port, timeout=timeout) as b:
        b.enter_raw(soft_reset=True)
        info = b.info()
        try:
            name, why = (board_name, "--board") if board_name else pick_board(b.port, info)
        except BuildError:
            b.soft_reset_to_main()  # no definition for this board: it goes on running
            raise
        as_source, arch, mode = choose_mode(info, source)
        report = FlashReport(b.port, info, name, mode)
        report.notes.append(f"board definition {name} chosen by {why}")
        try:
            image = build_image(name, arch, as_source, firmware_dir)
        except BuildError:
            b.soft_reset_to_main()  # the old firmware goes on running
            raise
        image_paths = {f.dest for f in image}

        step("hash", 0, 1)
        b.exec(_HASH_FN + ROOT_FN, "loading the flash helpers")
        remounted = b.eval("_fl_root()", "finding the flash filesystem")
        if remounted:
            report.notes.append(str(remounted))
        old = _read_manifest(b)
        stale = sorted(p for p in old if p not in image_paths)
        on_board = _board_hashes(b, sorted(image_paths | set(stale)))
        step("hash", 1, 1)

        todo = [f for f in image if on_board.get(f.dest) != f.sha256]
        report.unchanged = sorted(f.dest for f in image if f not in todo)
        stale = [p for p in stale if on_board.get(p) is not None]
        manifest = json.dumps({"board": name, "files": {f.dest: f.sha256 for f in image}},
                              sort_keys=True).encode()
        if not todo and not stale and old == {f.dest: f.sha256 for f in image}:
            b.soft_reset_to_main()
            return report

        total = sum(len(f.data) for f in todo) + len(manifest)
        sent = 0

        def staged(label: str, base: int) -> Callable[[int, int], None]:
            return lambda n, _t: step(label, base + n, total)

        for f in todo:
            _stage(b, f.dest, f.data, f.sha256, staged(f"write {f.dest}", sent))
            sent += len(f.data)
        _stage(b, MANIFEST, manifest, hashlib.sha256(manifest).hexdigest(),
               staged("write manifest", sent))
        report.bytes_sent = sent + len(manifest)

        step("commit", 0, 1)
        renames = [f.dest for f in todo] + [MANIFEST]
        b.exec("import os\n"
               f"for p in {renames!r}:\n    _fl_rm(p)\n    os.rename(p + {STAGED!r}, p)\n"
               f"for p in {stale!r}:\n    _fl_rm(p)\n", "committing the new image")
        step("commit", 1, 1)
        report.written = [f.dest for f in todo]
        report.removed = stale
        b.soft_reset_to_main()
        return report


def _read_manifest(b: Board) -> dict[str, str]:
    text = b.eval(f"open({MANIFEST!r}).read() if _fl_hash({MANIFEST!r}) else ''",
                  "reading the flash manifest")
    if not text:
        return {}
    try:
        files = json.loads(text)["files"]
        return {str(k): str(v) for k, v in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}  # a damaged manifest: treat the board as holding nothing of ours


def _board_hashes(b: Board, paths: list[str]) -> dict[str, str | None]:
    got = b.eval(f"{{p: _fl_hash(p) for p in {paths!r}}}", "hashing the board's files")
    return {str(k): v for k, v in dict(got).items()}


def _stage(b: Board, dest: str, data: bytes, sha: str,
           progress: Callable[[int, int], None]) -> None:
    staged = dest + STAGED
    b.exec(f"_fl_mkdirs({dest!r})", f"creating the directory of {dest}")
    b.write_file(staged, data, progress)
    got = b.eval(f"_fl_hash({staged!r})", f"verifying {dest}")
    if got != sha:
        raise BoardError(f"{b.port}: {dest} arrived damaged (sha256 {got} != {sha}); "
                         "the previous firmware is unchanged")
