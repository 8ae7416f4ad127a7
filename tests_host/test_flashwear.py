"""Flash life from erase counts (host_tools/sim/flashwear.py), and the host's access to a
meter's flash image (host_tools/sim/flashimg.py, the board's own VfsLfs2/VfsFat in the unix
VM) with what uses it: the off-switch record (relay.py) and the bench's fleet clone."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import pytest

from host_tools.bench.runner import BenchError, clone_image
from host_tools.sim import flashimg, flashwear, fleet, relay

DAY = 86400.0


def test_flash_life_is_the_worst_unit_at_its_rate() -> None:
    # one block erased 100 times a day, rated 100k: (100000 - 100) / 100 days
    years = flashwear.flash_life([3, 100, 7], DAY, 100_000)
    assert years == pytest.approx((100_000 - 100) / 100 / 365.25)
    # the same erases spread over ten days last ten times as long
    assert flashwear.flash_life([3, 100, 7], 10 * DAY, 100_000) == pytest.approx(
        (100_000 - 100) / 10 / 365.25)
    # the pyboard's sectors at 10k cycles: worn out already
    assert flashwear.flash_life([10_000, 5], DAY, 10_000) == 0.0
    assert flashwear.flash_life([20_000], DAY, 10_000) == 0.0
    assert math.isinf(flashwear.flash_life([0, 0], DAY, 10_000))
    assert math.isinf(flashwear.flash_life([], DAY, 10_000))


@pytest.mark.parametrize(("counts", "seconds", "rated", "msg"), [
    ([1], 0.0, 100, "elapsed time"), ([1], -5.0, 100, "elapsed time"),
    ([1], DAY, 0, "rated cycles"), ([-1], DAY, 100, "negative")])
def test_flash_life_refuses_bad_input(counts: list[int], seconds: float, rated: int,
                                      msg: str) -> None:
    with pytest.raises(flashwear.WearError, match=msg):
        flashwear.flash_life(counts, seconds, rated)


def _wear_files(mdir: Path, counts: list[int], created: float, created_sim: float | None,
                units: list[list[int]], rated: int) -> None:
    mdir.mkdir(parents=True, exist_ok=True)
    (mdir / "flash-wear.json").write_text(json.dumps({
        "type": "lfs2", "bytes": 4096 * len(counts), "units": units, "unit": "block",
        "rated_cycles": rated, "chip": "W25Q16JV", "created": created,
        "created_sim": created_sim}))
    (mdir / "flash-wear.bin").write_bytes(
        flashwear.HEAD.pack(7, 7 * 256, 1_500_000) + struct.pack(f"<{len(counts)}I", *counts))


def test_summary_reads_the_vms_wear_file(tmp_path: Path) -> None:
    _wear_files(tmp_path, [2, 50, 0, 1], 1000.0, None, [[4096, 4]], 100_000)
    s = flashwear.summary(tmp_path, now=1000.0 + 2 * DAY)
    assert s is not None
    assert (s["erases_max"], s["erases_total"], s["worst_unit"]) == (50, 53, 1)
    assert s["erases_per_day_max"] == 25 and s["stall_s"] == 1.5 and s["programs"] == 7
    assert s["life_years"] == pytest.approx((100_000 - 50) / 25 / 365.25, abs=0.01)
    line = flashwear.life_line(s)
    assert line.startswith("flash life at this write rate: ")
    assert "max erases/day on one block: 25" in line and "rated 100k (W25Q16JV)" in line
    assert line.endswith("over 2.0 days of board time)")
    # along the head-end's clock (set-clock) when the image's creation is on it
    _wear_files(tmp_path, [2, 50, 0, 1], 1000.0, 5000.0, [[4096, 4]], 100_000)
    s = flashwear.summary(tmp_path, sim_time=5000.0 + 10 * DAY, now=1000.0 + 2 * DAY)
    assert s is not None and s["erases_per_day_max"] == 5


def test_summary_of_a_directory_meter_is_none_and_a_short_file_an_error(tmp_path: Path) -> None:
    assert flashwear.summary(tmp_path) is None
    _wear_files(tmp_path, [1, 2], 0.0, None, [[4096, 4]], 100_000)  # says 4 units, holds 2
    with pytest.raises(flashwear.WearError, match="short for 4 units"):
        flashwear.summary(tmp_path)


@pytest.mark.parametrize(("fs_type", "size"), [("lfs2", 256 * 1024), ("fat", 112 * 1024)])
def test_image_files_from_the_host(tmp_path: Path, fs_type: str, size: int) -> None:
    m = tmp_path / "meter-000"
    flashimg.format_image(m, fs_type, size)
    assert flashimg.geometry(m) is not None
    flashimg.write_file(m, "/lib/a.py", b"A" * 5000)
    flashimg.write_file(m, "data/os_state.json", b"{}")
    assert fleet.read_file(m, "lib/a.py") == b"A" * 5000
    assert fleet.exists(m, "/data") and not fleet.exists(m, "/nope")
    assert sorted(n for n, _, _ in flashimg.listdir(m, "/")) == ["data", "lib"]
    assert flashimg.listdir(m, "/lib") == [("a.py", "file", 5000)]
    with pytest.raises(FileNotFoundError):
        flashimg.read_file(m, "/nope")
    flashimg.remove(m, "/data")
    assert not fleet.exists(m, "data/os_state.json")
    # the same calls on a directory meter (the unix profile) use fs/
    d = tmp_path / "meter-001"
    (d / "fs").mkdir(parents=True)
    flashimg.write_file(d, "/x/y.txt", b"y")
    assert fleet.read_file(d, "x/y.txt") == b"y" and (d / "fs" / "x" / "y.txt").exists()


def test_image_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(flashimg.FlashImageError, match="unknown filesystem type"):
        flashimg.format_image(tmp_path / "m", "ext4", 4096)
    with pytest.raises(flashimg.FlashImageError, match="multiple of 4096"):
        flashimg.format_image(tmp_path / "m", "lfs2", 1000)
    m = tmp_path / "m2"
    flashimg.format_image(m, "lfs2", 64 * 1024)
    (m / "flash.bin").write_bytes(b"\xff" * 64 * 1024)  # erased: no filesystem
    with pytest.raises(flashimg.FlashImageError, match="cannot mount its lfs2 filesystem"):
        flashimg.read_file(m, "/x")


def test_offswitch_record_from_an_image(tmp_path: Path) -> None:
    m = tmp_path / "meter-000"
    flashimg.format_image(m, "lfs2", 128 * 1024)
    assert relay.offswitch_record(m) is None
    # the firmware's own store writes the record (on CPython here), copied onto the image
    store_dir = tmp_path / "store"
    (store_dir / "data").mkdir(parents=True)
    with relay._firmware_lib():
        relay._store().save(str(store_dir / relay.OS_STATE), {"armed": True, "locked": False,
                                                               "ctr": 9})
    for f in (store_dir / "data").iterdir():
        flashimg.write_file(m, "data/" + f.name, f.read_bytes())
    assert relay.offswitch_record(m) == {"armed": True, "locked": False, "ctr": 9}


def test_clone_of_an_image_meter(tmp_path: Path) -> None:
    src, dest = tmp_path / "m0", tmp_path / "m1"
    flashimg.format_image(src, "lfs2", 256 * 1024)
    files = {"/main.py": b"print(1)\n", "/lib/lopa.mpy": b"M\x06lopa"}
    for p, data in files.items():
        flashimg.write_file(src, p, data)
    flashimg.write_file(src, "/data/cs_keys.json", b"{}")  # the meter's own: never cloned
    manifest = {"board": "rp2_pico",
                "files": {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}}
    flashimg.write_file(src, "/.flash-manifest.json", json.dumps(manifest).encode())
    (src / "flash-wear.bin").write_bytes(bytes(24 + 4 * 64))
    assert clone_image(src, dest) == 256 * 1024
    assert fleet.read_file(dest, "/lib/lopa.mpy") == files["/lib/lopa.mpy"]
    assert not fleet.exists(dest, "/data")
    assert fleet.exists(src, "/data/cs_keys.json")  # the source keeps its own
    assert not (dest / "flash-wear.bin").exists()  # a new chip: its counts start at zero
    flashimg.write_file(src, "/main.py", b"tampered\n")
    with pytest.raises(BenchError, match=r"main\.py: differs from the flash manifest"):
        clone_image(src, tmp_path / "m2")
    assert not (tmp_path / "m2").exists()
