"""firmware/lib/ringlog.py: bounded rings of fixed-size records, one file each. Every scenario
runs on CPython and on the real MicroPython VM (192 KB heap); the slot format on CPython."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ringlog

Run = Callable[[str], Any]

# MicroPython-compatible helpers for the scenarios; each scenario's last line is out(result).
PRELUDE = """
import json, os
from ringlog import Ring
def rd(p):
    with open(p, "rb") as f:
        return f.read()
def wr(p, b):
    with open(p, "wb") as f:
        f.write(b)
def poke(p, off, b):
    with open(p, "r+b") as f:
        f.seek(off)
        f.write(b)
def size(p):
    return os.stat(p)[6]
def rec(i):
    return b"rec-%d" % i
def recs(r, *a):
    return [[s, x.decode()] for s, x in r.records(*a)]
def out(x):
    print(json.dumps(x))
"""


def run_cpython(code: str) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "<scenario>", "exec"), {"__name__": "__scenario__"})
    return buf.getvalue()


@pytest.fixture(params=["cpython", "micropython"])
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Run:
    """run(code) -> the JSON value the scenario printed last, on one runtime; the scenario
    sees its temp dir as T."""
    if request.param == "micropython":
        vm: Callable[[str], str] = request.getfixturevalue("micropython")
        execute = vm
    else:
        execute = run_cpython

    def go(code: str) -> Any:
        lines = execute(f"T = {str(tmp_path)!r}\n" + PRELUDE + code).splitlines()
        assert lines, "scenario printed nothing"
        return json.loads(lines[-1])

    return go


def recs(first: int, last: int) -> list[list[Any]]:
    return [[s, f"rec-{s}"] for s in range(first, last + 1)]


def test_round_trip(run: Run) -> None:
    got = run("""
p = T + "/logs/metro.bin"  # parent directory does not exist yet
r = Ring(p, 8, 32)
res = [r.capacity, r.max_payload, r.last_seq, r.count, r.records(), size(p), rd(p) == bytes(256)]
seqs = [r.append(rec(1)), r.append(rec(2)), r.append(rec(3))]
odd = [b"", b"a\\x00\\x00", b"\\xff" * r.max_payload]  # trailing zeros keep their length
seqs += [r.append(x) for x in odd]
back = [x for _, x in r.records()[3:]]
first3 = [[q, x.decode()] for q, x in r.records(0, 3)]
res += [seqs, r.last_seq, r.count, first3, back == odd, recs(r, 2, 2), recs(r, 99),
        recs(r, 0, 0), size(p)]
out(res)
""")
    assert got == [8, 22, 0, 0, [], 256, True,
                   [1, 2, 3, 4, 5, 6], 6, 6, recs(1, 3), True, recs(2, 3), [], [], 256]


def test_wrap_around_keeps_last_capacity_records_in_order(run: Run) -> None:
    got = run("""
p = T + "/ring.bin"
r = Ring(p, 8, 24)
bad = []  # n wherever the ring did not hold exactly max(1, n - 7) .. n
for n in range(1, 30):
    r.append(rec(n))
    want = [[s, "rec-%d" % s] for s in range(max(1, n - 7), n + 1)]
    if recs(r) != want or r.count != len(want) or r.last_seq != n:
        bad.append(n)
r2 = Ring(p, 8, 24)
out([bad, recs(r), recs(r2), r2.count, r2.last_seq, size(p), recs(r, 25, 2)])
""")
    bad, held, reopened, count, last, size, window = got
    assert bad == []
    assert held == reopened == recs(22, 29)
    assert (count, last, size) == (8, 29, 8 * 24)
    assert window == recs(25, 26)


def test_reopen_recovers_last_seq_and_continues(run: Run) -> None:
    got = run("""
p = T + "/ring.bin"
r = Ring(p, 5, 20)
for n in range(1, 14):
    r.append(rec(n))
r = Ring(p, 5, 20)
a = [r.last_seq, r.count]
s = r.append(rec(14))
r = Ring(p, 5, 20)
e = Ring(T + "/empty.bin", 5, 20)
e = Ring(T + "/empty.bin", 5, 20)
out([a, s, r.last_seq, recs(r), e.last_seq, e.count, e.records()])
""")
    assert got == [[13, 5], 14, 14, recs(10, 14), 0, 0, []]


def test_torn_append_loses_only_that_record(run: Run) -> None:
    # Ring "img" gets record 11 intact; ring p gets only the first k bytes of that same slot,
    # as if the power failed during the in-place write. Slot 2 held record 3 (about to drop
    # out of the window anyway), so only record 11 may be lost, for every k.
    got = run("""
cap, rs = 8, 24
img = Ring(T + "/img.bin", cap, rs)
for n in range(1, 12):
    img.append(rec(n))
slot = rd(T + "/img.bin")[2 * rs:3 * rs]
p = T + "/ring.bin"
r = Ring(p, cap, rs)
for n in range(1, 11):
    r.append(rec(n))
good = rd(p)
bad = []  # [k, what was held] wherever it was not records 4..10
for k in range(1, rs):
    wr(p, good)
    poke(p, 2 * rs, slot[:k])
    r = Ring(p, cap, rs)
    want = [[s, "rec-%d" % s] for s in range(4, 11)]
    if recs(r) != want or r.last_seq != 10 or r.count != 7:
        bad.append([k, recs(r)])
s = r.append(rec(11))  # the lost record is simply written again
out([bad, s, recs(Ring(p, cap, rs))])
""")
    bad, s, after = got
    assert bad == []
    assert s == 11
    assert after == recs(4, 11)


def test_corrupt_slot_loses_only_that_record(run: Run) -> None:
    # Flip one bit in each checksummed byte of record 6 (seq, len, payload, checksum).
    got = run("""
cap, rs = 8, 24
p = T + "/ring.bin"
r = Ring(p, cap, rs)
for n in range(1, 11):
    r.append(rec(n))
good = rd(p)
off = ((6 - 1) % cap) * rs
used = list(range(6 + len(rec(6)))) + list(range(rs - 4, rs))
bad = []
for i in used:
    b = bytearray(good)
    b[off + i] ^= 1 << (i % 8)
    wr(p, bytes(b))
    r = Ring(p, cap, rs)
    want = [[s, "rec-%d" % s] for s in (3, 4, 5, 7, 8, 9, 10)]
    if recs(r) != want or r.count != 7 or r.last_seq != 10:
        bad.append([i, recs(r)])
# Damage after opening is caught on read as well.
wr(p, good)
r = Ring(p, cap, rs)
poke(p, off + 7, b"X")
late = [s for s, _ in r.records()]
# Damaging the newest record makes the ring end one earlier.
wr(p, good)
poke(p, ((10 - 1) % cap) * rs + 8, b"X")
r = Ring(p, cap, rs)
out([len(used), bad, late, r.last_seq, r.count, r.append(rec(10))])
""")
    n_used, bad, late, last, count, s = got
    assert n_used == 6 + 5 + 4
    assert bad == []
    assert late == [3, 4, 5, 7, 8, 9, 10]
    assert (last, count, s) == (9, 7, 10)


def test_flooding_one_ring_leaves_another_untouched(run: Run) -> None:
    got = run("""
a = Ring(T + "/security.bin", 16, 32)
b = Ring(T + "/metro.bin", 8, 24)
for n in range(1, 11):
    a.append(rec(n))
    b.append(rec(n))
before = rd(T + "/security.bin")
held = recs(a)
for n in range(11, 11 + 10 * 8):
    b.append(rec(n))
a2 = Ring(T + "/security.bin", 16, 32)
out([rd(T + "/security.bin") == before, recs(a2) == held, a2.last_seq, recs(a2)[-1],
     b.last_seq, recs(b)[0], b.count, sorted(os.listdir(T))])
""")
    assert got == [True, True, 10, [10, "rec-10"], 90, [83, "rec-83"], 8,
                   ["metro.bin", "security.bin"]]


def test_oversize_payload_raises_and_writes_nothing(run: Run) -> None:
    got = run("""
p = T + "/ring.bin"
r = Ring(p, 4, 16)
for n in range(1, 7):
    r.append(rec(n))
before = rd(p)
err = "none"
try:
    r.append(b"x" * (r.max_payload + 1))
except ValueError:
    err = "ValueError"
same = rd(p) == before
fits = r.append(b"y" * r.max_payload)
out([r.max_payload, err, same, fits, r.count, [s for s, _ in r.records()]])
""")
    assert got == [6, "ValueError", True, 7, 4, [4, 5, 6, 7]]


def test_wrong_size_file_is_set_aside(run: Run) -> None:
    got = run("""
p = T + "/ring.bin"
wr(p, b"junk" * 10)
r = Ring(p, 4, 16)
res = [r.last_seq, size(p), rd(p + ".old").decode(), r.append(rec(1))]
r = Ring(p, 8, 16)  # the geometry changed: the old ring goes aside, too
res += [r.last_seq, size(p), size(p + ".old"), r.records(), sorted(os.listdir(T))]
out(res)
""")
    assert got == [0, 64, "junk" * 10, 1, 0, 128, 64, [], ["ring.bin", "ring.bin.old"]]


def test_bad_geometry_rejected(tmp_path: Path) -> None:
    for cap, rs in [(0, 32), (4, 10), (4, 0x10000 + 10)]:
        with pytest.raises(ValueError):
            ringlog.Ring(str(tmp_path / "r.bin"), cap, rs)
    assert list(tmp_path.iterdir()) == []


def test_slot_format(tmp_path: Path) -> None:
    p = tmp_path / "ring.bin"
    r = ringlog.Ring(str(p), 4, 20)
    # Shorter payloads after longer ones: padding must be zeros, not the previous slot's bytes.
    payloads = [b"x" * 10, b"long-one", b"rec-3", b"r4", b"", b"rec-6"]
    for x in payloads:
        r.append(x)
    raw = p.read_bytes()
    assert len(raw) == 4 * 20
    for seq in (5, 6, 3, 4):
        slot = raw[((seq - 1) % 4) * 20:][:20]
        x = payloads[seq - 1]
        body = struct.pack("<IH", seq, len(x)) + x
        assert slot == body + bytes(20 - 4 - len(body)) + hashlib.sha256(body).digest()[:4]


def test_stale_record_from_an_older_lap_is_not_held(run: Run) -> None:
    # Slot 0 gets a valid image of record 1 back while the ring is at 8 (window 5..8): it
    # must not be counted or returned (it can only appear through damage or tampering).
    got = run("""
old = Ring(T + "/old.bin", 4, 16)
old.append(rec(1))
img = rd(T + "/old.bin")[:16]
p = T + "/ring.bin"
r = Ring(p, 4, 16)
for n in range(1, 9):
    r.append(rec(n))
poke(p, 0, img)
r = Ring(p, 4, 16)
res = [r.last_seq, r.count, recs(r), recs(r, 1)]
r.append(rec(9))
out(res + [r.count, recs(r)])
""")
    assert got == [8, 3, recs(6, 8), recs(6, 8), 4, recs(6, 9)]


def test_big_ring_fits_the_pico_heap(micropython: Callable[..., str], tmp_path: Path) -> None:
    # A 150 KB ring on the 192 KB heap: opening and reading must not hold the file in RAM.
    p = str(tmp_path / "profile.bin")
    out = micropython(f"""
import gc
from ringlog import Ring
r = Ring({p!r}, 4800, 32)
for n in range(1, 4811):
    r.append(b"%d" % n)
gc.collect()
free = gc.mem_free()
r = Ring({p!r}, 4800, 32)
tail = r.records(4806)
gc.collect()
print(r.last_seq, r.count, [s for s, _ in tail], free - gc.mem_free() < 4096)
""", timeout=120)
    assert out.split() == ["4810", "4800", "[4806,", "4807,", "4808,", "4809,", "4810]", "True"]


# -- staged in battery-backed RAM (a Pyboard's backup SRAM: the flash is written in batches) ---

STAGED = """
from nvrec import Window
class Cut(Exception):
    pass
class Nv:
    # board.nvram; cut_after: bytes the next write gets before the power goes
    def __init__(self, size=1024):
        self.size = size
        self.mem = bytearray(size)
        self.cut_after = None
    def read(self, off, n):
        return bytes(self.mem[off:off + n])
    def write(self, off, data):
        data = bytes(data)
        if self.cut_after is not None:
            k, self.cut_after = self.cut_after, None
            self.mem[off:off + k] = data[:k]
            raise Cut()
        self.mem[off:off + len(data)] = data
nv = Nv()
cap, rs = 8, 24
p = T + "/ring.bin"
def ring():
    return Ring(p, cap, rs, Window(nv, 100, 3 * rs))  # 3 records staged
"""


def test_a_staged_ring_writes_the_file_only_when_the_ram_is_full(run: Run) -> None:
    got = run(STAGED + """
r = ring()
empty = rd(p)
seen = []
for n in range(1, 12):
    r.append(rec(n))
    seen.append([n, rd(p) != empty, r.pending(), recs(r) == [[s, "rec-%d" % s]
                 for s in range(max(1, n - cap + 1), n + 1)]])
    empty = rd(p)
outside = nv.mem[:100] + nv.mem[100 + 3 * rs:]
r2 = ring()  # a reboot: the RAM's records are read again
out([seen, outside == bytes(1024 - 3 * rs), recs(r2), r2.pending(), r2.count, r.flush(),
     recs(Ring(p, cap, rs))])
""")
    seen, outside_untouched, after, pending, count, flushed, file_only = got
    # records 1-3 in RAM; the 4th append flushes 1-3 in one go, and so on
    assert [s[1] for s in seen] == [False, False, False, True, False, False, True, False, False,
                                    True, False]
    assert [s[2] for s in seen] == [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2]
    assert all(s[3] for s in seen), seen  # reads merge the RAM and the file, in order
    assert outside_untouched
    assert after == recs(4, 11) and pending == 2 and count == 8
    assert flushed == 2
    assert file_only == recs(4, 11)  # after flush() the file alone holds them all


def test_a_cut_in_a_flush_or_in_a_staging_loses_nothing_flushed(run: Run) -> None:
    # A flush's file write cut after k bytes (any k): the reboot finds the staged records in
    # the RAM, and they reach the file again. A staging write cut after k bytes: only that
    # record is lost. A flat battery: only what was not flushed.
    got = run(STAGED + """
r = ring()
for n in range(1, 7):
    r.append(rec(n))          # 1-3 in the file, 4-6 in RAM
before = rd(p)
ram = bytes(nv.mem)
r.flush()
after = rd(p)
bad = []
for k in range(0, 3 * rs):
    torn = bytearray(before)
    lo = 3 * rs               # slots 3, 4, 5 (records 4, 5, 6)
    torn[lo:lo + k] = after[lo:lo + k]
    wr(p, bytes(torn))
    nv.mem[:] = ram
    r = ring()
    if recs(r) != recs_want(1, 6) or r.pending() == 0 and k < 3 * rs:
        bad.append([k, recs(r), r.pending()])
    r.flush()
    if recs(Ring(p, cap, rs)) != recs_want(1, 6):
        bad.append(["reflush", k])
# a filesystem that persists the flush's slots out of order: record 6 whole, 5 torn
torn = bytearray(after)
torn[4 * rs:5 * rs - 3] = before[4 * rs:5 * rs - 3]
wr(p, bytes(torn))
nv.mem[:] = ram
r = ring()
if recs(r) != recs_want(1, 6) or r.pending() < 2:
    bad.append(["out of order", recs(r), r.pending()])
nv.mem[:] = ram
wr(p, before)
r = ring()
stage_bad = []
for k in range(0, rs):
    snap = bytes(nv.mem)
    r = ring()
    nv.cut_after = k
    try:
        r.append(rec(7))
    except Cut:
        pass
    got7 = recs(ring())       # (the append flushed 4-6 first: the RAM was full)
    if got7 != recs_want(1, 6):
        stage_bad.append([k, got7])
    nv.mem[:] = snap
wr(p, before)                 # 1-3 in the file, 4-6 staged
nv.mem[:] = bytes(1024)       # the battery ran flat
flat = recs(ring())
out([bad, stage_bad, flat])
""".replace("recs_want(", "(lambda a, b: [[s, 'rec-%d' % s] for s in range(a, b + 1)])("))
    bad, stage_bad, flat = got
    assert bad == []
    assert stage_bad == []  # a torn staging: that record only (rec 7 never completed)
    assert flat == recs(1, 3)  # the flushed records stay; the unflushed 4-6 were RAM only


def test_a_window_reaches_nothing_outside_it(run: Run) -> None:
    got = run(STAGED + """
w = Window(nv, 100, 10)
errs = []
for bad in ((lambda: w.read(5, 6)), (lambda: w.write(8, b"abc")), (lambda: w.read(-1, 2)),
            (lambda: Window(nv, 1020, 10)), (lambda: Ring(p, cap, rs, Window(nv, 0, rs - 1)))):
    try:
        bad()
        errs.append(None)
    except ValueError as e:
        errs.append(str(e))
w.write(0, b"0123456789")
out([errs, bytes(nv.mem[99:111]).decode("latin-1")])
""")
    errs, mem = got
    assert all(errs), errs
    assert mem == "\x000123456789\x00"


SNAPS = STAGED.replace("""def ring():
    return Ring(p, cap, rs, Window(nv, 100, 3 * rs))  # 3 records staged
""", """from nvrec import Record, Snapshots
writes = []   # [file, mode] of every open for writing
import nvrec
_open = open
def spy(path, mode="r", *a):
    if "w" in mode or "+" in mode:
        writes.append([str(path).rsplit("/", 1)[-1], mode])
    return _open(path, mode, *a)
nvrec.open = spy  # the snapshots' own opens (the module's name shadows the builtin)
def snaps():
    return Snapshots(nv, T + "/nv", 3, Record(nv, 0, 40, b"NS"))
def boot():
    s = snaps()
    s.boot()
    return s, Ring(p, cap, rs, Window(nv, 100, 3 * rs, s)), Ring(p + "2", cap, rs,
                                                                   Window(nv, 200, 2 * rs, s))
""")


def test_rings_keep_their_history_in_snapshots_of_the_ram_one_write_each(run: Run) -> None:
    """Two staged rings share the RAM's snapshots: a full window (either ring's) writes the
    whole RAM into the oldest of 3 files, once, in place after the first round (no file
    created, none renamed, none removed); reads merge the RAM and every snapshot; no file of
    the rings' own is made."""
    got = run(SNAPS + """
s, a, b = boot()
made = [writes[:], [size(T + "/nv.%d" % i) for i in range(3)], s.seqs[:]]
writes[:] = []
seen = []
for n in range(1, 13):
    a.append(rec(n))
    if n % 3 == 0:
        b.append(b"b-%d" % n)
    seen.append([n, len(writes)])
files = sorted(os.listdir(T))
hist = recs(a)
s2, a2, b2 = boot()                 # a reboot with the RAM alive
out([made, seen, writes, files, hist, recs(a2), [[q, x.decode()] for q, x in b2.records()],
     a2.pending(), s2.seq])
""")
    made, seen, writes, files, hist, hist2, bhist, pending, seq = got
    # the boot makes the 3 files at their full size (11 + 1024 + 8), none valid yet, and
    # takes no snapshot
    assert made == [[], [1043] * 3, [0, 0, 0]]
    # a's window (3) fills at 4, 7, 10 (b's window of 2 never fills first): a snapshot each
    assert [n for n, k in seen if k != ([0] + [k for _, k in seen])[n - 1]] == [4, 7, 10]
    assert writes == [["nv.0", "r+b"], ["nv.1", "r+b"], ["nv.2", "r+b"]]  # in place only
    assert files == ["nv.0", "nv.1", "nv.2"]  # no ring file, no .tmp, no .bak
    assert hist == recs(5, 12)  # cap 8: the last 8 (RAM 10-12, snapshots 1-9)
    assert hist2 == hist and pending == 3 and seq == 3
    assert bhist == [[1, "b-3"], [2, "b-6"], [3, "b-9"], [4, "b-12"]]


def test_a_snapshot_round_overwrites_the_oldest_file_in_place(run: Run) -> None:
    got = run(SNAPS + """
s, a, b = boot()
writes[:] = []
for n in range(1, 25):
    a.append(rec(n))
out([writes, recs(a), s.seqs])
""")
    later, hist, seqs = got
    # 7 snapshots (at 4, 7, ..., 22), each over the oldest file, in place
    assert later == [[f"nv.{i % 3}", "r+b"] for i in range(7)]
    assert hist == recs(17, 24)
    assert sorted(seqs) == [5, 6, 7]


def test_a_cut_in_a_snapshot_loses_nothing_and_a_flat_battery_restores_the_last(
        run: Run) -> None:
    """A snapshot's write cut after k bytes (the file torn, the RAM intact): every record
    still reads, the ring knows its RAM records are not all on flash and snapshots again.
    A flat battery (the RAM zeroed): the boot restores the newest whole snapshot, so the
    records and every Record in the RAM come back as of that snapshot."""
    got = run(SNAPS + """
def want(x, y):
    return [[q, "rec-%d" % q] for q in range(x, y + 1)]
s, a, b = boot()
clock = Record(nv, 300, 40, b"CK")
for n in range(1, 10):
    a.append(rec(n))
clock.save("<I", 1234)
for n in range(10, 13):
    a.append(rec(n))          # 9 closes the window of 7-9: snapshot; 10-12 in RAM
ram = bytes(nv.mem)
old = {}
for k in range(3):
    old[k] = rd(T + "/nv.%d" % k)
s.snapshot()                  # the next snapshot: over the oldest file
i = [k for k in range(3) if rd(T + "/nv.%d" % k) != old[k]][0]
new = rd(T + "/nv.%d" % i)
bad = []
for cut in range(0, len(new), 97):
    wr(T + "/nv.%d" % i, new[:cut] + old[i][cut:])
    nv.mem[:] = ram
    s2, a2, b2 = boot()
    if recs(a2) != want(5, 12) or a2.pending() == 0:
        bad.append([cut, recs(a2), a2.pending()])
wr(T + "/nv.%d" % i, new)
nv.mem[:] = bytes(1024)       # the battery ran flat
s3, a3, b3 = boot()
clock3 = Record(nv, 300, 40, b"CK").load("<I")
out([bad, s3.restored, recs(a3), a3.pending(), clock3])
""")
    bad, restored, hist, pending, clock = got
    assert bad == []
    assert restored == 4  # the newest whole snapshot (3 by full windows, 1 by hand)
    assert hist == recs(5, 12) and pending == 0
    assert clock == [1234]
