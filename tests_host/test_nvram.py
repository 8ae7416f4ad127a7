"""Battery-backed RAM records (firmware/lib/nvrec.py), the clock and the credit keeping their
often-changing state there (and on flash in batches), and the kernel's rate limit on the
records a WAN flood causes: on the real MicroPython VM (192 KB heap).

The RAM here is a bytearray behind board.nvram's interface. A power cut is modelled as the
board's: a save that stops after any number of its bytes (the CPU halts mid-copy; the RAM keeps
what it got), then a new task object built from the same RAM and flash."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

Run = Callable[..., str]

NV = """
import json, struct
import store

class Cut(Exception):
    pass

class Nv:
    # board.nvram: size, read(off, n), write(off, data); cut_after: bytes the next write
    # gets before the power goes (None: all)
    def __init__(self, size=4096):
        self.size = size
        self.mem = bytearray(size)
        self.cut_after = None
        self.writes = 0
    def read(self, off, n):
        return bytes(self.mem[off:off + n])
    def write(self, off, data):
        self.writes += 1
        data = bytes(data)
        if self.cut_after is not None:
            k, self.cut_after = self.cut_after, None
            self.mem[off:off + k] = data[:k]
            raise Cut()
        self.mem[off:off + len(data)] = data

saves = []
_save = store.save
def counting_save(path, obj):
    saves.append(path)
    _save(path, obj)
store.save = counting_save
"""


def _kernel_const(name: str) -> int:
    """`name = const(N)` in firmware/kernel.py (a private const: not in the module's dict)."""
    src = (Path(__file__).resolve().parent.parent / "firmware" / "kernel.py").read_text()
    m = re.search(rf"^{name} = const\((\d+)\)", src, re.M)
    assert m, name
    return int(m.group(1))


def run_json(micropython: Run, code: str) -> dict[str, Any]:
    out = micropython(NV + code)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def test_a_record_survives_a_cut_at_every_byte_of_a_save(micropython: Run) -> None:
    r = run_json(micropython, """
import nvrec
nv = Nv()
def rec(tag=b"T1"):
    return nvrec.Record(nv, 100, 64, tag)
fresh = rec().load("<9s")
rec().save("<9s", b"old state")
n = 8 + 9 + 8                             # header + payload + checksum
seen = []
for cut in range(n + 1):
    snapshot = bytes(nv.mem)
    r = rec()
    nv.cut_after = cut if cut < n else None
    try:
        r.save("<9s", b"new state")
    except Cut:
        pass
    seen.append(rec().load("<9s")[0].decode())
    nv.mem[:] = snapshot                  # the next cut starts from the old state again
outside = nv.mem[:100] + nv.mem[164:]
other_tag = rec(b"T2").load("<9s")
other_fmt = rec().load("<II")             # a record of another layout is not read as this one
errs = []
for bad in ((lambda: nvrec.Record(nv, 4090, 64, b"T1")), (lambda: nvrec.Record(nv, 0, 64, b"T")),
            (lambda: rec().save("<17s", b"x"))):
    try:
        bad()
        errs.append(None)
    except ValueError as e:
        errs.append(str(e))
print(json.dumps({"fresh": fresh, "seen": seen, "outside_untouched": outside == bytes(4096 - 64),
                  "other_tag": other_tag, "other_fmt": other_fmt, "errs": errs}))
""")
    assert r["fresh"] is None  # fresh (zeroed) RAM holds no record
    # cut anywhere before the last byte: the old state; the whole save: the new one
    assert r["seen"][:-1] == ["old state"] * (len(r["seen"]) - 1)
    assert r["seen"][-1] == "new state"
    assert r["outside_untouched"]  # the window is all a record writes
    assert r["other_tag"] is None  # another owner's record is never read as this one's
    assert r["other_fmt"] is None
    assert all(r["errs"]), r["errs"]


CLOCK = """
import time
from tasks.clock import Clock
import tasks.clock as clock_mod
clock_mod.STATE = {state!r}
import nvrec
logs = []
class Port:
    name = "clock"
    def send(self, to, kind, payload=None):
        return True
    def log(self, text):
        logs.append(text)
class Rtc:
    def __init__(self, t):
        self.t = t
    def get(self):
        return self.t
    def set(self, t):
        self.t = t
nv = Nv()
def boot(t, with_nv=True):
    rtc = Rtc(t)
    hw = {{"rtc": rtc}}
    if with_nv:
        hw["nvram"] = nvrec.Record(nv, 0, 64, b"CK")
    return Clock(Port(), hw), rtc
T0 = 1765000000
"""


def test_clock_keeps_time_in_nvram_and_flash_once_a_day(micropython: Run,
                                                           tmp_path: Path) -> None:
    r = run_json(micropython, CLOCK.format(state=str(tmp_path / "clock.json")) + """
c, rtc = boot(T0)
for k in range(3600):                     # an hour, a step a second
    rtc.t = T0 + k
    c.step()
hour_saves = len(saves)
c2, rtc2 = boot(0)                        # a power cut; a board whose RTC lost its time
resumed = rtc2.t
# a set 200 s back, 5 s more, a cut: the set time goes on, not the later time before it
c2.handle("cs_security", "time_set", (1, T0 + 3400))
for k in range(1, 6):
    rtc2.t = T0 + 3400 + k
    c2.step()
c3, rtc3 = boot(T0 + 3400)
after_set = rtc3.t
# a day later: flash again
rtc3.t = T0 + 3405 + 86400
n = len(saves)
c3.step()
day_save = len(saves) - n
# the battery ran flat: the flash copy
nv.mem[:] = bytes(4096)
c4, rtc4 = boot(0)
print(json.dumps({"hour_saves": hour_saves, "nv_writes": nv.writes, "resumed": resumed,
                  "after_set": after_set, "day_save": day_save, "flat": rtc4.t}))
""")
    assert r["hour_saves"] == 1  # the boot's flush only (an hour: no more flash)
    assert r["nv_writes"] >= 3600
    assert r["resumed"] == 1765000000 + 3599  # the last second kept, not the boot's flash copy
    assert r["after_set"] == 1765000000 + 3405  # never the older, later time
    assert r["day_save"] == 1
    assert r["flat"] == 1765000000 + 3405 + 86400


def test_clock_refuses_a_set_back_beyond_the_bound(micropython: Run, tmp_path: Path) -> None:
    """An authenticated TIME_SET may move the clock back by at most 300 s (tasks/clock_set.py):
    further back, or to before 2024, it is refused, answered with BAD_ARGS, logged, and the
    clock is unchanged."""
    r = run_json(micropython, CLOCK.format(state=str(tmp_path / "clock.json")) + """
c, rtc = boot(T0 + 1000)
answers = []
def send(to, kind, payload=None):
    answers.append([to, kind, payload[0], payload[1]])
    return True
c._port.send = send
got = []
for ref, t in ((1, T0 + 1000 - 301), (2, T0 + 1000 - 300), (3, 1704067199), (4, T0 + 5000)):
    n = len(logs)
    c.handle("cs_security", "time_set", (ref, t))
    got.append([rtc.t, logs[n:]])
print(json.dumps({"answers": answers, "got": got}))
""")
    t0 = 1765000000
    assert r["answers"] == [["cs_security", "time_set_done", 1, 6],
                            ["cs_security", "time_set_done", 2, 0],
                            ["cs_security", "time_set_done", 3, 6],
                            ["cs_security", "time_set_done", 4, 0]]
    assert r["got"] == [
        [t0 + 1000, [f"clock: time set {t0 + 699} refused (now {t0 + 1000})"]],
        [t0 + 700, [f"clock: time set {t0 + 700} (was {t0 + 1000})"]],
        [t0 + 700, [f"clock: time set 1704067199 refused (now {t0 + 700})"]],
        [t0 + 5000, [f"clock: time set {t0 + 5000} (was {t0 + 700})"]]]


def test_clock_without_nvram_saves_every_five_minutes(micropython: Run,
                                                        tmp_path: Path) -> None:
    r = run_json(micropython, CLOCK.format(state=str(tmp_path / "clock.json")) + """
c, rtc = boot(T0, False)
for k in range(3600):
    rtc.t = T0 + k
    c.step()
hour_saves = len(saves)
c2, rtc2 = boot(0, False)
print(json.dumps({"hour_saves": hour_saves, "resumed": rtc2.t, "nv": nv.writes,
                  "every": clock_mod.SAVE_EVERY_S}))
""")
    assert r["every"] == 300
    assert r["hour_saves"] == 12  # 3600 s / 300 s
    assert r["nv"] == 0
    assert 1765000000 + 3599 - 300 < r["resumed"] <= 1765000000 + 3599


def test_with_snapshots_the_clock_and_the_credit_flush_no_file_of_their_own(
        micropython: Run, tmp_path: Path) -> None:
    """Where the RAM's snapshots are the flash copies (lib/nvrec.py Snapshots, a Pyboard): the
    clock's daily flush is one snapshot, none if one was taken since its last (the staged
    rings take several a day), and the credit's is the same snapshot: no clock.json or
    credit.json written at all; a flat battery then restores both from the snapshot."""
    r = run_json(micropython, CLOCK.format(state=str(tmp_path / "clock.json")) + f"""
import os
from tasks.credit import Credit
snaps = nvrec.Snapshots(nv, {str(tmp_path / "nv")!r}, 3, nvrec.Record(nv, 400, 40, b"NS"))
snaps.boot()
taken = []
_snap = snaps.snapshot
def counting_snapshot():
    taken.append(1)
    return _snap()
snaps.snapshot = counting_snapshot
def boot_s(t):
    rtc = Rtc(t)
    rec = nvrec.Record(nv, 0, 64, b"CK")
    rec.snaps = snaps
    return Clock(Port(), {{"rtc": rtc, "nvram": rec}}), rtc
def credit():
    rec = nvrec.Record(nv, 64, 192, b"CR")
    rec.snaps = snaps
    return Credit(Port(), {{"state_path": {str(tmp_path / "credit.json")!r}, "nvram": rec}})
c, rtc = boot_s(T0)
cr = credit()
cr.handle("cs_security", "prepaid", (1, True))     # a command: to flash at once, as always
cr.handle("cs_security", "topup", (2, 10000000))
cmd_saves = len(saves)
counts = []
for day in range(3):
    for k in range(0, 86400, 60):
        t = T0 + day * 86400 + k
        rtc.t = t
        c.step()
        cr.handle("metrology", "reading", (t, 230.0, 1.0, 230.0, 100 + (day * 86400 + k) // 60, 0))
        if day == 1 and k == 43200:
            snaps.snapshot()                        # a staged ring's, mid-day
    counts.append(len(taken))
bal = cr.balance
nv.mem[:] = bytes(4096)                             # the battery ran flat
snaps2 = nvrec.Snapshots(nv, {str(tmp_path / "nv")!r}, 3, nvrec.Record(nv, 400, 40, b"NS"))
restored = snaps2.boot()
c2, rtc2 = boot_s(0)
cr2 = credit()
print(json.dumps({{"counts": counts, "saves": len(saves) - cmd_saves, "cmd_saves": cmd_saves,
                  "files": sorted(os.listdir({str(tmp_path)!r})), "restored": restored,
                  "resumed": rtc2.t, "bal": bal, "bal2": cr2.balance}}))
""")
    # day 0: the boot's flush (no snapshot yet); day 1: its daily flush, then the ring's
    # mid-day snapshot; day 2: that snapshot is newer than the last flush: none of its own
    assert r["counts"] == [1, 3, 3], r["counts"]
    assert r["cmd_saves"] == 2 and r["saves"] == 0  # commands only: no daily file save
    assert "clock.json" not in r["files"]
    assert r["restored"] > 0
    assert r["resumed"] == 1765000000 + 86400 + 43200  # the time of the last snapshot
    assert 0 < r["bal2"] and r["bal2"] >= r["bal"]  # the balance as of that snapshot


CREDIT = """
from tasks.credit import Credit
import nvrec
P = {path!r}
class Port:
    name = "credit"
    def send(self, to, kind, payload=None):
        return True
    def log(self, text):
        pass
nv = Nv()
def make(with_nv=True):
    return Credit(Port(), {{"state_path": P, "nvram": nvrec.Record(nv, 64, 192, b"CR")}} if with_nv
                  else {{"state_path": P}})
T0 = 1705312800
def state(c):
    return [c.balance, c._rem, list(c.reg), c._imp, c._exp, c.prepaid, list(c.tariff)]
"""


def test_credit_loses_nothing_at_a_cut_and_writes_flash_in_batches(micropython: Run,
                                                                  tmp_path: Path) -> None:
    r = run_json(micropython, CREDIT.format(path=str(tmp_path / "credit.json")) + """
c = make()
c.handle("cs_security", "prepaid", (1, True))
c.handle("cs_security", "topup", (2, 10000000))
cmd_saves = len(saves)
for k in range(7200):                      # two hours, 1 Wh every 2 s
    c.handle("metrology", "reading", (T0 + k, 230.0, 1.0, 230.0, 100 + k // 2, 0))
run_saves = len(saves) - cmd_saves
before = state(c)
after = state(make())                      # power cut: nothing lost
# a cut in the middle of a second's save: that second's state or the one before, whole
c = make()
c.handle("metrology", "reading", (T0 + 7200, 230.0, 1.0, 230.0, 100 + 3600, 0))  # boot flush
prev = state(c)
nv.cut_after = 30
try:
    c.handle("metrology", "reading", (T0 + 7201, 230.0, 1.0, 230.0, 100 + 3601, 0))
except Cut:
    pass
torn = state(make())
c = make()
n = len(saves)
c.handle("metrology", "reading", (T0 + 86400 * 2, 230.0, 1.0, 230.0, 100 + 3602, 0))
day = len(saves) - n
flushed = state(c)
nv.mem[:] = bytes(4096)                    # the battery ran flat: the flash copy
flat = state(make())
print(json.dumps({"cmd_saves": cmd_saves, "run_saves": run_saves, "before": before,
                  "after": after, "prev": prev, "torn": torn, "day": day,
                  "flushed": flushed, "flat": flat}))
""")
    assert r["cmd_saves"] == 2  # each command reaches the flash at once
    assert r["run_saves"] == 1  # two hours of readings: one flash save (the first, at boot)
    assert r["after"] == r["before"]
    assert r["before"][2][1] + r["before"][2][0] == 3599  # registers: every Wh accounted
    assert r["torn"] == r["prev"]  # the save cut half-way: the state a second before, whole
    assert r["day"] == 1
    assert r["flat"] == r["flushed"]  # the daily flush holds all of it


def test_credit_without_nvram_still_saves_every_minute(micropython: Run,
                                                       tmp_path: Path) -> None:
    r = run_json(micropython, CREDIT.format(path=str(tmp_path / "credit.json")) + """
c = make(False)
for k in range(3600):
    c.handle("metrology", "reading", (T0 + k, 230.0, 1.0, 230.0, 100 + k // 2, 0))
print(json.dumps({"saves": len(saves), "nv": nv.writes}))
""")
    assert r["saves"] == 60 and r["nv"] == 0


KERNEL = """
import json
import kernel
class FakeTime:
    ms = 0
    def ticks_ms(self):
        return self.ms
    def ticks_diff(self, a, b):
        return a - b
    def ticks_add(self, a, b):
        return a + b
    def ticks_us(self):
        return self.ms * 1000
    def sleep_ms(self, ms):
        self.ms += ms
ft = FakeTime()
kernel.time = ft
LOGDIR = {logdir!r}
LOGS = {{"security": (LOGDIR + "/sec.bin", 16, 64), "metrology": (LOGDIR + "/met.bin", 16, 64),
         "offswitch": (LOGDIR + "/off.bin", 16, 64)}}
class T:
    def __init__(self, port, hw):
        self.port = port
    def handle(self, sender, kind, payload):
        pass
k = kernel.Kernel({{}}, {{"metrology": "metrology"}}, LOGS, lambda: 1000)
cs = k.add("cs_security", T, {{}}, capacity=4)
met = k.add("metrology", T, {{}}, capacity=4)
ring = k._logs["security"]
"""


def test_a_flood_beyond_the_burst_is_counted_not_written(micropython: Run,
                                                         tmp_path: Path) -> None:
    """The quick case of the flood below: past the burst, a rejection is counted, not
    written (the ring's sequence stops at the burst)."""
    burst = _kernel_const("_FLOOD_BURST")
    r = run_json(micropython, KERNEL.format(logdir=str(tmp_path)) + """
for i in range(BURST + 40):
    cs.port.log_flood("wan: rejected (bad mac) %d" % i)
print(json.dumps({"writes": ring.last_seq, "dropped": k.stats()["log_dropped"]}))
""".replace("BURST", str(burst)))
    assert r == {"writes": burst, "dropped": 40}


def test_a_flood_of_rejections_costs_a_bounded_number_of_log_writes(micropython: Run,
                                                                    tmp_path: Path) -> None:
    burst, per_hour = _kernel_const("_FLOOD_BURST"), _kernel_const("_FLOOD_PER_HOUR")
    r = run_json(micropython, KERNEL.format(logdir=str(tmp_path)) + """
burst, per_hour = BURST, PER_HOUR
for i in range(1000):
    cs.port.log_flood("wan: rejected (bad mac) %d" % i)
burst_writes = ring.last_seq
dropped_burst = k.stats()["log_dropped"]
# an hour of flood, 10 lines a second (ticks move on)
for s in range(3600):
    ft.ms += 1000
    for j in range(10):
        cs.port.log_flood("wan: rejected (bad mac)")
hour_writes = ring.last_seq - burst_writes
recs = [r[2] for r in k.read_log("security", 0, 16)]
# one token later, one more line: the count so far is logged, that line dropped
ft.ms += 225000
cs.port.log_flood("wan: rejected (bad mac)")
last = k.read_log("security", 0, 100)[-1][2]
# records the flood does not cause are never limited
cs.port.log("topup +1 mc: balance 1")
met.port.log("interval closed")
ordinary = [k.read_log("security", 0, 100)[-1][2], k.read_log("metrology", 0, 1)[0][2]]
st = k.stats()
print(json.dumps({"burst": burst, "per_hour": per_hour, "burst_writes": burst_writes,
                  "dropped_burst": dropped_burst, "hour_writes": hour_writes, "recs": recs,
                  "ordinary": ordinary, "stats_dropped": st["log_dropped"],
                  "flood_total": 1000 + 36000 + 1, "last": last}))
""".replace("BURST", str(burst)).replace("PER_HOUR", str(per_hour)))
    assert r["burst_writes"] == burst and r["dropped_burst"] == 1000 - burst
    # an hour of 36,000 rejected lines: per_hour writes, each the count of the dropped ones
    assert r["hour_writes"] == per_hour
    assert all(t.startswith("log: ") and t.endswith(" records dropped (rate limit)")
               for t in r["recs"][-per_hour:]), r["recs"]
    logged_drops = sum(int(t.split()[1]) for t in r["recs"][-per_hour:])
    # every record not written is counted: the stats' count, and the logged counts add up
    assert r["stats_dropped"] == r["flood_total"] - burst
    last = int(r["last"].split()[1])
    assert logged_drops + last == r["stats_dropped"] - 1  # all but the line just dropped
    assert r["ordinary"] == ["topup +1 mc: balance 1", "interval closed"]
