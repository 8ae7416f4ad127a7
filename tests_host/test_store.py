"""firmware/lib/store.py: atomic persisted records. Every scenario runs on CPython and on the
real MicroPython VM (192 KB heap); the on-disk format and the cross-runtime files on CPython."""

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
import store

Run = Callable[[str], Any]

# MicroPython-compatible helpers for the scenarios; each scenario's last line is out(result).
PRELUDE = """
import json, os, struct
import store
def rd(p):
    with open(p, "rb") as f:
        return f.read()
def wr(p, b):
    with open(p, "wb") as f:
        f.write(b)
def exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False
def flip(b, i):
    b = bytearray(b)
    b[i] ^= 1 << (i % 8)
    return bytes(b)
def seq_of(p):
    return struct.unpack("<I", rd(p)[3:7])[0]
def out(x):
    print(json.dumps(x))
"""

A = {"energy_wh": [123456789, 42], "ok": True, "cal": 1.25, "id": "mtr-é", "none": None}
B = {"energy_wh": [123456790, 43], "ok": False, "cal": 1.5, "id": "mtr-é", "none": None}
C = {"c": 3}
D = {"d": 4}


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


def objs(*xs: Any) -> str:
    """Python literals of the test objects, for pasting into a scenario."""
    return ", ".join(repr(x) for x in xs)


def test_round_trip_and_sequence(run: Run) -> None:
    values: list[Any] = [A, [], 0, -(2**40), "text", [1, [2, {"x": None}]], None, 2.5]
    got = run(f"""
vals = [{objs(*values)}]
res = []
for i, v in enumerate(vals):
    store.save(T + "/v%d" % i, v)
    res.append(store.load(T + "/v%d" % i, "MISSING"))
p = T + "/data/rec"  # parent directory does not exist yet
for v in ({objs(A, B, C)}):
    store.save(p, v)
out([res, store.load(p), store.load(p + ".bak"), seq_of(p), seq_of(p + ".bak"),
     exists(p + ".tmp"), sorted(os.listdir(T + "/data"))])
""")
    assert got == [values, C, B, 3, 2, False, ["rec", "rec.bak"]]


def test_missing_files_give_default(run: Run) -> None:
    got = run("""
store.remove(T + "/nothing")  # must not raise either
wr(T + "/empty", b"")
out([store.load(T + "/nothing"), store.load(T + "/nothing", {"d": 1}),
     store.load(T + "/no/such/dir/x", 7), store.load(T + "/empty", 5)])
""")
    assert got == [None, {"d": 1}, 7, 5]


def test_torn_newest_file_falls_back_to_previous_copy(run: Run) -> None:
    # Truncate the current copy at every byte offset: each time the .bak (A) is what loads.
    got = run(f"""
p = T + "/rec"
store.save(p, {A!r})
store.save(p, {B!r})
full = rd(p)
res = []  # (offset, what loaded) wherever it was not A
for k in range(len(full)):
    wr(p, full[:k])
    v = store.load(p, "MISSING")
    if v != {A!r}:
        res.append([k, v])
# The next save must not rotate the garbage into .bak: the good old copy stays there.
store.save(p, {C!r})
out([len(full), res, store.load(p), store.load(p + ".bak"), seq_of(p)])
""")
    size, res, now, bak, seq = got
    assert size > 11 + 8 + 50  # the whole file, header to checksum, was torn
    assert res == []
    assert (now, bak, seq) == (C, A, 2)


def test_torn_tmp_during_save_keeps_current_copy(run: Run) -> None:
    # A power cut while .tmp is written: every prefix of it is ignored, the full one wins.
    got = run(f"""
s = T + "/scratch"
store.save(s, {A!r})
store.save(s, {B!r})
store.save(s, {C!r})
c3 = rd(s)
p = T + "/rec"
store.save(p, {A!r})
store.save(p, {B!r})
res = []  # (offset, what loaded) wherever it was not B
for k in range(len(c3)):
    wr(p + ".tmp", c3[:k])
    v = store.load(p, "MISSING")
    if v != {B!r}:
        res.append([k, v])
wr(p + ".tmp", c3)
out([len(c3), res, store.load(p)])
""")
    size, res, full = got
    assert size > 11 + 8
    assert res == []
    assert full == C


def test_bit_flip_detected(run: Run) -> None:
    got = run(f"""
p = T + "/rec"
store.save(p, {A!r})
store.save(p, {B!r})
good = rd(p)
res = []  # (offset, what loaded) wherever it was not A
for i in range(len(good)):
    wr(p, flip(good, i))
    v = store.load(p, "MISSING")
    if v != {A!r}:
        res.append([i, v])
wr(p, good)
intact = store.load(p)
bak = rd(p + ".bak")
wr(p + ".bak", flip(bak, 20))
bak_only = store.load(p)
wr(p, flip(good, 20))
both = store.load(p, "MISSING")
out([len(good), res, intact, bak_only, both])
""")
    size, res, intact, bak_only, both = got
    assert size > 11 + 8 + 50
    assert res == []
    assert (intact, bak_only, both) == (B, B, "MISSING")


def test_a_save_never_commits_over_a_damaged_copy(run: Run) -> None:
    """save() checks each copy's checksum before it decides what to keep: a damaged current
    copy (same size, one bit flipped) is discarded, never kept as .bak in place of the good
    older one, and a damaged .tmp with a higher seq is not taken for a finished save. So a
    later torn write still falls back to a copy that verifies."""
    got = run(f"""
p = T + "/rec"
store.save(p, {A!r})
store.save(p, {B!r})
wr(p, flip(rd(p), 20))                  # B damaged in place
store.save(p, {C!r})
wr(p, rd(p)[:-3])                       # C torn: what is left must verify
fell_back = store.load(p, "MISSING")
q = T + "/rec2"
store.save(q, {A!r})
store.save(q, {B!r})
b = bytearray(rd(q))
b[3:7] = struct.pack("<I", seq_of(q) + 5)    # a .tmp that claims to be newer, not sealed
wr(q + ".tmp", flip(bytes(b), 30))
store.save(q, {C!r})
wr(q, rd(q)[:-3])
tmp_fell_back = store.load(q, "MISSING")
out([fell_back, tmp_fell_back])
""")
    assert got == [A, B]


def test_corrupt_length_field_does_not_allocate(run: Run) -> None:
    # A length claiming ~4 GB must be rejected by the size check, not by a MemoryError.
    got = run(f"""
p = T + "/rec"
store.save(p, {A!r})
store.save(p, {B!r})
b = bytearray(rd(p))
b[7:11] = struct.pack("<I", 0xFFFFFFF0)
wr(p, bytes(b))
out(store.load(p, "MISSING"))
""")
    assert got == A


def test_leftover_tmp_newer_than_current_is_used(run: Run) -> None:
    got = run(f"""
s = T + "/scratch"
imgs = []
for v in ({objs(A, B, C)}):
    store.save(s, v)
    imgs.append(rd(s))
a1, b2, c3 = imgs
p = T + "/rec"
res = []
# Crash after .tmp was written, before the rotation.
wr(p, b2)
wr(p + ".bak", a1)
wr(p + ".tmp", c3)
res.append(store.load(p))
# The next save finishes that commit first, so .bak ends up holding C (not B).
store.save(p, {D!r})
res.append([store.load(p), store.load(p + ".bak"), seq_of(p), exists(p + ".tmp")])
# Crash between "current -> .bak" and ".tmp -> current": only .bak and .tmp exist.
store.remove(p)
wr(p + ".bak", b2)
wr(p + ".tmp", c3)
res.append(store.load(p))
# A stale .tmp (older than the current copy) is ignored, and overwritten by the next save.
store.remove(p)
wr(p, b2)
wr(p + ".tmp", a1)
res.append(store.load(p))
store.save(p, {D!r})
res.append([store.load(p), store.load(p + ".bak"), seq_of(p)])
out(res)
""")
    assert got == [C, [D, C, 4, False], C, B, [D, B, 3]]


def test_remove_discards_all_copies(run: Run) -> None:
    got = run(f"""
p = T + "/rec"
store.save(p, {A!r})
store.save(p, {B!r})
wr(p + ".tmp", b"junk")
before = [exists(p + x) for x in ("", ".bak", ".tmp")]
store.remove(p)
after = [exists(p + x) for x in ("", ".bak", ".tmp")]
store.save(p, {C!r})
out([before, after, store.load(T + "/rec", "GONE") == {C!r}, seq_of(p)])
""")
    assert got == [[True, True, True], [False, False, False], True, 1]


def test_on_disk_format(tmp_path: Path) -> None:
    p = str(tmp_path / "rec")
    store.save(p, A)
    store.save(p, B)
    raw = (tmp_path / "rec").read_bytes()
    payload = json.dumps(B).encode()
    hdr = b"ST1" + struct.pack("<II", 2, len(payload))
    assert raw == hdr + payload + hashlib.sha256(hdr + payload).digest()[:8]
    bak = (tmp_path / "rec.bak").read_bytes()
    assert bak[:7] == b"ST1" + struct.pack("<I", 1)


def test_non_serialisable_raises_and_writes_nothing(tmp_path: Path) -> None:
    p = str(tmp_path / "rec")
    store.save(p, A)
    before = sorted(x.name for x in tmp_path.iterdir()), (tmp_path / "rec").read_bytes()
    with pytest.raises(TypeError):
        store.save(p, {"k": object()})
    assert (sorted(x.name for x in tmp_path.iterdir()), (tmp_path / "rec").read_bytes()) == before
    assert store.load(p) == A


def test_files_cross_between_cpython_and_micropython(
        micropython: Callable[..., str], tmp_path: Path) -> None:
    p = str(tmp_path / "rec")
    store.save(p, A)
    store.save(p, B)
    out = micropython(f"""
import json, store
p = {p!r}
print(json.dumps(store.load(p)))
store.save(p, {C!r})
""")
    assert json.loads(out) == B
    assert store.load(p) == C
    assert store.load(p + ".bak") == B
    assert (tmp_path / "rec").read_bytes()[3:7] == struct.pack("<I", 3)
