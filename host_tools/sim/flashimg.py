"""Files on a virtual meter's flash, from the host, on either layout.

A meter under the ``unix`` profile keeps its flash as a host directory (``meter-NNN/fs/``);
under a board profile its flash is one image (``meter-NNN/flash.bin``, described by
``flash-wear.json``) holding the board's own filesystem, littlefs2 or FAT
(board/virtual/host/flashdev.py); a pybv11 meter with a micro SD card (``meter-NNN/sd.bin``)
boots from the card, which then holds the firmware's files: they are read there. The host
reads and writes that image with the same filesystem code the board runs: MicroPython's
VfsLfs2 / VfsFat in the unix-port VM (``micropython`` beside this interpreter), on a plain
block device over the file. Host writes are a programmer's: they stall nothing and count no
erases. Writing to the image of a meter that is running would race its VM: refused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

IMAGE = "flash.bin"
GEOMETRY = "flash-wear.json"

# Runs in the unix-port VM: argv[1] is a JSON job {img, type, bytes, block, ops}; prints one
# JSON list, a result per op (None, a value, or {"errno": n}).
_SCRIPT = r"""
import json, os, sys, vfs, hashlib
job = json.loads(open(sys.argv[1]).read())
class Dev:
    def __init__(s, path, bs, n, rw):
        s.f = open(path, 'r+b' if rw else 'rb'); s.bs = bs; s.n = n
    def readblocks(s, b, buf, off=0):
        s.f.seek(b * s.bs + off); s.f.readinto(buf)
    def writeblocks(s, b, buf, off=0):
        s.f.seek(b * s.bs + off); s.f.write(buf)
    def ioctl(s, op, arg):
        if op == 4: return s.n
        if op == 5: return s.bs
        if op == 6:
            s.f.seek(arg * s.bs)
            for _ in range(s.bs // 256): s.f.write(b'\xff' * 256)
        return 0
rw = job.get('mkfs') or any(op[0] in ('write', 'rm') for op in job['ops'])
dev = Dev(job['img'], job['block'], job['bytes'] // job['block'], rw)
if job.get('mkfs'):
    (vfs.VfsLfs2.mkfs(dev, progsize=256) if job['type'] == 'lfs2' else vfs.VfsFat.mkfs(dev))
if job['type'] == 'lfs2':
    fs = vfs.VfsLfs2(dev, progsize=256)
else:
    fs = vfs.VfsFat(dev)
vfs.mount(fs, '/img', readonly=not rw)
def p(path):
    return '/img/' + path.strip('/')
def rm(path):
    if os.stat(path)[0] & 0x4000:
        for e in os.ilistdir(path):
            rm(path + '/' + e[0])
        os.rmdir(path)
    else:
        os.remove(path)
def mkdirs(path):
    d = ''
    for part in path.strip('/').split('/')[:-1]:
        d += '/' + part
        try:
            os.mkdir('/img' + d)
        except OSError:
            pass
out = []
for op in job['ops']:
    try:
        if op[0] == 'ls':
            out.append([[e[0], 'dir' if e[1] == 0x4000 else 'file', e[3] if len(e) > 3 else 0]
                        for e in os.ilistdir(p(op[1]))])
        elif op[0] == 'exists':
            try:
                os.stat(p(op[1])); out.append(True)
            except OSError:
                out.append(False)
        elif op[0] == 'read':
            with open(p(op[1]), 'rb') as f, open(op[2], 'wb') as g:
                while True:
                    b = f.read(4096)
                    if not b: break
                    g.write(b)
            out.append(None)
        elif op[0] == 'sha256':
            h = hashlib.sha256()
            with open(p(op[1]), 'rb') as f:
                while True:
                    b = f.read(4096)
                    if not b: break
                    h.update(b)
            out.append(''.join('%02x' % c for c in h.digest()))
        elif op[0] == 'write':
            mkdirs(op[1])
            with open(op[2], 'rb') as g, open(p(op[1]), 'wb') as f:
                while True:
                    b = g.read(4096)
                    if not b: break
                    f.write(b)
            out.append(None)
        elif op[0] == 'rm':
            rm(p(op[1])); out.append(None)
        elif op[0] == 'statvfs':
            out.append(list(os.statvfs('/img')))
    except OSError as e:
        out.append({'errno': e.errno})
vfs.umount('/img')
print(json.dumps(out))
"""


class FlashImageError(Exception):
    """A failure reading or writing a meter's flash image, as one printable line."""


def geometry(mdir: Path) -> dict[str, Any] | None:
    """The image's description (type, bytes, erase units), or None: a host-directory meter."""
    try:
        geo: dict[str, Any] = json.loads((mdir / GEOMETRY).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise FlashImageError(f"{mdir / GEOMETRY}: unreadable ({e})") from None
    if not (mdir / IMAGE).exists():
        return None
    return geo


SD_IMAGE = "sd.bin"


def sd_bytes(mdir: Path) -> int:
    """The size of the micro SD card a pybv11 meter boots from (``sd.bin``, FAT, 512-byte
    blocks: flashdev.py SDCard), or 0: none, its files are on the flash. With a card in the
    slot the stm32 port boots from it and meterctl flash puts the firmware there."""
    try:
        prof = json.loads((mdir / "profile.json").read_text())
        n = int((prof.get("sd") or {}).get("bytes", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0
    img = mdir / SD_IMAGE
    return n if n > 0 and img.exists() and img.stat().st_size == n else 0


def sd_writes(mdir: Path) -> tuple[int, int]:
    """(write commands, 512-byte blocks written) to the meter's micro SD card since it was
    new (flashdev.py SDCard's ``sd-writes.bin``); (0, 0) without a card."""
    try:
        raw = (mdir / "sd-writes.bin").read_bytes()
    except FileNotFoundError:
        return 0, 0
    if len(raw) < 16:
        return 0, 0
    return int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:16], "little")


def _micropython() -> str:
    exe = shutil.which("micropython", path=os.path.dirname(sys.executable))
    if exe is None:
        raise FlashImageError("the MicroPython VM (micropython) is not installed; run `make setup`")
    return exe


def _running(mdir: Path) -> bool:
    from host_tools.sim import fleet

    return (mdir / "ctl.sock").exists() and fleet.is_running(mdir)


# The erase units flashdev.py describes: rp2 4 KiB blocks; the F405's FAT sectors 1-4.
def _units(fs_type: str, size: int) -> list[list[int]]:
    return [[4096, size // 4096]] if fs_type == "lfs2" else [[16384, 3], [65536, 1]]


RATED = {"lfs2": (100_000, "W25Q16JV"), "fat": (10_000, "STM32F405 internal flash")}


def format_image(mdir: Path, fs_type: str, size: int) -> None:
    """A blank chip formatted as the board's port formats it (rp2 _boot.py: VfsLfs2 with
    progsize 256; stm32: VfsFat.mkfs, without the factory files), with its description: an
    image for host tools and tests, as a meter would leave it."""
    if fs_type not in RATED:
        raise FlashImageError(f"unknown filesystem type {fs_type!r} (lfs2, fat)")
    if fs_type == "fat" and size != 112 * 1024:
        raise FlashImageError("a FAT image is the F405's 112 KiB (sectors 1-4)")
    if size <= 0 or size % 4096:
        raise FlashImageError(f"image size must be a positive multiple of 4096 (got {size})")
    mdir.mkdir(parents=True, exist_ok=True)
    (mdir / IMAGE).write_bytes(b"\xff" * size)
    rated, chip = RATED[fs_type]
    (mdir / GEOMETRY).write_text(json.dumps({
        "type": fs_type, "bytes": size, "units": _units(fs_type, size),
        "unit": "block" if fs_type == "lfs2" else "sector", "rated_cycles": rated,
        "chip": chip, "created": time.time(), "created_sim": None}))
    (mdir / "flash-wear.bin").unlink(missing_ok=True)
    run(mdir, [], mkfs=True)


def run(mdir: Path, ops: list[list[str]], tries: int = 3, mkfs: bool = False) -> list[Any]:
    """The ops on the meter's image, in one VM run (see _SCRIPT). A read of a running meter's
    image can meet the VM half-way through a commit: it is tried again."""
    geo = geometry(mdir)
    if geo is None:
        raise FlashImageError(f"{mdir}: no flash image ({IMAGE})")
    if (mkfs or any(op[0] in ("write", "rm") for op in ops)) and _running(mdir):
        raise FlashImageError(f"{mdir.name}: running; stop it before writing to its flash image")
    block = 4096 if geo["type"] == "lfs2" else 512
    img, size = mdir / IMAGE, int(geo["bytes"])
    card = 0 if mkfs else sd_bytes(mdir)
    if card:  # the firmware's files are on the card (its FAT), not on the flash
        img, size = mdir / SD_IMAGE, card
    with tempfile.TemporaryDirectory(prefix="flashimg-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"img": str(img), "type": "fat" if card else geo["type"],
                                   "bytes": size, "block": block, "ops": ops,
                                   "mkfs": mkfs}))
        script = Path(tmp) / "flashimg.py"
        script.write_text(_SCRIPT)
        err = ""
        for i in range(tries):
            r = subprocess.run([_micropython(), "-X", "heapsize=1M", str(script), str(job)],
                               capture_output=True, text=True, timeout=60)
            if r.returncode == 0:
                out: list[Any] = json.loads(r.stdout.strip().splitlines()[-1])
                return out
            last = (r.stderr or r.stdout).strip().splitlines()[-1:]
            err = last[0] if last else f"exit {r.returncode}"
            time.sleep(0.1 * (i + 1))
        raise FlashImageError(f"{img}: cannot mount its {'fat' if card else geo['type']} "
                              f"filesystem ({err})")


def _one(mdir: Path, op: list[str]) -> Any:
    res = run(mdir, [op])[0]
    if isinstance(res, dict) and "errno" in res:
        raise FlashImageError(f"{mdir.name}:{op[1]}: {os.strerror(int(res['errno']))}")
    return res


def listdir(mdir: Path, path: str = "/") -> list[tuple[str, str, int]]:
    """(name, "file" | "dir", size) for each entry of ``path`` on the meter's flash."""
    if geometry(mdir) is None:
        base = mdir / "fs" / path.strip("/")
        return [(e.name, "dir" if e.is_dir() else "file", e.stat().st_size if e.is_file() else 0)
                for e in sorted(base.iterdir())]
    return [(str(n), str(t), int(s)) for n, t, s in _one(mdir, ["ls", path])]


def walk(mdir: Path, path: str = "/") -> list[str]:
    """Every file's path under ``path`` on the meter's flash, on either layout (sorted)."""
    out: list[str] = []
    for name, kind, _ in listdir(mdir, path):
        full = path.rstrip("/") + "/" + name
        if kind == "dir":
            out += walk(mdir, full)
        else:
            out.append(full)
    return sorted(out)


def exists(mdir: Path, path: str) -> bool:
    if geometry(mdir) is None:
        return (mdir / "fs" / path.strip("/")).exists()
    return bool(_one(mdir, ["exists", path]))


def read_file(mdir: Path, path: str) -> bytes:
    """A file's bytes from the meter's flash (FileNotFoundError when it has none)."""
    if geometry(mdir) is None:
        return (mdir / "fs" / path.strip("/")).read_bytes()
    with tempfile.TemporaryDirectory(prefix="flashimg-") as tmp:
        out = Path(tmp) / "out"
        res = run(mdir, [["read", path, str(out)]])[0]
        if isinstance(res, dict):
            if res.get("errno") == 2:
                raise FileNotFoundError(f"{mdir.name}:{path}")
            raise FlashImageError(f"{mdir.name}:{path}: {os.strerror(int(res['errno']))}")
        return out.read_bytes()


def read_files(mdir: Path, paths: list[str]) -> dict[str, bytes]:
    """Those of ``paths`` that exist, with their bytes, in one VM run."""
    if geometry(mdir) is None:
        return {p: (mdir / "fs" / p.strip("/")).read_bytes() for p in paths
                if (mdir / "fs" / p.strip("/")).is_file()}
    with tempfile.TemporaryDirectory(prefix="flashimg-") as tmp:
        ops = [["read", p, str(Path(tmp) / str(i))] for i, p in enumerate(paths)]
        res = run(mdir, ops)
        return {p: (Path(tmp) / str(i)).read_bytes() for i, p in enumerate(paths)
                if res[i] is None}


def write_file(mdir: Path, path: str, data: bytes) -> None:
    """Write a file (and its missing parent directories) on a stopped meter's flash."""
    if geometry(mdir) is None:
        dest = mdir / "fs" / path.strip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        return
    with tempfile.TemporaryDirectory(prefix="flashimg-") as tmp:
        src = Path(tmp) / "in"
        src.write_bytes(data)
        _one(mdir, ["write", path, str(src)])


def remove(mdir: Path, path: str) -> None:
    """Remove a file or a whole directory from a stopped meter's flash."""
    if geometry(mdir) is None:
        p = mdir / "fs" / path.strip("/")
        shutil.rmtree(p) if p.is_dir() else p.unlink()
        return
    _one(mdir, ["rm", path])


def sha256s(mdir: Path, paths: list[str]) -> dict[str, str | None]:
    """Each file's sha256 (hex) on an image, None where it is missing, in one VM run."""
    res = run(mdir, [["sha256", p] for p in paths])
    return {p: (r if isinstance(r, str) else None) for p, r in zip(paths, res, strict=True)}
