"""The flash model (board/virtual/host/flashdev.py) on virtual meters under a board profile:
the board's own littlefs (rp2) / FAT (pybv11) on one image, erases that stall and are counted,
power cuts that keep what the chip holds and lose what only the pyboard's RAM cache held, and
the power-cut campaign's write points at block level. boot.py/main.py are absent (rp2) or the
factory files (pybv11): the firmware's adapters for these profiles come from other work."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from host_tools.sim import flashimg, flashwear, fleet
from host_tools.transport.serial import Board, BoardError
from tests_device.conftest import mpremote


@pytest.fixture(autouse=True)
def _virtual_only(real_port: str | None) -> None:
    if real_port:
        pytest.skip("needs the virtual board's flash image and power control")


class Meter:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.dir = fleet.meter_dir(base, 0)

    @property
    def port(self) -> str:
        return str(fleet.meter_status(0, self.base)["port"])

    def run(self, code: str, timeout: float = 30.0) -> str:
        """Code in the raw REPL without a soft reset (which would restart the VM)."""
        with Board(self.port, timeout=timeout, exec_timeout=timeout) as b:
            b.enter_raw(soft_reset=False)
            out = b.exec(code).decode()
            b.exit_raw()
        return out.strip()

    def cut(self, off_s: float = 0.1) -> None:
        boots = fleet.meter_status(0, self.base)["boots"]
        fleet.power_cut(0, self.base, off_s)
        assert fleet.meter_status(0, self.base)["boots"] == boots + 1


def _start(tmp: Path, profile: str) -> Iterator[Meter]:
    base = tmp / "fleet"
    # a Pyboard without its micro SD card: the internal flash is the boot filesystem (the
    # card: test_pybv11.py)
    fleet.start(1, base, timeout=60, profile=profile,
                sd_bytes=0 if profile.startswith("pybv11") else None)
    try:
        yield Meter(base)
    finally:
        fleet.stop(base)


@pytest.fixture(scope="module")
def rp2(tmp_path_factory: pytest.TempPathFactory, real_port: str | None) -> Iterator[Meter]:
    if real_port:
        pytest.skip("virtual board only")
    yield from _start(tmp_path_factory.mktemp("rp2"), "rp2-pico")


@pytest.fixture(scope="module")
def pyb(tmp_path_factory: pytest.TempPathFactory, real_port: str | None) -> Iterator[Meter]:
    if real_port:
        pytest.skip("virtual board only")
    yield from _start(tmp_path_factory.mktemp("pyb"), "pybv11")


def _wear(m: Meter) -> dict[str, Any]:
    w = flashwear.read(m.dir)
    assert w is not None
    return w


# -- rp2: littlefs on the W25Q16JV model ---------------------------------------------------------

def test_rp2_filesystem_is_the_boards_littlefs(rp2: Meter) -> None:
    assert (rp2.dir / "flash.bin").stat().st_size == 1408 * 1024
    st = rp2.run("import os\nprint(os.statvfs('/'), os.getcwd())")
    assert st.startswith("(4096, 4096, 352, ") and st.endswith(" /"), st
    # the image holds littlefs: its superblock's magic at offset 8 of block 0 (or 1)
    img = (rp2.dir / "flash.bin").read_bytes()
    assert b"littlefs" in (img[8:16], img[4096 + 8:4096 + 16])
    geo = json.loads((rp2.dir / "flash-wear.json").read_text())
    assert geo["units"] == [[4096, 352]] and geo["rated_cycles"] == 100000


def test_rp2_synced_file_survives_a_power_cut(rp2: Meter) -> None:
    rp2.run("import os\nwith open('kept.txt', 'w') as f:\n f.write('A' * 5000)\nos.sync()")
    rp2.cut()
    assert rp2.run("print(len(open('kept.txt').read()))") == "5000"
    assert fleet.read_file(rp2.dir, "/kept.txt") == b"A" * 5000
    assert fleet.exists(rp2.dir, "kept.txt") and not fleet.exists(rp2.dir, "nope.txt")


def test_host_writes_to_a_running_meters_image_are_refused(rp2: Meter) -> None:
    with pytest.raises(flashimg.FlashImageError, match="running; stop it before writing"):
        flashimg.write_file(rp2.dir, "/x.txt", b"x")
    with pytest.raises(flashimg.FlashImageError, match="running"):
        flashimg.remove(rp2.dir, "/kept.txt")
    assert not fleet.exists(rp2.dir, "/x.txt")


def test_rp2_rename_onto_an_existing_file_replaces_it(rp2: Meter) -> None:
    out = rp2.run("import os\nfor n in ('1', '2'):\n with open('r' + n, 'w') as f:\n"
                  "  f.write(n)\nos.rename('r1', 'r2')\n"
                  "print(open('r2').read(), 'r1' in os.listdir())")
    assert out == "1 False"


def test_rp2_a_big_write_stalls_and_counts_erases(rp2: Meter) -> None:
    before = _wear(rp2)
    out = rp2.run("import time\nt = time.ticks_ms()\nf = open('big.bin', 'wb')\n"
                  "f.write(bytes(65536))\nf.close()\nprint(time.ticks_diff(time.ticks_ms(), t))")
    after = _wear(rp2)
    erased = sum(after["counts"]) - sum(before["counts"])
    stall = after["stall_s"] - before["stall_s"]
    print(f"64 KiB on rp2: {out} ms in the VM, {erased} erases, {stall:.3f} s of stalls, "
          f"{after['programs'] - before['programs']} programs")
    assert erased >= 16  # 16 data blocks of 4 KiB, each erased before it is programmed
    assert stall >= erased * 0.045 * 0.99  # 45 ms per 4 KiB erase (W25Q16JV tSE typical)
    assert int(out) >= stall * 1000 * 0.99  # the VM waited for all of it


def test_rp2_erase_counts_survive_cuts_and_restarts(rp2: Meter) -> None:
    rp2.run("for i in range(6):\n with open('w%d' % i, 'wb') as f:\n  f.write(bytes(8192))")
    before = _wear(rp2)["counts"]
    assert sum(before) > 0
    rp2.cut()
    assert _wear(rp2)["counts"] == before  # a power-up erases nothing
    fleet.stop(rp2.base)
    assert _wear(rp2)["counts"] == before
    fleet.start(1, rp2.base, timeout=60, profile="rp2-pico")
    assert _wear(rp2)["counts"] == before
    rp2.run("with open('w0', 'wb') as f:\n f.write(bytes(8192))")
    after = _wear(rp2)["counts"]
    assert all(a >= b for a, b in zip(after, before, strict=True)) and sum(after) > sum(before)
    assert "kept.txt" in rp2.run("import os\nprint(os.listdir())")


def _armed(m: Meter, spec: dict[str, Any], work: str, timeout: float = 15) -> str | None:
    """Run ``work`` with the write-point hook armed by ``spec``. The VM takes the arm request
    at its next flash write (no firmware polls its hardware pipe here). None: it was cut."""
    answer: dict[str, Any] = {}

    def arm() -> None:
        answer.update(fleet.ctl(m.dir, {"cmd": "arm-cut", **spec}, timeout=30))

    t = threading.Thread(target=arm)
    t.start()
    time.sleep(0.3)  # the supervisor has passed it down the hardware pipe
    try:
        out: str | None = m.run(work, timeout=timeout)
    except BoardError:
        out = None
    t.join(30)
    assert answer.get("ok"), answer
    return out


def test_rp2_power_cut_at_every_write_point_leaves_a_mountable_filesystem(rp2: Meter) -> None:
    work = ("import os\nwith open('cfg.new', 'w') as f:\n f.write('x' * 600)\n"
            "os.rename('cfg.new', 'cfg.json')\nprint('done')")
    rp2.run("with open('keep.me', 'w') as f:\n f.write('k' * 100)")
    rp2.run(work)  # the files exist: the workload replaces them
    assert _armed(rp2, {"k": -1}, work) == "done"
    time.sleep(0.5)  # the VM's write-point events reach the supervisor
    points = fleet.meter_status(0, rp2.base)["write_cut"]["points"]
    ops = {p[1] for p in points}
    assert points and ops <= {"prog", "erase"} and all(p[2].startswith("block ") for p in points)
    cuts = fleet.meter_status(0, rp2.base)["write_cut"]["cuts"]
    missed = 0
    for k, op, _block in points:
        # torn only where it differs: a program cut half-way (an erase is not torn)
        for torn in (False, True) if op == "prog" else (False,):
            if _armed(rp2, {"k": k, "torn": torn, "off_s": 0.05}, work, timeout=4) == "done":
                # littlefs's writes depend on where its metadata log stands: this run had
                # fewer points than the counting run
                missed += 1
                continue
            deadline = time.monotonic() + 30
            st = fleet.meter_status(0, rp2.base)
            while st["write_cut"]["cuts"] <= cuts or st["vm"] != "on":
                assert time.monotonic() < deadline, f"no cut at write point {k}"
                time.sleep(0.1)
                st = fleet.meter_status(0, rp2.base)
            cuts += 1
            last = st["write_cut"]["last"]
            assert last["n"] == k and last["op"] in ("prog", "erase"), last
            # littlefs mounted again (a boot that could not would have formatted the flash):
            # the old file is there and cfg.json is whole (old or new: 600 x's each)
            out = rp2.run("print(len(open('keep.me').read()), len(open('cfg.json').read()))")
            assert out == "100 600", (k, torn, out)
    assert missed <= 2, missed
    print(f"lfs2: {len(points)} write points ({', '.join(sorted(ops))}), {cuts} cuts "
          f"(plain, and torn on programs; {missed} points not reached), each left a "
          "mountable filesystem with every file whole")


def test_rp2_file_level_write_points_name_files_and_a_cut_there_keeps_littlefs_whole(
        rp2: Meter) -> None:
    """Armed with level "file" (the power-cut campaign's), a board profile's write points are
    the firmware's file operations, named as on the unix profile, and no chip programs; a cut
    at one leaves what littlefs had committed: cfg.json old or new, never torn. Disarmed, the
    chip's points come back."""
    # (the first file's close programs the chip: the VM takes the arm request there)
    work = ("import os\nwith open('prime', 'w') as f:\n f.write('p')\n"
            "with open('cfg.new', 'w') as f:\n f.write('y' * 600)\n"
            "os.rename('cfg.new', 'cfg.json')\nos.remove('cfg.json')\n"
            "with open('cfg.new', 'w') as f:\n f.write('z' * 600)\n"
            "os.rename('cfg.new', 'cfg.json')\nprint('done')")
    rp2.cut()  # a fresh VM run: no hook left armed by an earlier test
    rp2.run("with open('cfg.json', 'w') as f:\n f.write('x' * 600)")
    assert _armed(rp2, {"k": -1, "level": "file", "match": "cfg"}, work) == "done"
    time.sleep(0.5)
    points = [(p[1], p[2]) for p in fleet.meter_status(0, rp2.base)["write_cut"]["points"]]
    assert points == [("open-w", "/cfg.new"), ("write", "/cfg.new"),
                      ("rename", "/cfg.new>/cfg.json"), ("remove", "/cfg.json"),
                      ("open-w", "/cfg.new"), ("write", "/cfg.new"),
                      ("rename", "/cfg.new>/cfg.json")], points
    # a cut at the remove (the 4th point): the renamed file was committed by littlefs
    cuts = fleet.meter_status(0, rp2.base)["write_cut"]["cuts"]
    assert _armed(rp2, {"k": 4, "level": "file", "match": "cfg", "off_s": 0.05}, work,
                  timeout=4) is None
    deadline = time.monotonic() + 30
    st = fleet.meter_status(0, rp2.base)
    while st["write_cut"]["cuts"] <= cuts or st["vm"] != "on":
        assert time.monotonic() < deadline, "no cut at the remove"
        time.sleep(0.1)
        st = fleet.meter_status(0, rp2.base)
    assert st["write_cut"]["last"]["op"] == "remove", st["write_cut"]
    assert rp2.run("print(open('cfg.json').read() == 'y' * 600)") == "True"
    # torn at the second write: half of it in littlefs's open file, never committed
    cuts += 1
    assert _armed(rp2, {"k": 6, "torn": True, "level": "file", "match": "cfg",
                        "off_s": 0.05}, work, timeout=4) is None
    deadline = time.monotonic() + 30
    st = fleet.meter_status(0, rp2.base)
    while st["write_cut"]["cuts"] <= cuts or st["vm"] != "on":
        assert time.monotonic() < deadline, "no cut at the write"
        time.sleep(0.1)
        st = fleet.meter_status(0, rp2.base)
    assert st["write_cut"]["last"]["torn"] is True, st["write_cut"]
    out = rp2.run("import os\nls = os.listdir()\n"
                  "print('cfg.json' in ls, os.stat('cfg.new')[6] if 'cfg.new' in ls else 0)")
    assert out == "False 0", out  # the remove stood; the half write was never committed
    # the file level disarmed: the chip's programs are the points again
    assert _armed(rp2, {"k": -1}, work) == "done"
    time.sleep(0.5)
    ops = {p[1] for p in fleet.meter_status(0, rp2.base)["write_cut"]["points"]}
    assert ops and ops <= {"prog", "erase"}, ops


# -- pybv11: FAT on the F405's sectors, through the RAM cache -----------------------------------

def test_pyb_filesystem_is_the_factory_fat(pyb: Meter) -> None:
    assert (pyb.dir / "flash.bin").stat().st_size == 112 * 1024
    out = pyb.run("import os\nprint(os.getcwd(), os.statvfs('/flash')[:3], sorted(os.listdir()))")
    assert out.startswith("/flash (512, 512, "), out
    assert "['README.txt', 'boot.py', 'main.py']" in out
    img = (pyb.dir / "flash.bin").read_bytes()
    assert img[510:512] == b"\x55\xaa" and b"FAT" in img[54:62]  # a FAT12 boot sector
    geo = json.loads((pyb.dir / "flash-wear.json").read_text())
    assert geo["units"] == [[16384, 3], [65536, 1]] and geo["rated_cycles"] == 10000


def test_pyb_rename_as_vfs_fat_does(pyb: Meter) -> None:
    # extmod/vfs_fat.c fat_vfs_rename(): onto an existing file it removes the file and renames
    # again (succeeds); onto a directory the removal fails: EISDIR.
    out = pyb.run("import os\nfor n in ('1', '2'):\n with open('r' + n, 'w') as f:\n"
                  "  f.write(n)\nos.rename('r1', 'r2')\nprint(open('r2').read())\nos.mkdir('dd')\n"
                  "try:\n os.rename('r2', 'dd')\nexcept OSError as e:\n print(e.errno)")
    assert out.split() == ["1", "21"]


def test_pyb_synced_write_survives_a_power_cut(pyb: Meter) -> None:
    pyb.run("import os\nf = open('kept.txt', 'w')\nf.write('K' * 3000)\nf.close()\nos.sync()")
    pyb.cut()
    assert pyb.run("print(len(open('kept.txt').read()))") == "3000"
    assert fleet.read_file(pyb.dir, "kept.txt") == b"K" * 3000


def test_pyb_unsynced_write_is_lost_by_a_power_cut(pyb: Meter) -> None:
    before = _wear(pyb)
    # no close, no os.sync: the data and the directory entry are in the RAM cache only; the
    # port's flash IRQ erases the cached sector within 512 ms and writes it back only after
    # 5 s without writes: cut in between
    pyb.run("f = open('lost.txt', 'w')\nf.write('L' * 3000)")
    time.sleep(1.0)
    after = _wear(pyb)
    erased = [i for i, (a, b) in enumerate(zip(after["counts"], before["counts"], strict=True))
              if a > b]
    img = (pyb.dir / "flash.bin").read_bytes()
    sizes = (16384, 16384, 16384, 65536)
    blank = [i for i in erased
             if img[sum(sizes[:i]):sum(sizes[:i + 1])] == b"\xff" * sizes[i]]
    # a write to another sector forced the cache back (erase + program); the sector cached
    # last was erased by the IRQ and is blank on the chip until its program
    assert len(blank) == 1, (erased, blank)
    pyb.cut()
    out = pyb.run("import os\nprint(sorted(os.listdir()))")
    assert "lost.txt" not in out, out
    assert "main.py" in out  # a FAT is mounted (the old one, or a factory one if it was wiped)


def test_pyb_close_syncs_and_idle_cache_goes_back_after_5_s(pyb: Meter) -> None:
    pyb.run("f = open('closed.txt', 'w')\nf.write('C' * 1000)\nf.close()")
    # f.close() syncs (FatFs f_sync -> CTRL_SYNC -> storage_flush): on flash at once
    assert fleet.read_file(pyb.dir, "closed.txt") == b"C" * 1000
    # a write left in the cache (the file stays open): the IRQ erases its sector within
    # 512 ms, and programs it back once 5 s passed without writes (flashbdev.c)
    before = _wear(pyb)
    pyb.run("f = open('idle.txt', 'w')\nf.write('I' * 2000)")
    time.sleep(1.5)
    mid = _wear(pyb)
    # (sectors the write left before it went back whole: erased and programmed)
    erased = sum(mid["counts"]) - sum(before["counts"])
    assert erased >= 1 and mid["programs"] - before["programs"] == erased - 1
    time.sleep(6.0)
    after = _wear(pyb)
    assert after["programs"] == mid["programs"] + 1 and after["counts"] == mid["counts"]
    pyb.run("f.close()")


def test_pyb_soft_reset_syncs_the_cache(pyb: Meter) -> None:
    # stm32 main.c: a soft reset runs storage_flush(); the VM exits on one
    pyb.run("import os\nos.mkdir('soft')")
    boots = fleet.meter_status(0, pyb.base)["boots"]
    r = mpremote(pyb.port, "soft-reset")
    assert r.returncode == 0, r.stderr
    assert fleet.meter_status(0, pyb.base)["boots"] > boots
    assert "soft" in pyb.run("import os\nprint(os.listdir())")
    assert fleet.exists(pyb.dir, "soft")


def test_pyb_sector_erase_stalls_by_size(pyb: Meter) -> None:
    before = _wear(pyb)
    out = pyb.run("import os, time\nf = open('s.bin', 'wb')\nf.write(bytes(2048))\n"
                  "t = time.ticks_ms()\nf.close()\nprint(time.ticks_diff(time.ticks_ms(), t))")
    after = _wear(pyb)
    erased = [a - b for a, b in zip(after["counts"], before["counts"], strict=True)]
    stall = after["stall_s"] - before["stall_s"]
    print(f"pybv11 close of a 2 KiB file: {out} ms, erases per sector {erased}, "
          f"{stall:.3f} s of stalls")
    # each sector written back costs its erase (250 ms per 16 KiB, 550 ms per 64 KiB) and
    # its program (16 us per word)
    want = sum(n * (0.25 + 16384 / 4 * 16e-6) for n in erased[:3]) + erased[3] * (
        0.55 + 65536 / 4 * 16e-6)
    assert sum(erased) >= 1 and stall >= want * 0.99, (erased, stall, want)
    assert int(out) >= 250 * 0.99


def test_status_shows_erases_and_flash_life(rp2: Meter) -> None:
    st = fleet.status(rp2.base)[0]
    fl = st["flash"]
    assert fl["erases_max"] >= 1 and fl["erases_total"] >= fl["erases_max"]
    assert fl["rated"] == 100000 and fl["life_years"] is not None and fl["life_years"] > 0
    assert "flash life at this write rate" in flashwear.life_line(fl)
