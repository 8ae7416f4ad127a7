"""The ROMFS image `meterctl flash` writes to a board's ROMFS partition (host_tools/flash/
build.py romfs_image, on mpremote's writer): the real MicroPython VM mounts it as vfs.VfsRom,
lists the image's files under their board paths, and imports the firmware's modules from it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from host_tools.flash import build

from .conftest import ROOT

MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"


def test_the_vm_mounts_the_image_and_imports_from_it(tmp_path: Path) -> None:
    files = [f for f in build.build_image("virtual", "x64") if f.dest.endswith(".mpy")]
    img = build.romfs_image(files)
    assert img[:3] == b"\xd2\xcd\x31"  # the ROMFS header
    (tmp_path / "romfs.img").write_bytes(img)
    script = (
        "import vfs, sys, os, hashlib, binascii\n"
        f"vfs.mount(vfs.VfsRom(open({str(tmp_path / 'romfs.img')!r}, 'rb').read()), '/rom')\n"
        "def walk(d):\n"
        "    for e in os.ilistdir(d):\n"
        "        p = d + '/' + e[0]\n"
        "        if e[1] == 0x4000:\n"
        "            walk(p)\n"
        "        else:\n"
        "            print('F', p[4:], binascii.hexlify(hashlib.sha256(open(p, 'rb').read())"
        ".digest()).decode())\n"
        "walk('/rom')\n"
        "sys.path[:] = ['/rom/lib']\n"
        "import crc16\n"
        "print('CRC', crc16.__file__, crc16.arc(b'123456789'))\n"
    )
    r = subprocess.run([str(MICROPYTHON), "-c", script], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    listed = {ln.split()[1]: ln.split()[2] for ln in r.stdout.splitlines() if ln.startswith("F ")}
    assert listed == {f.dest: f.sha256 for f in files}
    crc = next(ln for ln in r.stdout.splitlines() if ln.startswith("CRC")).split()
    assert crc[1] == "/rom/lib/crc16.mpy"
    # CRC-16/ARC (DSMR P1) of "123456789"
    assert int(crc[2]) == 0xBB3D
