"""``meterctl flash``: deploy the image to a board, safely and incrementally.

1. Enter the raw REPL with a soft reset (main.py stops; boot.py runs). A board
   whose flash is mounted at /flash (the stm32 port, before our boot.py is on
   it) has it remounted at / for the session, so the image lands on the flash.
2. Refuse a MicroPython the firmware does not support (version, board, a missing built-in
   module: host_tools/flash/versions.py), with one line naming the firmware to flash.
   Pick the board definition: --board, else the USB VID:PID of the port (2E8A
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

ROMFS. When the board has a ROMFS partition (``vfs.rom_ioctl``, MicroPython >= 1.25: the
virtual board always, a Pico or Pyboard only with a build that reserves one) and the compiled
modules fit it, they go into one ROMFS image written to that partition (as ``mpremote romfs
deploy`` does), mounted at /rom at boot, where the .mpy files run in place instead of being
loaded into the heap (docs/hardware.md, "Memory"). Only what a board runs by name (main.py,
boot.py) and non-module files go to the filesystem; modules a previous flash left there are
removed as stale, since the filesystem comes first on ``sys.path``. The image is written after
the filesystem files are staged and before they are committed; it is skipped when the
partition already holds it. ``romfs=False`` (``meterctl flash --no-romfs``) keeps every file
on the filesystem, as on a board without a partition.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from host_tools.flash import versions
from host_tools.flash.build import (
    FIRMWARE_DIR,
    MPY_CROSS_VERSION,
    VM_ARCH,
    BuildError,
    ImageFile,
    board_for_platform,
    board_for_usb,
    build_image,
    romfs_image,
    rp2_model,
    rp2_pico_fallback,
)
from host_tools.transport.serial import Board, BoardError, BoardInfo, usb_id

MANIFEST = "/.flash-manifest.json"
STAGED = ".new"
ROMFS_STAGED = "/.romfs-image"  # the ROMFS image on its way, as /.romfs-image.new
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

# The stm32 port mounts its flash at /flash, and a micro SD card at /sd, from which it then
# boots (ports/stm32/main.c: the card is the cwd, where boot.py and main.py are looked for).
# The image's paths are absolute, as on a Pico. The board's boot.py
# (board/stm32_pybv11/root/boot.py) remounts the card, else the flash, at / on every boot;
# this does the same for a flash session on a board that does not have that boot.py yet, so
# the image lands where the board boots from.
ROOT_FN = """
def _fl_root():
    import os
    try:
        mounts = dict((mp, fs) for fs, mp in os.mount())
    except Exception:
        return ''
    if '/' in mounts:
        return ''
    for mp in ('/sd', '/flash'):
        if mp in mounts:
            os.umount(mp)
            os.mount(mounts[mp], '/')
            os.chdir('/')
            return 'remounted %s at / for this session' % mp
    return ''
"""


# The board's ROMFS partition 0: its size, or 0 when it has none that flash can write (no
# vfs.rom_ioctl, no partition, or one reached through a block-device object).
ROMFS_FN = """
def _fl_asm():
    try:
        g = {'micropython': __import__('micropython')}
        exec('@micropython.asm_thumb\\ndef f():\\n    nop()\\n', g)
        return 1
    except Exception:
        return 0
def _fl_romfs():
    try:
        import vfs
        if vfs.rom_ioctl(1) < 1:
            return 0
        d = vfs.rom_ioctl(2, 0)
        return 0 if isinstance(d, int) or hasattr(d, 'ioctl') else len(d)
    except Exception:
        return 0
def _fl_romhash(n):
    import vfs
    return binascii.hexlify(hashlib.sha256(memoryview(vfs.rom_ioctl(2, 0))[:n]).digest()).decode()
def _fl_romcopy(p, n, w):
    import vfs
    b = bytearray(-(-1024 // w) * w)
    f = open(p, 'rb')
    off = 0
    while off < n:
        k = f.readinto(b)
        if not k:
            break
        m = k + (-k % w)
        for i in range(k, m):
            b[i] = 255
        r = vfs.rom_ioctl(4, 0, off, memoryview(b)[:m])
        if r:
            f.close()
            return r
        off += k
    f.close()
    return 0 if off == n else -5
"""
ROMFS_CHUNK = 4096
ROMFS_MIN_CHUNK = 256  # the smallest write tried when the board's heap refuses larger ones


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
    romfs_bytes: int = 0  # the ROMFS image's size, 0 when everything is on the filesystem


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
    name = why = None
    if ids is not None:
        name = board_for_usb(ids[0])
        if name is not None:
            # a Pico 2 has a Pico's VID:PID: its machine (RP2350) decides
            name, why = rp2_model(name, info.machine), f"USB VID:PID {ids[0]:04X}:{ids[1]:04X}"
    if name is None or why is None:
        name = board_for_platform(info.platform, info.machine)
        why = f"sys.platform {info.platform!r}"
    if rp2_pico_fallback(name, info.machine):
        why += " (an RP2350: board/rp2_pico2 does not exist yet, so rp2_pico)"
    return name, why


def flash(port: str, *, source: bool = False, board_name: str | None = None,
          firmware_dir: Path = FIRMWARE_DIR, progress: Progress | None = None,
          timeout: float = 10.0, romfs: bool = True) -> FlashReport:
    def step(stage: str, done: int, total: int) -> None:
        if progress:
            progress(stage, done, total)

    with Board(port, timeout=timeout) as b:
        b.enter_raw(soft_reset=True)
        try:
            versions.check(b)  # an unsupported MicroPython: one line, nothing written
        except BoardError:
            b.soft_reset_to_main()  # the old firmware goes on running
            raise
        info = b.info()
        try:
            name, why = (board_name, "--board") if board_name else pick_board(b.port, info)
        except BuildError:
            b.soft_reset_to_main()  # no definition for this board: it goes on running
            raise
        as_source, arch, mode = choose_mode(info, source)
        report = FlashReport(b.port, info, name, mode)
        report.notes.append(f"board definition {name} chosen by {why}")
        step("hash", 0, 1)
        b.exec(_HASH_FN + ROOT_FN + ROMFS_FN, "loading the flash helpers")
        # The board's X25519 code (build.x25519_modules): its machine code where it compiles
        # the inline assembler (rp2, stm32: MICROPY_EMIT_INLINE_THUMB), the Python code where
        # it does not (the virtual board's unix VM, whatever port it presents)
        asm = arch is not None and b.eval("_fl_asm()", "asking for the inline assembler") == 1
        try:
            # a virtual board's CPU is the host's, whatever board it presents: its native code
            # is the VM's (build.VM_ARCH)
            from host_tools.sim.fleet import is_virtual_port

            image = build_image(name, arch, as_source, firmware_dir,
                                VM_ARCH if is_virtual_port(b.port) else None, inline_asm=asm)
        except BuildError:
            b.soft_reset_to_main()  # the old firmware goes on running
            raise

        remounted = b.eval("_fl_root()", "finding the flash filesystem")
        if remounted:
            report.notes.append(str(remounted))
        rom_files: list[ImageFile] = []
        rom_img = b""
        part = int(b.eval("_fl_romfs()", "looking for a ROMFS partition"))
        if romfs and not as_source:
            mods = [f for f in image if f.dest.endswith(".mpy")]
            if part and mods:
                rom_img = romfs_image(mods)
                if len(rom_img) <= part:
                    rom_files = mods
                    image = [f for f in image if f not in mods]
                    report.romfs_bytes = len(rom_img)
                    report.notes.append(f"modules in the ROMFS partition at /rom: "
                                        f"{len(rom_img)} of {part} bytes")
                else:
                    report.notes.append(f"the ROMFS image ({len(rom_img)} B) does not fit the "
                                        f"partition ({part} B): modules go to the filesystem")
                    rom_img = b""
            elif not part:
                report.notes.append("no writable ROMFS partition: modules go to the filesystem")
        image_paths = {f.dest for f in image}
        old, old_rom = _read_manifest(b)
        stale = sorted(p for p in old if p not in image_paths)
        on_board = _board_hashes(b, sorted(image_paths | set(stale)))
        rom_sha = hashlib.sha256(rom_img).hexdigest() if rom_img else ""
        rom_same = bool(rom_img) and b.eval(f"_fl_romhash({len(rom_img)})",
                                            "hashing the ROMFS partition") == rom_sha
        step("hash", 1, 1)

        todo = [f for f in image if on_board.get(f.dest) != f.sha256]
        report.unchanged = sorted(f.dest for f in image if f not in todo)
        stale = [p for p in stale if on_board.get(p) is not None]
        new_rom = {"/rom" + f.dest: f.sha256 for f in rom_files}
        rom_todo = [] if rom_same else [p for p, h in new_rom.items() if old_rom.get(p) != h]
        if rom_img and not rom_same and not rom_todo:
            rom_todo = sorted(new_rom)  # the partition holds something else: all of it anew
        report.unchanged += sorted(p for p in new_rom if p not in rom_todo)
        rom_gone = [] if rom_same else sorted(p for p in old_rom if p not in new_rom)
        # our modules of an earlier flash, when this one puts none in the partition: erased,
        # so that a module this image no longer has cannot still be imported from /rom
        rom_erase = bool(old_rom) and not rom_img and part > 0
        man: dict[str, object] = {"board": name, "files": {f.dest: f.sha256 for f in image}}
        if rom_img:
            man["romfs"] = {"sha256": rom_sha, "size": len(rom_img), "files": new_rom}
        manifest = json.dumps(man, sort_keys=True).encode()
        if (not todo and not stale and old == {f.dest: f.sha256 for f in image}
                and (rom_same or not rom_img) and old_rom == new_rom):
            b.soft_reset_to_main()
            return report

        total = sum(len(f.data) for f in todo) + len(manifest) + (0 if rom_same
                                                                  else len(rom_img))
        sent = 0

        def staged(label: str, base: int) -> Callable[[int, int], None]:
            return lambda n, _t: step(label, base + n, total)

        for f in todo:
            _stage(b, f.dest, f.data, f.sha256, staged(f"write {f.dest}", sent))
            sent += len(f.data)
        _stage(b, MANIFEST, manifest, hashlib.sha256(manifest).hexdigest(),
               staged("write manifest", sent))
        sent += len(manifest)
        if rom_img and not rom_same:
            _write_romfs(b, rom_img, lambda n, _t: step("write ROMFS image", sent + n, total))
            sent += len(rom_img)
        elif rom_erase:
            _erase_romfs(b)
            report.notes.append("the ROMFS partition's image of the earlier flash erased")
        report.bytes_sent = sent

        step("commit", 0, 1)
        renames = [f.dest for f in todo] + [MANIFEST]
        dirs = sorted({p.rsplit("/", 1)[0] for p in stale if p.count("/") > 1}, reverse=True)
        b.exec("import os\n"
               f"for p in {renames!r}:\n    _fl_rm(p)\n    os.rename(p + {STAGED!r}, p)\n"
               f"for p in {stale!r}:\n    _fl_rm(p)\n"
               # a directory the stale modules leave empty would shadow its package in /rom
               f"for d in {dirs!r}:\n    try:\n        os.rmdir(d)\n"
               "    except OSError:\n        pass\n", "committing the new image")
        step("commit", 1, 1)
        report.written = [f.dest for f in todo] + rom_todo
        report.removed = stale + rom_gone
        b.soft_reset_to_main()
        return report


def _read_manifest(b: Board) -> tuple[dict[str, str], dict[str, str]]:
    """(filesystem files, ROMFS files) of the previous flash, path -> sha256."""
    text = b.eval(f"open({MANIFEST!r}).read() if _fl_hash({MANIFEST!r}) else ''",
                  "reading the flash manifest")
    if not text:
        return {}, {}
    try:
        man = json.loads(text)
        files = {str(k): str(v) for k, v in man["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}, {}  # a damaged manifest: treat the board as holding nothing of ours
    try:
        rom = {str(k): str(v) for k, v in man["romfs"]["files"].items()}
    except (KeyError, TypeError, AttributeError):
        rom = {}
    return files, rom


def _unmount_romfs(b: Board) -> tuple[int, int]:
    """Unmount /rom before its partition changes; (partition size, erase block size)."""
    b.exec("import vfs, binascii\ntry:\n    vfs.umount('/rom')\nexcept OSError:\n    pass",
           "unmounting /rom")
    size = int(b.eval("len(vfs.rom_ioctl(2, 0))", "sizing the ROMFS partition"))
    block = int(b.eval("vfs.rom_ioctl(6, 0)", "reading the ROMFS erase block size"))
    return size, block if 0 < block < size else size


def _erase_romfs(b: Board) -> None:
    """Erase the partition's first block: without its header the partition holds no image
    and is not mounted at /rom on the next boot."""
    size, block = _unmount_romfs(b)
    args = f"0, {block}" if block < size else f"{size}"
    r = int(b.eval(f"vfs.rom_ioctl(3, 0, {args})", "erasing the ROMFS partition"))
    if r >= 0:
        r = int(b.eval("vfs.rom_ioctl(5, 0)", "finishing the ROMFS erase") or 0)
    if r < 0:
        raise BoardError(f"{b.port}: the ROMFS partition refused to erase ({r})")


def _write_romfs(b: Board, img: bytes, progress: Callable[[int, int], None]) -> None:
    """Write a ROMFS image to partition 0 through vfs.rom_ioctl (prepare: erase; write in
    chunks; end), then check what the partition holds. The image crosses the serial line as a
    staged file first, checked against its sha256 like every other file, and the board then
    copies it into the partition itself: what the line damages or cuts short is refused
    before the partition, which the previous firmware's modules may still be in, is touched.
    Without room on the filesystem for it, it is written through the line in chunks, as
    mpremote romfs deploy does, and only the check at the end catches damage."""
    sha = hashlib.sha256(img).hexdigest()
    try:
        _stage(b, ROMFS_STAGED, img, sha, progress)
    except BoardError as e:
        if "ENOSPC" not in str(e) and "No space" not in str(e):
            raise
        b.exec(f"_fl_rm({ROMFS_STAGED + STAGED!r})", "removing the staged ROMFS image")
        _write_romfs_chunks(b, img, progress)
        return
    size, block = _unmount_romfs(b)
    min_write = _prepare_romfs(b, img, size, block)
    r = int(b.eval(f"_fl_romcopy({ROMFS_STAGED + STAGED!r}, {len(img)}, {min_write})",
                   "copying the ROMFS image into its partition"))
    if r != 0:
        raise BoardError(f"{b.port}: ROMFS write failed ({r})")
    _finish_romfs(b, img)
    b.exec(f"_fl_rm({ROMFS_STAGED + STAGED!r})", "removing the staged ROMFS image")


def _prepare_romfs(b: Board, img: bytes, size: int, block: int) -> int:
    """Erase what the image needs of the partition; the smallest write it takes."""
    min_write = 4
    if block < size:
        off = 0
        while off < len(img):
            n = -(-min(len(img) - off, 32768) // block) * block
            min_write = int(b.eval(f"vfs.rom_ioctl(3, 0, {off}, {n})", "erasing the partition"))
            off += n
    else:
        min_write = int(b.eval(f"vfs.rom_ioctl(3, 0, {len(img)})", "erasing the partition"))
    if min_write < 0:
        raise BoardError(f"{b.port}: the ROMFS partition refused to erase ({min_write})")
    return min_write


def _write_romfs_chunks(b: Board, img: bytes, progress: Callable[[int, int], None]) -> None:
    size, block = _unmount_romfs(b)
    min_write = _prepare_romfs(b, img, size, block)
    chunk = max(ROMFS_CHUNK, min_write)
    off = 0
    while off < len(img):
        part = img[off:off + chunk]
        part += b"\xff" * (-len(part) % min_write)
        b64 = base64.b64encode(part).decode()
        try:
            r = b.eval(f"vfs.rom_ioctl(4, 0, {off}, binascii.a2b_base64({b64!r}))",
                       f"writing the ROMFS image at {off}")
        except BoardError as e:
            # a small or fragmented heap: the same bytes again in smaller writes
            if "MemoryError" not in str(e) or chunk <= max(min_write, ROMFS_MIN_CHUNK):
                raise
            chunk = max(chunk // 2, min_write)
            continue
        if r != 0:
            raise BoardError(f"{b.port}: ROMFS write at {off} failed ({r})")
        off += len(part)
        progress(min(off, len(img)), len(img))
    _finish_romfs(b, img)


def _finish_romfs(b: Board, img: bytes) -> None:
    r = b.eval("vfs.rom_ioctl(5, 0)", "finishing the ROMFS write")
    if isinstance(r, int) and r < 0:
        raise BoardError(f"{b.port}: finishing the ROMFS write failed ({r})")
    # The partition is memory-mapped flash: it reads back what was written.
    got = b.eval(f"_fl_romhash({len(img)})", "verifying the ROMFS image")
    if got != hashlib.sha256(img).hexdigest():
        raise BoardError(f"{b.port}: the ROMFS partition does not hold the image just written")


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
