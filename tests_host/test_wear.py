"""The flash-wear calculator (host_tools/reliability/wear.py): write points to a day's
operations, and a day's operations to erases and years on FAT (Pyboard) and littlefs (Pico)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from host_tools.reliability import wear

# one store.save (lib/store.py): open .tmp, 3 writes (header, payload, checksum), remove .bak,
# rename the current copy to .bak, rename .tmp into place
SAVE = {"open": 1, "write": 3, "remove": 1, "rename": 2}


def _points(path: str, n: int) -> list[list[object]]:
    pts: list[list[object]] = []
    for _ in range(n):
        pts += [[0, "open-wb", path + ".tmp"], [0, "write", path + ".tmp"],
                [0, "write", path + ".tmp"], [0, "write", path + ".tmp"],
                [0, "remove", path + ".bak"], [0, "rename", f"{path}>{path}.bak"],
                [0, "rename", f"{path}.tmp>{path}"]]
    return pts


def test_write_points_are_counted_by_record_and_operation() -> None:
    pts = _points("/data/clock.json", 2) + [[0, "write", "/data/log_security.bin"]] * 3
    got = wear.count_points(pts)
    assert got == {"/data/clock.json": {k: 2 * v for k, v in SAVE.items()},
                   "/data/log_security.bin": {"write": 3}}


def test_a_day_scales_interval_writes_by_closes_and_the_rest_by_time() -> None:
    m = wear.Measured(elapsed_s=600, intervals=10, requests=10, ops={
        "/data/energy.json": dict(SAVE), "/data/clock.json": {"open": 2},
        "/data/cs_ctr.json": {"open": 1}})
    day = wear.per_day(m)
    assert day["/data/energy.json"]["open"] == pytest.approx(96 / 10)
    assert day["/data/clock.json"]["open"] == pytest.approx(2 * 86400 / 600)
    assert day["/data/cs_ctr.json"]["open"] == pytest.approx(96 / 10)
    with pytest.raises(wear.WearError, match="no interval closed"):
        wear.per_day(wear.Measured(600, 0, 0, {"/data/profile.bin": {"write": 1}}))
    with pytest.raises(wear.WearError):
        wear.per_day(wear.Measured(0, 1, 0, {}))


def test_fat_wears_the_directory_sector_at_every_sync() -> None:
    # the figure: the clock and the credit saved every minute each: ~2,900 saves a day
    day = {"/data/clock.json": {k: v * 1440.0 for k, v in SAVE.items()},
           "/data/credit.json": {k: v * 1440.0 for k, v in SAVE.items()}}
    life = wear.fat_life(day)
    d = next(v for k, v in life.erases_per_day.items() if "directory sector" in k)
    assert d == 2 * 1440 * 4  # each save: a close, a remove and two renames, each a sync
    assert life.years == pytest.approx(10_000 / d / 365.25)
    assert life.years * 365.25 < 7  # weeks, as issue 17 says: under a week
    # one save a day: ~7 years; the cycles limit what a FAT on this flash can take
    once = wear.fat_life({"/data/x.json": {k: float(v) for k, v in SAVE.items()}})
    assert once.years == pytest.approx(10_000 / 4 / 365.25)
    # a ring's in-place write is one sync (no open point: "r+b")
    ring = wear.fat_life({"/data/log_security.bin": {"write": 96.0}})
    assert max(ring.erases_per_day.values()) == 96


def test_littlefs_spreads_commits_and_copy_on_write_blocks_over_its_free_blocks() -> None:
    day = {"/data/clock.json": {k: v * 288.0 for k, v in SAVE.items()},  # every 300 s
           "/data/log_security.bin": {"write": 100.0}}
    sizes = {"/data/clock.json": 60, "/data/log_security.bin": 128 * 64}
    life = wear.lfs_life(day, sizes, free_blocks=300)
    meta = life.erases_per_day["metadata commits (/data's directory pair)"]
    data = life.erases_per_day["copy-on-write data blocks (rings, large records)"]
    # clock.json inline: a commit of 256 B per close (its bytes with it), one per remove and
    # rename; a block's free room (2048 B) per erase. The ring: 8 KiB in 3 blocks, half of
    # them (+1) rewritten per in-place write, and its commit.
    assert meta == pytest.approx((288 * 256 + 288 * 3 * 256 + 100 * 256) / 2048)
    assert data == pytest.approx(100 * 2)
    assert life.years == pytest.approx(100_000 / ((meta + data) / 300) / 365.25)
    # more free blocks, longer life; a whole-file rewrite writes all its blocks
    assert wear.lfs_life(day, sizes, 600).years == pytest.approx(2 * life.years)
    big = wear.lfs_life({"/data/g.bin": {"open": 10.0}}, {"/data/g.bin": 9000}, 300)
    assert big.erases_per_day["copy-on-write data blocks (rings, large records)"] == 30
    with pytest.raises(wear.WearError):
        wear.lfs_life(day, sizes, 1)
    assert math.isinf(wear.lfs_life({}, {}, 300).years)


def test_a_measurement_round_trips_and_bad_files_get_one_line(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    m = wear.Measured(600, 10, 10, {"/data/energy.json": dict(SAVE)},
                      {"/data/energy.json": 150}, 1200, "t")
    assert wear.Measured.from_json(json.loads(json.dumps(m.to_json()))) == m
    f = tmp_path / "m.json"
    f.write_text(json.dumps(m.to_json()))
    assert wear.main(["--from-json", str(f)]) == 0
    out = capsys.readouterr().out
    assert "Pyboard v1.1" in out and "Pico (littlefs" in out and "Pico 2" in out
    for bad in ("[1, 2]", '{"elapsed_s": 1}', "not json"):
        f.write_text(bad)
        assert wear.main(["--from-json", str(f)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("wear: ") and err.count("\n") == 1
    assert wear.main(["--from-json", str(tmp_path / "missing.json")]) == 2


def test_the_saves_a_short_run_cannot_see_are_added_and_named() -> None:
    m = wear.Measured(600, 10, 10, {"/data/clock.json": {"open": 0.0}}, {}, nvram_writes=5)
    day, notes = wear.with_modelled(m, wear.per_day(m))
    # 192 frames a day / 16384: a save every 85 days
    assert day["/data/cs_ctr.json"]["rename"] == pytest.approx(2 * 192 / 16384)
    # with nvram the clock's and the credit's daily copy is the RAM's snapshot: no file save
    assert day["/data/clock.json"]["open"] == 0 and "/data/credit.json" not in day
    assert len(notes) == 1
    assert wear.record_of("/data/nvram.5") == "/data/nvram" and "/data/nvram" in wear.PER_INTERVAL
    # without nvram, no daily flush; what the run saw is not counted twice
    m2 = wear.Measured(600, 10, 10, {"/data/cs_ctr.json": {"open": 1}})
    day2, notes2 = wear.with_modelled(m2, wear.per_day(m2))
    assert day2["/data/cs_ctr.json"]["open"] == pytest.approx(9.6) and notes2 == []
    assert "/data/clock.json" not in day2


# -- erase counts of a board profile's flash model, and what doctor prints -------------------

def _erased(**kw: object) -> wear.Erased:
    base: dict[str, object] = dict(
        profile="pybv11", nvram=True, real_s=600.0, board_s=86400.0, time_scale=144.0,
        interval_s=900, intervals=96, requests=96, unit="sector",
        units=[16384, 16384, 16384, 65536], rated=10_000, chip="STM32F405",
        erases=[1, 3, 0, 2])
    base.update(kw)
    return wear.Erased(**base)  # type: ignore[arg-type]


def test_erase_counts_scale_by_board_time_and_the_hottest_unit_sets_the_life() -> None:
    e = _erased()
    assert e.per_day() == [1.0, 3.0, 0.0, 2.0]
    lines = e.lines()
    assert "9.1 years" in lines[1]  # 10k / 3 a day / 365.25
    assert "hottest sector 3.00 erases/day" in lines[1]
    # a unit never erased gets no line; each other one its own
    assert [ln.split("sector ")[1].split(" ")[0] for ln in lines[2:]] == ["0", "1", "3"]
    half = _erased(board_s=43200.0)  # the same erases in half the board time: half the life
    assert half.per_day()[1] == 6.0 and "4.6 years" in half.lines()[1]
    assert "unlimited" in _erased(erases=[0, 0, 0, 0]).lines()[1]
    with pytest.raises(wear.WearError):
        _erased(board_s=0.0).per_day()
    assert wear.Erased.from_json(json.loads(json.dumps(e.to_json()))) == e
    with pytest.raises(wear.WearError, match="not an erase measurement"):
        wear.Erased.from_json({"profile": "x"})


def test_from_json_prints_an_erase_measurement(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "e.json"
    f.write_text(json.dumps(_erased().to_json()))
    assert wear.main(["--from-json", str(f)]) == 0
    assert "9.1 years" in capsys.readouterr().out
    f.write_text("{}")
    assert wear.main(["--from-json", str(f)]) == 2
    assert capsys.readouterr().err.startswith("wear: ")


def test_doctor_reads_a_virtual_meters_erase_counters_and_models_a_board(
        tmp_path: Path) -> None:
    from host_tools.doctor import flash_life_line

    mdir = tmp_path / "meter-000"
    mdir.mkdir()
    pty = tmp_path / "pts-7"
    pty.write_text("")
    (mdir / "port").symlink_to(pty)
    (mdir / "flash-wear.json").write_text(json.dumps({
        "type": "fat", "bytes": 114688, "units": [[16384, 3], [65536, 1]], "unit": "sector",
        "rated_cycles": 10000, "chip": "STM32F405", "created": 1000.0, "created_sim": None}))
    import struct
    (mdir / "flash-wear.bin").write_bytes(struct.pack("<QQQ4I", 0, 0, 0, 0, 730, 0, 0))
    line = flash_life_line(str(pty), "pyboard", [tmp_path])
    # 730 erases of one sector in the meter's age (since "created": decades ago here)
    assert line.startswith("flash life at this write rate: ") and "rated 10k" in line
    other = tmp_path / "pts-8"
    other.write_text("")
    modelled = flash_life_line(str(other), "pyboard", [tmp_path])  # not a virtual meter
    assert modelled.startswith("flash life (this firmware's write pattern, modelled): ")
    assert wear.MODELLED["pyboard"].board in modelled
    assert "no write-pattern model" in flash_life_line(str(other), "esp32", [tmp_path])
    (mdir / "flash-wear.json").unlink()
    assert "no flash model" in flash_life_line(str(pty), "linux", [tmp_path])


def test_littlefs_blocks_count_levelled_and_fat_sectors_do_not() -> None:
    # 352 blocks, one erased 100 times in the day, 100 others twice: littlefs levels over
    # the blocks in its rotation (300 erases over 101 blocks), a FAT is its hottest unit
    erases = [100] + [2] * 100 + [0] * 251
    lfs = _erased(profile="rp2-pico", unit="block", units=[4096] * 352, rated=100_000,
                  chip="W25Q16JV", erases=erases)
    assert lfs.levelled and lfs.life_years() == pytest.approx(100_000 / (300 / 101) / 365.25)
    lines = lfs.lines(top=3)
    assert "levelled over the 101 blocks it erased" in lines[1] and "hottest 100" in lines[1]
    assert len(lines) == 2 + 3 + 1 and "98 more blocks" in lines[-1]
    fat = _erased(erases=[100, 2, 0, 0])
    assert not fat.levelled and fat.life_years() == pytest.approx(10_000 / 100 / 365.25)


def test_doctor_levels_a_virtual_picos_erases_over_its_rotation(tmp_path: Path) -> None:
    import struct

    from host_tools.doctor import flash_life_line

    mdir = tmp_path / "meter-000"
    mdir.mkdir()
    pty = tmp_path / "pts-3"
    pty.write_text("")
    (mdir / "port").symlink_to(pty)
    (mdir / "flash-wear.json").write_text(json.dumps({
        "type": "lfs2", "bytes": 4096 * 4, "units": [[4096, 4]], "unit": "block",
        "rated_cycles": 100000, "chip": "W25Q16JV", "created": 0.0, "created_sim": None}))
    # 300 erases on one block and 100 on another, none on the other two
    (mdir / "flash-wear.bin").write_bytes(struct.pack("<QQQ4I", 0, 0, 0, 300, 100, 0, 0))
    line = flash_life_line(str(pty), "rp2", [tmp_path])
    assert "400 erases levelled over the 2 blocks in rotation" in line, line
