"""Flash wear: the meter's real write pattern, and the flash life it gives on each board.

The measurement that counts: ``measure_erases()`` (``--profile pybv11|rp2-pico``) runs one
virtual meter of a board profile, its clock ``--time-scale`` times as fast, and reads the
erase counters of its flash model (board/virtual/host/flashdev.py) per sector or block: the
Pyboard's FAT levels nothing (its hottest sector is the life), littlefs levels over the blocks
in its rotation (``Erased``). ``MODELLED`` holds those figures for `meterctl doctor` on a real
board. docs/hardware.md "Flash wear" has the runs.

The older estimate, by write points, in two parts:

- ``measure()`` runs one virtual meter (flashed, provisioned, a steady load, the head-end
  reading it once an interval) for some minutes of real time and counts every persisted
  change the firmware makes, by file and operation, with the ROM's write-point hook (the
  power-cut campaign's, ``arm-cut`` with ``k: -1``; docs/virtual-board.md). Events that the
  interval drives (energy registers, load profile, metrology log) are counted per interval
  close, the WAN counters per head-end request, the rest per second; ``per_day()`` scales each
  to a day (96 intervals of 15 minutes, one READ an interval).
- ``fat_life()`` and ``lfs_life()`` turn a day's operations into erases a day and years of
  flash life with a stated model of each board's filesystem (docs/hardware.md, "Flash wear"):

  FAT on a Pyboard's internal flash (ports/stm32/flashbdev.c, extmod/vfs_fat.c, v1.28.0): the
  block device caches one flash sector in RAM; every close of a file written, every rename,
  remove and mkdir ends in a sync (FatFs sync_fs -> CTRL_SYNC) that writes the cached sector
  back, i.e. erases it, and moving to another sector does the same. No wear levelling: the
  sector holding /data's directory entries is erased by every one of those operations; the
  first sector (the FAT and the root directory) by each that allocates or frees clusters
  (a file created or truncated, a file removed). Rated 10,000 cycles (STM32F405 datasheet).

  littlefs on a Pico (ports/rp2/modules/_boot.py: VfsLfs2(progsize=256) on 4 KiB blocks;
  extmod/vfs_lfsx.c: cache 1024 B, block_cycles 100; lib/littlefs 2.11: files up to 512 B
  inline in their directory's metadata): each operation is a commit appended to the /data
  directory's metadata block in 256-byte program units (the inline file's bytes with it),
  and the block is erased when it is full, i.e. a commit costs its size / the block's free
  room (half a block: littlefs splits a directory at that). A write into a larger file is
  copy-on-write: the block written and every block after it in the file are written anew
  (an in-place ring slot: on average half the file's blocks). littlefs allocates blocks
  round-robin over the whole device and moves a metadata pair every 100 erases, so the
  erases spread over the free blocks. Rated 100,000 cycles (Winbond W25Q16JV; the Pico 2's
  W25Q32RV the same).

Power cuts between two of the figures change nothing here; the flash model of the board
profiles (once merged) counts real erases and will replace these estimates.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SECONDS_PER_DAY = 86400
INTERVALS_PER_DAY = 96  # 15-minute load-profile intervals
POLLS_PER_DAY = 96  # the head-end reads each meter once an interval
YEAR_DAYS = 365.25

# Files whose writes the interval close causes, and those a head-end request causes: scaled
# by events, not by time (the measurement runs short intervals to see many of them).
PER_INTERVAL = ("/data/energy.json", "/data/profile.bin", "/data/log_metrology.bin",
                "/data/nvram")  # the RAM's snapshots: when a staged ring's window is full
PER_REQUEST = ("/data/cs_ctr.json",)


class WearError(Exception):
    """A measurement or a calculation that cannot be made; the message says why."""


def record_of(path: str) -> str:
    """The file a write point belongs to: a store record's .tmp/.bak are the record's; a
    rename "a>b" is a's."""
    p = path.split(">", 1)[0]
    for suffix in (".tmp", ".bak"):
        if p.endswith(suffix):
            return p[: -len(suffix)]
    if p.startswith("/data/nvram."):  # the snapshot files, one record (lib/nvrec.py)
        return "/data/nvram"
    return p


@dataclass
class Measured:
    """What one run counted: write points by file and operation over `elapsed_s`."""

    elapsed_s: float
    intervals: int  # interval closes in the run
    requests: int  # head-end requests (READs) in the run
    ops: dict[str, dict[str, int]]  # record -> op ("open", "write", "rename", "remove", ...) -> n
    sizes: dict[str, int] = field(default_factory=dict)  # record -> bytes on flash
    nvram_writes: int = 0
    label: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "elapsed_s": self.elapsed_s, "intervals": self.intervals,
                "requests": self.requests, "ops": self.ops, "sizes": self.sizes,
                "nvram_writes": self.nvram_writes}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Measured:
        try:
            return cls(float(d["elapsed_s"]), int(d["intervals"]), int(d["requests"]),
                       {str(k): {str(o): int(n) for o, n in v.items()}
                        for k, v in d["ops"].items()},
                       {str(k): int(v) for k, v in d.get("sizes", {}).items()},
                       int(d.get("nvram_writes", 0)), str(d.get("label", "")))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise WearError(f"not a wear measurement: {e!r}") from None


def count_points(points: list[list[Any]]) -> dict[str, dict[str, int]]:
    """Write points ([n, op, path] from the supervisor) by record and operation; an open for
    writing counts as "open" whatever its mode."""
    out: dict[str, dict[str, int]] = {}
    for _, op, path in points:
        o = "open" if str(op).startswith("open") else str(op)
        rec = out.setdefault(record_of(str(path)), {})
        rec[o] = rec.get(o, 0) + 1
    return out


def per_day(m: Measured) -> dict[str, dict[str, float]]:
    """Each record's operations scaled to a day: by interval closes, by head-end requests, or
    by time (see PER_INTERVAL, PER_REQUEST)."""
    if m.elapsed_s <= 0:
        raise WearError("a measurement of no time")
    out: dict[str, dict[str, float]] = {}
    for rec, ops in m.ops.items():
        if rec in PER_INTERVAL:
            if m.intervals <= 0:
                raise WearError(f"{rec} was written but no interval closed: measure longer")
            k = INTERVALS_PER_DAY / m.intervals
        elif rec in PER_REQUEST:
            k = POLLS_PER_DAY / m.requests if m.requests else 0.0
        else:
            k = SECONDS_PER_DAY / m.elapsed_s
        out[rec] = {op: n * k for op, n in ops.items()}
    return out


# one store.save (firmware/lib/store.py): .tmp opened and written (header, payload, checksum),
# .bak removed, the current copy renamed to .bak, .tmp renamed into place
SAVE_OPS = {"open": 1.0, "write": 3.0, "remove": 1.0, "rename": 2.0}
WAN_RESERVE = 16384  # tasks/cs_security.py: the counters persisted once per RESERVE frames


def with_modelled(m: Measured, day: dict[str, dict[str, float]]
                  ) -> tuple[dict[str, dict[str, float]], list[str]]:
    """The day plus the saves a short run cannot see (each named in the lines returned): the
    WAN counters (a READ an interval: 96 frames a day each way). With nvram the clock's and
    the credit's daily flush is the RAM's snapshot, which the staged rings take more often
    (counted by interval: /data/nvram)."""
    out = {k: dict(v) for k, v in day.items()}
    notes = []
    extra = {"/data/cs_ctr.json": 2 * POLLS_PER_DAY / WAN_RESERVE}
    for rec, saves in extra.items():
        have = out.get(rec, {}).get("open", 0.0)
        if have < saves:
            ops = out.setdefault(rec, {})
            for op, n in SAVE_OPS.items():
                ops[op] = ops.get(op, 0.0) + n * (saves - have)
            notes.append(f"  {rec:28s} {saves - have:.0f} saves/day modelled (not in the run)")
    return out, notes


def _sessions(ops: dict[str, float]) -> float:
    # Files opened for writing and closed again: the opens; a ring opened "r+b" (no open
    # point) is one session per write.
    return ops.get("open", 0.0) or ops.get("write", 0.0)


@dataclass(frozen=True)
class Life:
    board: str
    erases_per_day: dict[str, float]  # where -> erases a day
    cycles: int
    spread_over: int  # sectors/blocks the hottest figure's erases are shared by (1: none)
    years: float

    def lines(self) -> list[str]:
        hot = max(self.erases_per_day.values(), default=0.0)
        if self.spread_over == 1:
            how = f"hottest sector {hot:.0f} erases/day, no wear levelling"
        else:
            total = sum(self.erases_per_day.values())
            how = (f"{total:.0f} erases/day spread over {self.spread_over} blocks: "
                   f"{total / self.spread_over:.2f} per block")
        life = (f"{self.years:.1f} years" if self.years >= 1
                else f"{self.years * YEAR_DAYS:.0f} days")
        out = [f"{self.board}: {life} at {self.cycles} cycles ({how})"]
        for where, n in sorted(self.erases_per_day.items(), key=lambda kv: -kv[1]):
            out.append(f"  {n:10.1f} erases/day  {where}")
        return out


def years_at(cycles: int, per_day_per_unit: float) -> float:
    return math.inf if per_day_per_unit <= 0 else cycles / per_day_per_unit / YEAR_DAYS


def fat_life(day: dict[str, dict[str, float]], cycles: int = 10_000,
             board: str = "Pyboard v1.1 (FAT, internal flash)") -> Life:
    """Erases a day of the sectors a FAT on a Pyboard's internal flash wears (module doc)."""
    directory = fat_sector = data = 0.0
    for ops in day.values():
        s = _sessions(ops)
        syncs = s + ops.get("rename", 0.0) + ops.get("remove", 0.0) + ops.get("mkdir", 0.0)
        directory += syncs  # every sync rewrites the sector of /data's directory entries
        fat_sector += ops.get("open", 0.0) + ops.get("remove", 0.0) + ops.get("mkdir", 0.0)
        data += s
    erases = {"/data's directory sector (every close, rename, remove)": directory,
              "sector 1: FAT and root directory (files created, truncated, removed)":
                  fat_sector,
              "file data sectors (every close of a file written; shared)": data}
    return Life(board, erases, cycles, 1, years_at(cycles, max(erases.values())))


LFS_BLOCK = 4096
LFS_PROG = 256
LFS_INLINE_MAX = 512
LFS_TAG = 48  # a commit's tags and CRC, roughly (name, struct, CRC)


def lfs_life(day: dict[str, dict[str, float]], sizes: dict[str, int], free_blocks: int,
             cycles: int = 100_000, board: str = "Pico (littlefs, W25Q16JV)") -> Life:
    """Erases a day on a littlefs filesystem, spread over its free blocks (module doc)."""
    if free_blocks < 2:
        raise WearError("littlefs needs free blocks to wear-level over")
    room = LFS_BLOCK // 2  # a metadata block's free room: it is compacted (erased) when full
    meta = data = 0.0
    for rec, ops in day.items():
        size = sizes.get(rec, 0)
        inline = size <= LFS_INLINE_MAX
        s = _sessions(ops)
        commit = math.ceil((LFS_TAG + (size if inline else 0)) / LFS_PROG) * LFS_PROG
        small = math.ceil(LFS_TAG / LFS_PROG) * LFS_PROG
        meta += s * commit / room
        meta += (ops.get("rename", 0.0) + ops.get("remove", 0.0) + ops.get("mkdir", 0.0)) \
            * small / room
        if not inline:
            blocks = max(1, math.ceil(size / (LFS_BLOCK - 8)))
            # a whole-file rewrite ("wb") writes all its blocks; an in-place write, on average
            # the block written and those after it: (blocks + 1) / 2
            per = blocks if ops.get("open", 0.0) else (blocks + 1) / 2
            data += s * per
    erases = {"metadata commits (/data's directory pair)": meta,
              "copy-on-write data blocks (rings, large records)": data}
    total = meta + data
    return Life(board, erases, cycles, free_blocks, years_at(cycles, total / free_blocks))


# -- the measurement ------------------------------------------------------------------------

@contextlib.contextmanager
def _meter(base: Path, nvram: bool, firmware: Path | None, interval_s: int
           ) -> Iterator[tuple[Path, str, Any]]:
    from host_tools.flash.build import FIRMWARE_DIR
    from host_tools.flash.deploy import flash
    from host_tools.headend.keystore import Keystore
    from host_tools.headend.provision import provision
    from host_tools.sim import fleet

    # the unix profile: the write points it counts name the files written
    recs = fleet.start(1, base, nvram_bytes=4096 if nvram else 0, profile="unix")
    try:
        port = str(recs[0]["port"])
        fleet.set_wave(0, {"vrms": 230.0, "irms": 8.0, "pf": 0.95}, base)
        flash(port, firmware_dir=firmware or FIRMWARE_DIR, timeout=30.0)
        ks = Keystore(base / "keystore.json")
        provision(port, ks, force=True, interval_s=interval_s, timeout=30.0)
        yield fleet.meter_dir(base, 0), port, ks
    finally:
        fleet.stop(base)


def measure(minutes: float, *, nvram: bool, firmware: Path | None = None,
            interval_s: int = 60, base: Path | None = None, label: str = "",
            say: Any = print) -> Measured:
    """Run a virtual meter for `minutes` and count its writes (module doc)."""
    from host_tools.headend import wire
    from host_tools.headend.client import open_link
    from host_tools.sim import fleet

    if minutes <= 0 or interval_s < 5:
        raise WearError("measure at least a moment, with intervals of 5 s or more")
    with contextlib.ExitStack() as stack:
        if base is None:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wear-")))
        mdir, port, ks = stack.enter_context(_meter(base, nvram, firmware, interval_s))
        link = stack.enter_context(open_link(port, ks, None, 10.0))
        time.sleep(interval_s * 1.5)  # past the boot's own writes and the first close
        points: list[list[Any]] = []
        nv = 0
        requests = 0
        # Re-armed each minute: the supervisor keeps at most 1000 points of a counting run.
        t0 = time.monotonic()
        end = t0 + minutes * 60
        fleet.ctl(mdir, {"cmd": "arm-cut", "k": -1})
        next_poll = t0
        while True:
            now = time.monotonic()
            if now >= next_poll:
                link.request(wire.K_READ)
                requests += 1
                next_poll += interval_s
            time.sleep(max(0.0, min(60.0, end - now, next_poll - now)))
            last = time.monotonic() >= end
            st = fleet.ctl(mdir, {"cmd": "arm-cut", "k": 0})
            for p in st["write_cut"]["points"]:
                if str(p[2]).startswith("/nvram"):
                    nv += 1
                else:
                    points.append(p)
            if last:
                break
            fleet.ctl(mdir, {"cmd": "arm-cut", "k": -1})
        elapsed = time.monotonic() - t0
        ops = count_points(points)
        closes = ops.get("/data/energy.json", {}).get("open", 0)
        sizes = {}
        for rec in ops:
            f = mdir / "fs" / rec.lstrip("/")
            if f.is_file():
                sizes[rec] = f.stat().st_size
        say(f"measured {label or ('with nvram' if nvram else 'without nvram')}: "
            f"{elapsed:.0f} s, {closes} intervals closed, {requests} requests")
        return Measured(elapsed, closes, requests, ops, sizes, nv, label)


@dataclass
class Erased:
    """What one run of a board profile's flash model erased: counts per erase unit over
    `board_s` seconds of the meter's clock (the run's real time x the time scale)."""

    profile: str
    nvram: bool
    real_s: float
    board_s: float
    time_scale: float
    interval_s: int
    intervals: int  # interval closes in the run (the load profile's new records)
    requests: int
    unit: str
    units: list[int]  # bytes of each erase unit
    rated: int
    chip: str
    erases: list[int]  # per unit, in the run
    label: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Erased:
        try:
            return cls(str(d["profile"]), bool(d["nvram"]), float(d["real_s"]),
                       float(d["board_s"]), float(d["time_scale"]), int(d["interval_s"]),
                       int(d["intervals"]), int(d["requests"]), str(d["unit"]),
                       [int(x) for x in d["units"]], int(d["rated"]), str(d["chip"]),
                       [int(x) for x in d["erases"]], str(d.get("label", "")))
        except (KeyError, TypeError, ValueError) as e:
            raise WearError(f"not an erase measurement: {e!r}") from None

    def per_day(self) -> list[float]:
        """Erases a day of each unit: by the board's time."""
        if self.board_s <= 0:
            raise WearError("a measurement of no time")
        return [n * SECONDS_PER_DAY / self.board_s for n in self.erases]

    @property
    def levelled(self) -> bool:
        """littlefs (a Pico's blocks) levels wear over the whole device: its allocator goes
        round the blocks and it moves a metadata pair after block_cycles (100) erases
        (extmod/vfs_lfsx.c), so a day's hottest block is not where the chip wears out: the
        erases spread over the blocks in its rotation, those the run erased at all (the files
        that never change, the firmware's, stay put). A FAT (a Pyboard's sectors) levels
        nothing: its hottest sector is the life."""
        return self.unit == "block"

    def rotation(self) -> int:
        return sum(1 for n in self.erases if n)

    def life_years(self) -> float:
        day = self.per_day()
        if self.levelled:
            return years_at(self.rated, sum(day) / max(1, self.rotation()))
        return years_at(self.rated, max(day, default=0.0))

    def lines(self, top: int = 6) -> list[str]:
        day = self.per_day()
        hot = max(day, default=0.0)
        span = (f"{self.real_s / 60:.0f} min real x {self.time_scale:g} = "
                f"{self.board_s / 3600:.1f} h of board time, {self.intervals} intervals of "
                f"{self.interval_s} s, {self.requests} READs")
        if self.levelled:
            n = max(1, self.rotation())
            how = (f"{sum(day):.0f} erases/day levelled over the {n} {self.unit}s it erased: "
                   f"{sum(day) / n:.2f} each; the day's hottest {hot:.0f}")
        else:
            how = f"hottest {self.unit} {hot:.2f} erases/day, no wear levelling"
        out = [f"== {self.label or self.profile} ({'with' if self.nvram else 'without'} nvram; "
               f"{span})",
               f"  {self.profile}: {life_text(self.life_years())} at {self.rated // 1000}k "
               f"cycles ({self.chip}; {how}; the flash model's counters)"]
        ranked = sorted((i for i, n in enumerate(self.erases) if n), key=lambda i: -day[i])
        for i in sorted(ranked[:top]):
            out.append(f"  {day[i]:10.2f} erases/day  {self.unit} {i} ({self.units[i] // 1024}"
                       f" KiB; {self.erases[i]} in the run)")
        if len(ranked) > top:
            out.append(f"  ({len(ranked) - top} more {self.unit}s erased, each at most "
                       f"{day[ranked[top]]:.2f}/day)")
        return out


def life_text(years: float) -> str:
    if years == math.inf:
        return "unlimited (no erases)"
    return f"{years:.1f} years" if years >= 1 else f"{years * YEAR_DAYS:.0f} days"


def _unit_list(geo: dict[str, Any]) -> list[int]:
    out: list[int] = []
    for size, n in geo["units"]:
        out += [int(size)] * int(n)
    return out


PYB_HEAP = "282K"

# The Pyboard rig: the firmware on the card (the profile's; it does not fit the 112 KiB FAT
# beside /data), /data on the internal flash's FAT, as on a board whose firmware is frozen or
# in ROMFS (docs/hardware.md "Flash wear"): boot.py mounts the flash's own VFS at /data.
RIG = """
# wear rig (host_tools/reliability/wear.py): /data on the internal flash
_m = {_mp: _fs for _fs, _mp in os.mount()}
if "/flash" in _m:
    os.umount("/flash")
    os.mount(_m["/flash"], "/data")
del _m
"""


def _data_on_internal_flash(port: str) -> None:
    from host_tools.transport.serial import Board

    with Board(port, timeout=30.0) as b:
        b.enter_raw()
        b.exec(f"f = open('/boot.py', 'a')\nf.write({RIG!r})\nf.close()\n",
               "installing the wear rig")
        b.soft_reset_to_main()


def measure_erases(profile: str, minutes: float, *, time_scale: float = 96.0,
                   interval_s: int = 900, nvram: bool | None = None,
                   firmware: Path | None = None, base: Path | None = None, label: str = "",
                   say: Any = print) -> Erased:
    """Run one virtual meter of `profile` (its flash model: FAT on a Pyboard's sectors,
    littlefs on a Pico's blocks) with its clock `time_scale` times as fast as real time, a
    READ each interval, and count the erases of each unit (flash-wear.bin) after the set-up."""
    from host_tools.flash.build import FIRMWARE_DIR
    from host_tools.flash.deploy import flash
    from host_tools.headend import wire
    from host_tools.headend.client import open_link
    from host_tools.headend.keystore import Keystore
    from host_tools.headend.provision import provision
    from host_tools.sim import flashwear, fleet, profiles

    if minutes <= 0 or time_scale <= 0 or interval_s < 5:
        raise WearError("measure at least a moment, a time scale > 0, intervals of 5 s or more")
    with contextlib.ExitStack() as stack:
        if base is None:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wear-")))
        # a Pyboard's firmware needs more than the official build's heap (docs/hardware.md
        # "Micro SD card"): the room test_pybv11.py gives it, an rp2-pico meter's VM heap
        recs = fleet.start(1, base, profile=profile, time_scale=time_scale,
                           heap=PYB_HEAP if profile.startswith("pyb") else None,
                           nvram_bytes=None if nvram is None else (4096 if nvram else 0))
        stack.callback(fleet.stop, base)
        mdir = fleet.meter_dir(base, 0)
        port = str(recs[0]["port"])
        fleet.set_wave(0, {"vrms": 230.0, "irms": 8.0, "pf": 0.95}, base)
        flash(port, firmware_dir=firmware or FIRMWARE_DIR, timeout=60.0)
        if profile.startswith("pyb"):
            _data_on_internal_flash(port)
        ks = Keystore(base / "keystore.json")
        # the clock is the virtual RTC's, time_scale times as fast: not set from the host's
        provision(port, ks, force=True, interval_s=interval_s, set_time=False, timeout=60.0)
        # a Pyboard's first boot on its internal flash creates /data's rings 64 bytes at a
        # time, a sector erase at nearly each: minutes of stalls before it answers
        link = stack.enter_context(open_link(port, ks, None, 600.0))
        link.request(wire.K_READ)
        step = interval_s / time_scale  # real seconds per interval
        time.sleep(max(5.0, 1.5 * step))  # past the boot's own writes and the first close
        before = flashwear.read(mdir)
        if before is None:
            raise WearError(f"profile {profile} has no flash model (use rp2-pico or pybv11)")
        first = link.request(wire.K_READ)
        t0 = time.monotonic()
        end = t0 + minutes * 60
        requests = 1
        next_poll = t0 + step
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if now >= next_poll:
                link.request(wire.K_READ)
                requests += 1
                next_poll += step
            time.sleep(max(0.0, min(end - now, next_poll - now)))
        last = link.request(wire.K_READ)
        real = time.monotonic() - t0
        after = flashwear.read(mdir)
        assert after is not None
        closes = int(last["interval"]["index"]) - int(first["interval"]["index"])
        board = float(int(last["clock"]) - int(first["clock"]))
        nv = nvram if nvram is not None else bool(profiles.get(profile)["nvram_bytes"])
        e = Erased(profile, nv, real, board, time_scale, interval_s, closes, requests,
                   str(after["unit"]), _unit_list(after), int(after["rated_cycles"]),
                   str(after.get("chip", "")),
                   [a - b for a, b in zip(after["counts"], before["counts"], strict=True)],
                   label)
        say(f"measured {label or profile}: {real:.0f} s real, {board / 3600:.1f} h board "
            f"time, {closes} intervals closed, {requests} requests")
        return e


@dataclass(frozen=True)
class Modelled:
    """This firmware's flash life on a board, from its write pattern as measured on the
    virtual board's flash model (measure_erases; docs/hardware.md "Flash wear" has the runs):
    what `meterctl doctor` says of a real board, which counts no erases of its own."""

    board: str
    unit: str
    erases_per_day: float  # of the unit erased most: 96 intervals and 96 READs a day
    rated: int
    measured: str  # which run

    @property
    def years(self) -> float:
        return years_at(self.rated, self.erases_per_day)

    def line(self) -> str:
        return (f"{self.board}: {life_text(self.years)} at {self.rated // 1000}k cycles "
                f"(hottest {self.unit} {self.erases_per_day:g} erases/day; {self.measured})")


# by sys.platform; figures of the runs in docs/hardware.md "Flash wear"
MODELLED = {
    "pyboard": Modelled("Pyboard v1.1 with its backup SRAM, /data on the internal flash's FAT "
                        "(with a micro SD card at /, the card takes the writes)", "sector",
                        2.67, 10_000, "pybv11 run: 4 erases of sector 0 in 36 h of board "
                        "time, h-pybwear f38c7a0"),
    "rp2": Modelled("Pico (littlefs), no battery-backed RAM", "block, levelled over the 290 "
                    "in rotation,", 3.21, 100_000, "rp2-pico run: 931 erases in 24 h of board "
                    "time, h-pybwear d2ab3e4"),
}


def report(m: Measured, pico_free_blocks: int, pico2_free_blocks: int) -> list[str]:
    measured = per_day(m)
    day, notes = with_modelled(m, measured)
    out = [f"== {m.label} ({m.elapsed_s / 60:.0f} min measured, scaled to a day)"]
    for rec in sorted(measured):
        ops = ", ".join(f"{op} {n:.0f}" for op, n in sorted(measured[rec].items()))
        out.append(f"  {rec:28s} {ops}")
    out += notes
    if m.nvram_writes:
        out.append(f"  (nvram: {m.nvram_writes * SECONDS_PER_DAY / m.elapsed_s:.0f} writes/day, "
                   "no flash)")
    for life in (fat_life(day), lfs_life(day, m.sizes, pico_free_blocks),
                 lfs_life(day, m.sizes, pico2_free_blocks,
                          board="Pico 2 (littlefs, W25Q32RV)")):
        out += ["  " + s for s in life.lines()]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m host_tools.reliability.wear",
        description="measure a virtual meter's flash writes and print the flash life")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--interval", type=int, default=60,
                    help="the run's interval length, s (closes are counted and scaled)")
    ap.add_argument("--no-nvram", action="store_true", help="a board without nvram (a Pico)")
    ap.add_argument("--firmware", type=Path, help="firmware/ to flash (default: this tree's)")
    ap.add_argument("--label", default="")
    ap.add_argument("--dir", type=Path,
                    help="the virtual meter's directory (default: a temporary one)")
    ap.add_argument("--json", type=Path, help="write the measurement here")
    ap.add_argument("--from-json", type=Path, help="no run: print the figures of this file")
    ap.add_argument("--profile", help="count real erases on this board profile's flash model "
                    "(pybv11, rp2-pico, rp2-pico2) instead of write points on the unix one")
    ap.add_argument("--time-scale", type=float, default=96.0,
                    help="with --profile: the meter's clock runs this many times as fast "
                    "(96: a day in 15 minutes)")
    ap.add_argument("--pico-free-blocks", type=int, default=300,
                    help="4-KiB blocks littlefs wear-levels over on a Pico (352 less the files)")
    ap.add_argument("--pico2-free-blocks", type=int, default=716,
                    help="the same on a Pico 2 (768 less the files)")
    a = ap.parse_args(argv)
    try:
        if a.from_json:
            try:
                d = json.loads(a.from_json.read_text())
            except (OSError, ValueError) as e:
                raise WearError(f"{a.from_json}: {e}") from None
            if isinstance(d, dict) and "erases" in d:
                print("\n".join(Erased.from_json(d).lines()))
                return 0
            m = Measured.from_json(d)
        elif a.profile:
            run = measure_erases(a.profile, a.minutes, time_scale=a.time_scale,
                                 interval_s=a.interval, nvram=False if a.no_nvram else None,
                                 firmware=a.firmware, base=a.dir, label=a.label)
            if a.json:
                a.json.write_text(json.dumps(run.to_json(), indent=1))
            print("\n".join(run.lines()))
            return 0
        else:
            m = measure(a.minutes, nvram=not a.no_nvram, firmware=a.firmware,
                        interval_s=a.interval, label=a.label, base=a.dir)
            if a.json:
                a.json.write_text(json.dumps(m.to_json(), indent=1))
        print("\n".join(report(m, a.pico_free_blocks, a.pico2_free_blocks)))
    except WearError as e:
        print(f"wear: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
