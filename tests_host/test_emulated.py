"""The emulated Cortex-M0+ board (QEMU, ARMv6-M): built from registry packages (cached),
booted, reached over its pty through host_tools.transport.serial.Board exactly as a Pico is,
and running the firmware's crypto compiled for armv6m: the FIPS 180-4 SHA-256 vectors of the
port's C hashlib, the RFC 7748 X25519 vectors with the machine-code ladder and with the pure
Python fallback, the iterated RFC vector (1,000) and the 518 Wycheproof vectors with the
machine code, and the instruction count of one X25519 against the 15 M-cycle goal.

The toolchain (gcc-arm-none-eabi, libnewlib-arm-none-eabi, qemu-system-arm) is installed with
apt-get when missing; the tests skip only where that cannot be done. The quick component
bench (C1–C5, C13/C14, one metrology tick: host_tools.bench.components) runs here too; the
Cortex-M4 board and the RP2040 cycle model (rp2040js, from npm) run with
`make bench-emulated` (METER_EMU_FULL=1)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from host_tools.bench import components
from host_tools.bench.results import Result
from host_tools.emu import x25519_gen
from host_tools.emu.bench import M0PLUS_CPI, emulated_board, upload_libs
from host_tools.emu.build import apt_available, board_spec, missing_tools
from host_tools.transport.serial import Board

from .test_crypto_cpython import (
    ALICE_PK,
    ALICE_SK,
    BOB_PK,
    BOB_SK,
    DH_SHARED,
    HMAC_VECTORS,
    LOW_ORDER_U,
    X25519_ITERATED,
    X25519_VECTORS,
    ref_hmac,
    ref_x25519,
)

needs_toolchain = pytest.mark.skipif(
    bool(missing_tools()) and not apt_available(),
    reason=f"emulated boards need {', '.join(missing_tools())} and apt-get (as root) is not "
           "available to install them")

# FIPS 180-4 / NIST example vectors: (message, SHA-256)
SHA256_VECTORS = [
    (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    (b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
     "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
    (b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopq"
     b"klmnopqrlmnopqrsmnopqrstnopqrstu",
     "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"),
]
MILLION_A = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"


@pytest.fixture(scope="module")
def board() -> Iterator[Board]:
    with emulated_board("m0plus") as (_, b):
        upload_libs(b, board_spec("m0plus"))
        yield b


def lines(b: Board, code: str) -> list[str]:
    return b.exec(code).decode().split()


@needs_toolchain
def test_boots_as_an_armv6m_board(board: Board) -> None:
    info = board.info()
    assert info.platform == "emulated"
    assert info.arch == "armv6m"
    assert "Cortex-M0+" in info.machine
    assert board.eval("__import__('machine').freq()") == 125_000_000


@needs_toolchain
def test_ram_filesystem_as_the_firmware_uses_flash(board: Board) -> None:
    """What lib/store.py, lib/ringlog.py and tasks/dc_rare.py do to flash, on the RAM
    filesystem (ramfs.c): "r+b" writes in place at a seek and reads back, and cannot be made
    on a missing file; rename replaces; listdir(dir) lists only dir's names; mkdir says
    EEXIST; the sleep ends at its time."""
    code = """
import os, time
for p in ('t6/a.bin', 't6/b.bin', 't6/sub/c.bin'):
    with open(p, 'wb') as f:
        f.write(b'0123456789')
with open('t6/a.bin', 'r+b') as f:
    f.seek(4)
    f.write(b'xy')
    f.seek(0)
    print(f.read())
    f.seek(8)
    f.write(b'ABCD')
with open('t6/a.bin', 'rb') as f:
    print(f.read())
try:
    open('t6/none.bin', 'r+b')
except OSError as e:
    print('ENOENT', e.errno == 2)
os.rename('t6/a.bin', 't6/b.bin')
print(sorted(os.listdir('t6')), sorted(os.listdir('/t6/')))
with open('t6/b.bin', 'rb') as f:
    print(f.read())
try:
    os.mkdir('t6')
except OSError as e:
    print('EEXIST', e.errno == 17)
os.mkdir('t6/new')
try:
    os.rename('t6/none.bin', 't6/x.bin')
except OSError:
    print('rename missing: OSError')
for p in ('t6/b.bin', 't6/sub/c.bin'):
    os.remove(p)
t = time.ticks_us()
time.sleep_ms(50)
print(50000 <= time.ticks_diff(time.ticks_us(), t) < 50200)
"""
    out = board.exec(code).decode().splitlines()
    assert out == ["b'0123xy6789'", "b'0123xy67ABCD'", "ENOENT True",
                   "['b.bin', 'sub'] ['b.bin', 'sub']", "b'0123xy67ABCD'", "EEXIST True",
                   "rename missing: OSError", "True"], out


@needs_toolchain
def test_sha256_fips_vectors(board: Board) -> None:
    msgs = [m.hex() for m, _ in SHA256_VECTORS]
    code = f"""
import hashlib
for m in {msgs!r}:
    print(hashlib.sha256(bytes.fromhex(m)).digest().hex())
h = hashlib.sha256()
chunk = b"a" * 1000
for _ in range(1000):
    h.update(chunk)
print(h.digest().hex())
# digest() does not end the hash; odd-sized updates across block edges
h = hashlib.sha256(b"ab")
d1 = h.digest()
for n in (1, 63, 64, 65, 127):
    h.update(bytes(range(n)))
print(d1.hex(), h.digest().hex())
"""
    data = b"ab" + b"".join(bytes(range(n)) for n in (1, 63, 64, 65, 127))
    want = [d for _, d in SHA256_VECTORS] + [MILLION_A, hashlib.sha256(b"ab").hexdigest(),
                                              hashlib.sha256(data).hexdigest()]
    assert lines(board, code) == want


@needs_toolchain
def test_hmac_rfc4231_on_the_c_hashlib(board: Board) -> None:
    code = f"""
import hmac_sha256
for k, d in {[(k, d) for k, d, _ in HMAC_VECTORS]!r}:
    print(hmac_sha256.hmac_sha256(bytes.fromhex(k), bytes.fromhex(d)).hex())
"""
    assert lines(board, code) == [ref_hmac(bytes.fromhex(k), bytes.fromhex(d)).hex()
                                  for k, d, _ in HMAC_VECTORS]


X25519_CODE = f"""
import x25519, emu
h = bytes.fromhex
assert x25519._THUMB is not None  # the board runs the machine code
if not THUMB:
    x25519._THUMB = None
for k, u in {[(k, u) for k, u, _ in X25519_VECTORS]!r}:
    print(x25519.x25519(h(k), h(u)).hex())
print(x25519.x25519(x25519.BASE_POINT, x25519.BASE_POINT).hex())
print(x25519.public_key(h({ALICE_SK!r})).hex(), x25519.public_key(h({BOB_SK!r})).hex())
print(x25519.shared_secret(h({ALICE_SK!r}), h({BOB_PK!r})).hex())
sk = bytes(range(32))
for u in {LOW_ORDER_U!r}:
    try:
        x25519.shared_secret(sk, h(u))
        print("accepted")
    except ValueError:
        print("rejected")
t0 = emu.count()
x25519.x25519(h({X25519_VECTORS[0][0]!r}), h({X25519_VECTORS[0][1]!r}))
print(emu.count() - t0)
"""


@needs_toolchain
@pytest.mark.parametrize("thumb", [True, False], ids=["machine-code", "pure-python"])
def test_x25519_rfc7748_on_the_board(board: Board, thumb: bool,
                                     figure: Callable[[str], None]) -> None:
    out = lines(board, f"THUMB = {thumb}\n" + X25519_CODE
                + ("" if thumb else "x25519._THUMB = x25519._load_thumb()\n"))
    want = [o for _, _, o in X25519_VECTORS] + [X25519_ITERATED[1], ALICE_PK, BOB_PK,
                                                DH_SHARED] + ["rejected"] * len(LOW_ORDER_U)
    assert out[:-1] == want
    insns = int(out[-1])
    figure(f"[emulated Cortex-M0+] one X25519, {'machine code' if thumb else 'pure Python'}:"
          f" {insns:,} instructions (~{insns * M0PLUS_CPI / 1e6:.1f} M cycles at CPI "
          f"{M0PLUS_CPI}, {insns * M0PLUS_CPI / 125e3:.0f} ms at 125 MHz)")
    if thumb:
        assert insns * M0PLUS_CPI <= 15_000_000  # issue 8's goal: at most 15 M M0+ cycles


@needs_toolchain
def test_x25519_random_inputs_match_cryptography(board: Board) -> None:
    rng = random.Random(25519)
    xs = [(rng.randbytes(32), rng.randbytes(32)) for _ in range(12)]
    # u values near and above p, and with the top bit set
    p = 2**255 - 19
    xs += [(rng.randbytes(32), (p + d).to_bytes(32, "little")) for d in (-2, 2, 18)]
    xs += [(rng.randbytes(32), (2**256 - 1 - d).to_bytes(32, "little")) for d in (0, 5)]
    code = f"""
import x25519
for sk, u in {[(a.hex(), b.hex()) for a, b in xs]!r}:
    print(x25519.x25519(bytes.fromhex(sk), bytes.fromhex(u)).hex())
"""
    assert lines(board, code) == [ref_x25519(sk, u).hex() for sk, u in xs]


@needs_toolchain
def test_x25519_heap_use_is_small(board: Board) -> None:
    code = """
import gc, x25519
gc.collect()
free = gc.mem_free()
gc.disable()
x25519.public_key(bytes(range(32)))
print(free - gc.mem_free())
gc.enable()
"""
    assert int(lines(board, code)[0]) < 8_000  # bytes allocated by one X25519


@needs_toolchain
def test_x25519_all_wycheproof_vectors_on_the_board(board: Board, tmp_path: Path) -> None:
    """The 518 Project Wycheproof vectors by the ARMv6-M machine code on the board, read from
    a host file through QEMU's semihosting, as test_x25519_v7m does on the M4 and M33: the
    first 4 bytes of each result and a SHA-256 of all of them."""
    from .test_x25519_v7m import check_wycheproof_on_board  # it imports this module

    check_wycheproof_on_board(board, "armv6-m", tmp_path, "m0plus")


@needs_toolchain
def test_x25519_1000_iterations_on_the_board(board: Board) -> None:
    """RFC 7748 section 5.2's iterated vector (k, u <- X25519(k, u), k) by the machine code."""
    out = lines(board, """
import x25519
assert x25519.IMPL == "armv6-m"
k = u = x25519.BASE_POINT
for _ in range(1000):
    k, u = x25519.x25519(k, u), k
print(k.hex())
""")
    assert out == [X25519_ITERATED[1000]]


@needs_toolchain
def test_machine_code_module_is_generated_from_its_source() -> None:
    code = x25519_gen.assemble(x25519_gen.source())
    assert x25519_gen.OUT.read_text() == x25519_gen.render(code), (
        "firmware/lib/x25519_thumb.py is stale: run python -m host_tools.emu gen-x25519")


@needs_toolchain
@pytest.mark.skipif(not os.environ.get("METER_EMU_FULL"),
                    reason="the Cortex-M4 board runs with make bench-emulated")
def test_m4_board_runs_the_rfc_vectors() -> None:
    with emulated_board("m4") as (_, b):
        assert b.info().arch == "armv7emsp"
        upload_libs(b, board_spec("m4"), ("x25519_thumb", "x25519_v7m", "x25519"))
        out = lines(b, "THUMB = True\n" + X25519_CODE)
    assert out[:len(X25519_VECTORS)] == [o for _, _, o in X25519_VECTORS]


@needs_toolchain
def test_machine_code_finish_reduces_fully(board: Board) -> None:
    """Op 1 with Z2 = 1 is X2 mod p: the multiply's weak reduction and the branch-free final
    one, at the edges (p, 2^255, 2^256 - 1, ...); Z2 = 0 gives 0."""
    p = 2**255 - 19
    vals = [0, 1, 18, 19, p - 1, p, p + 1, 2**255 - 1, 2**255, 2**255 + 18, 2**255 + 19,
            2 * p - 1, 2 * p, 2**256 - 39, 2**256 - 38, 2**256 - 1]
    code = f"""
import x25519
run, code, (size, x1, x2, x3, z3, ks, res, op_ladder, op_finish) = x25519._THUMB
z2 = {x25519_gen.Z2}
for v, z in {[(v, 1) for v in vals] + [(5, 0), (p, 0)]!r}:
    st = bytearray(size)
    st[x2:x2 + 32] = v.to_bytes(32, "little")
    st[z2:z2 + 32] = z.to_bytes(32, "little")
    run(code, op_finish, st, 0)
    print(int.from_bytes(st[res:res + 32], "little"))
"""
    assert [int(x) for x in lines(board, code)] == [v % p for v in vals] + [0, 0]


def elster_of(d: dict[str, Any], test: str, size: int | None,
              variant: str | None) -> dict[str, Any]:
    """Elster's figure beside one of the bench JSON's results."""
    for r in d["results"]:
        if (r["test"], r["size"], r["variant"]) == (test, size, variant):
            return dict(r["elster"])
    raise KeyError((test, size, variant))


@needs_toolchain
def test_quick_component_bench_through_the_cli(tmp_path: Path,
                                               figure: Callable[[str], None]) -> None:
    """Issue 8's `meterctl bench --emulated m0plus --quick`, through the CLI (one run): C1–C5,
    C13/C14 and one metrology tick through the same on-board code as on a virtual meter
    (host_tools.bench.components.run_emulated, which checks every key, pair key and
    ciphertext against `cryptography`), printed in instructions, estimated M0+ cycles and ms
    at 125 MHz beside Elster's figures, each table naming the platform."""
    from host_tools.emu.bench import render

    spec = board_spec("m0plus")
    proc = subprocess.run(
        [sys.executable, "-m", "host_tools.cli", "bench", "--emulated", "m0plus", "--quick",
         "--runs", "1", "--json", str(tmp_path / "b.json"), "--md", str(tmp_path / "b.md")],
        capture_output=True, text=True, timeout=600)
    # C12 - C11 <= 8 KB (issue 7's goal) may fail; that does not change the exit status
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert f"platform (components): {spec.label}" in out
    for test in ("C1", "C2", "C3", "C4", "C5"):
        table = out[out.index(f"\n{test} ") + 1:]
        table = table[:table.index("(ours: ")]
        head = table.splitlines()[1]
        for col in ("instructions (median)", "est. cycles (median)", "ms @ 125 MHz (median)",
                    "Elster AS300", "ratio"):
            assert col in head, (test, head)
        assert " ms " in table.splitlines()[2]  # Elster's figure, in ms
    assert "(ours: emulated Cortex-M0+ @125 MHz, zero-wait flash: a lower bound)" in out
    assert "124.9 ms" in out  # Elster's C1 at 3 members
    assert "PASS: C5 <= 1 ms at 50 members with the blinding precomputed" in out

    d = json.loads((tmp_path / "b.json").read_text())
    assert d["aborted"] is None and d["config"]["board"] == "m0plus"
    results = [Result(**{k: r[k] for k in ("test", "what", "unit", "samples", "platform",
                                          "size", "setup", "variant", "extra")})
               for r in d["results"]]
    by = {(r.test, r.size, r.variant): r for r in results}
    want: set[tuple[str, int | None, str | None]] = {
        (t, n, None) for t in ("C1", "C2", "C3", "C4", "C14") for n in (3, 50)}
    want |= {("C5", n, v) for n in (3, 50) for v in ("cold", "precomputed")}
    want |= {("C13", None, None), ("tick", None, None), ("C11", None, None),
             ("C12", None, None), ("C6", 50, "with LoPA")}
    assert want <= set(by), sorted(want - set(by))
    # issue 19 (4): the whole meter's share, one sample a 1-s window of 10 under --quick
    for variant in ("with LoPA", "with LoPA, Pico core 0"):
        c6 = by["C6", 50, variant]
        assert c6.unit == "%" and len(c6.samples) == 10
        assert all(0 < v < 100 for v in c6.samples)
        assert elster_of(d, "C6", 50, variant)["value"] == 30.11
    assert by["C6", 50, "with LoPA, Pico core 0"].median < by["C6", 50, "with LoPA"].median
    for r in results:
        assert r.platform == spec.label and (r.runs == 1 or r.test == "C6")
        if r.unit == "us":  # the count kept raw, the figure at the nominal clock
            assert r.extra["nominal_hz"] == 125_000_000 and r.extra["cpi_est"] == M0PLUS_CPI
            insns = r.extra["instructions"][0]
            assert r.samples[0] == pytest.approx(insns / 125, rel=1e-9)
            # the X25519 machine code's cycles by its own timing walk, the rest at the CPI
            calls = {"C1": 1, "C4": 1, "C3": (r.size or 1) - 1}.get(r.test, 0)
            mc_insns, mc_cycles = components._thumb_x25519_cost()
            assert r.extra["cycles_est"] == [round((insns - calls * mc_insns) * M0PLUS_CPI
                                                   + calls * mc_cycles)], r.test
    elster = {(r["test"], r["size"], r["variant"]): r["elster"] for r in d["results"]}
    assert elster["C1", 3, None]["value"] == 124.9 and elster["C1", 3, None]["unit"] == "ms"

    def count(test: str, n: int | None, variant: str | None = None) -> int:
        return int(by[test, n, variant].extra["instructions"][0])

    assert count("C1", 3) * M0PLUS_CPI < 15_000_000  # issue 8: X25519 in 15 M cycles
    assert by["C1", 3, None].extra["x25519"] == ["armv6-m"]
    assert count("C2", 3) < count("C1", 3)
    assert count("C4", 3) >= count("C1", 3)  # X25519 + HKDF
    assert count("C3", 50) > 45 * count("C4", 50)  # 49 pair keys
    assert count("C5", 50, "cold") > count("C5", 3, "cold")
    assert by["C5", 50, "precomputed"].samples[0] <= 1000  # issue 7's goal: 1 ms at 50
    assert 0 < by["C13", None, None].samples[0] < by["C14", 50, None].samples[0]
    assert by["C14", 50, None].samples[0] - by["C13", None, None].samples[0] <= 8192
    assert 0 < by["C11", None, None].samples[0] < by["C12", None, None].samples[0]
    md = (tmp_path / "b.md").read_text()
    assert "#### C1 create a key pair" in md and "| instructions (median) |" in md
    figure(spec.label + "\n" + render(results, spec))


@needs_toolchain
@pytest.mark.skipif(not os.environ.get("METER_EMU_FULL"),
                    reason="the rp2040js board runs with make bench-emulated")
def test_rp2040js_board_measures_x25519_cycles(figure: Callable[[str], None]) -> None:
    """The same ARMv6-M image on rp2040js, which counts RP2040 cycles: the RFC vector, and
    the measured cycles of one X25519 against issue 19's goal: at most 3.9 M, 1.2 times
    hand-written assembly (pornin/x25519-cm0, 3.23 M cycles)."""
    with emulated_board("rp2040") as (_, b):
        assert b.eval("__import__('emu').UNIT") == "cycles"
        upload_libs(b, board_spec("rp2040"), ("x25519_thumb", "x25519"))
        out = lines(b, "THUMB = True\n" + X25519_CODE)
    assert out[:len(X25519_VECTORS)] == [o for _, _, o in X25519_VECTORS]
    cycles = int(out[-1])
    figure(f"[emulated RP2040, rp2040js] one X25519: {cycles:,} cycles "
          f"({cycles / 125e3:.1f} ms at 125 MHz)")
    assert cycles <= 3_900_000


def test_report_columns_for_emulated_counts() -> None:
    """The bench's tables give an emulated board's count and the ms at its nominal clock
    (no toolchain needed: Results as run_emulated makes them)."""
    from host_tools.bench.report import component_tables

    def timing(test: str, insns: list[int], extra: dict[str, object]) -> Result:
        return Result(test, "t", "us", [i / 125 for i in insns], "emulated X", size=3,
                      extra={"instructions": insns, "nominal_hz": 125_000_000, **extra})

    m0 = timing("C1", [3_851_000, 3_851_200, 3_852_000],
                {"cycles_est": [4_956_237, 4_956_494, 4_957_524], "cpi_est": 1.36})
    (t,) = component_tables([m0])
    assert t.columns == ["size", "ours min / median / max", "unit", "instructions (median)",
                         "est. cycles (median)", "ms @ 125 MHz (median)", "runs",
                         "Elster AS300", "ratio"]
    assert t.rows[0][3:6] == ["3,851,200", "4,956,494", "30.81"]
    assert t.rows[0][7] == "124.9 ms"
    assert any("x 1.36" in n for n in t.notes) and t.notes[-1] == "ours: emulated X"
    (t4,) = component_tables([timing("C1", [3_843_720], {})])  # the M4: no estimate
    assert "est. cycles (median)" not in t4.columns and "instructions (median)" in t4.columns
    virtual = Result("C1", "t", "us", [20_000.0], "virtual board", size=3)
    (tv,) = component_tables([virtual])
    assert "ms (median)" in tv.columns and not any("instructions" in c for c in tv.columns)


def test_missing_toolchain_is_installed_with_apt_get(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh machine: only the Debian packages whose tool is missing are apt-get installed
    (what `make test` and `meterctl bench --emulated` rely on); without apt-get as root the
    error names them."""
    from host_tools.emu import build

    have: set[str] = {"arm-none-eabi-gcc"}  # the compiler, but no newlib and no QEMU
    calls: list[list[str]] = []

    def run(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        calls.append(list(args))
        if args[0] == "apt-get" and args[1] == "install":
            have.add("qemu-system-arm")
            have.add("newlib")
        if args[1:] == ["-print-file-name=nano.specs"]:
            out = "/usr/lib/nano.specs" if "newlib" in have else "nano.specs"
            return subprocess.CompletedProcess(args, 0, out + "\n", "")
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(build.shutil, "which",
                        lambda t: f"/usr/bin/{t}" if t in have or t == "apt-get" else None)
    monkeypatch.setattr(build.subprocess, "run", run)
    monkeypatch.setattr(build, "apt_available", lambda: True)
    assert build.missing_tools() == ["libnewlib-arm-none-eabi", "qemu-system-arm"]
    build.ensure_toolchain(quiet=True)
    apt = [c for c in calls if c[0] == "apt-get"]
    assert apt == [["apt-get", "update", "-qq"],
                   ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                    "libnewlib-arm-none-eabi", "qemu-system-arm"]]
    calls.clear()
    build.ensure_toolchain(quiet=True)  # nothing missing now: no apt-get at all
    assert not [c for c in calls if c[0] == "apt-get"]
    have.discard("qemu-system-arm")
    monkeypatch.setattr(build, "apt_available", lambda: False)
    with pytest.raises(build.ToolchainMissing, match="apt-get install qemu-system-arm"):
        build.ensure_toolchain(quiet=True)


@needs_toolchain
def test_heap_ratio_of_32_bit_objects_is_measured_on_both_vms() -> None:
    # The same probe on the emulated 32-bit board and on the virtual board's 64-bit VM: every
    # step measured on both, and the 32-bit heap is the smaller one (a probe that ran the same
    # VM twice, or measured nothing, would give 1.0 or 0).
    from host_tools.emu import heap32

    rows = heap32.compare("m0plus")
    assert {r.step for r in rows} >= set(heap32.MODULES)
    assert all(r.bytes32 > 0 and r.bytes64 > 0 for r in rows), rows
    objs = [r for r in rows if r.step not in heap32.MODULES]
    ratio = sum(r.bytes32 for r in objs) / sum(r.bytes64 for r in objs)
    assert 0.4 < ratio < 0.8, heap32.render(rows)
    assert "| **modules imported, total** |" in heap32.render(rows)


@needs_toolchain
def test_c6_whole_meter_share_on_the_m0plus(figure: Callable[[str], None]) -> None:
    """Issue 19 (4): the whole meter (meter.py's kernel and tasks) on the emulated M0+, 5
    emulated seconds each with a 3- and a 50-member group precomputing (interval 2 s, so that
    blindings fall in the run): every 1-s window's busy share, by the kernel's own
    accounting, is a share, no task faulted, the ciphertext the scripted head-end asked for
    came back under the aggregator's keys and unblinds with the members' pair keys to the
    modelled load's energy, and the bigger group costs the DC security task more."""
    from host_tools.emu import c6

    small = c6.run_c6("m0plus", 5, 3, 2)
    big = c6.run_c6("m0plus", 5, 50, 2)
    for r in (small, big):
        assert len(r.windows) == 5
        assert all(0 < s < 1 for s in r.shares()), r.shares()
        assert all(s < b for s, b in zip(r.meter_shares(), r.shares(), strict=True))
        assert not any(r.errors.values()), r.errors
        assert r.han[0] >= 4 and r.handled["metrology"] >= 4  # telegrams each second
        assert r.answers and r.answers[0].startswith("t="), r.answers
        # the first interval is partial (the meter boots into it); its x is at most a whole
        # interval's energy and not 0
        x = int(r.answers[0].rsplit("x=", 1)[1])
        assert 0 < x <= c6.expected_x(2) * 1.02, r.answers
    # 47 more pads each interval close (the whole meter's total moves by less than the spread
    # that the heap's layout gives the kernel's loop, so the task's own time is compared)
    assert big.task_share("dc_security") > 2 * small.task_share("dc_security")
    # a Pico's core 0: the off-switch's Core left to core 1, its proxy every 20 ms here
    core0 = c6.run_c6("m0plus", 5, 3, 2, core1=True)
    assert not any(core0.errors.values()) and core0.answers[0].startswith("t=")
    assert core0.task_share("offswitch") < small.task_share("offswitch") / 2
    assert max(core0.shares()) < min(small.shares())
    # issue 19's goal for a Pico's core 0: at most 10 % in estimated cycles (the median
    # window; 9.2 % here, 12.8 % before the kernel's passes were trimmed)...
    assert statistics.median(core0.shares()) * core0.cpi <= 0.10, c6.report(core0)
    # ... with one kernel pass for the steps on one grid: the proxy's 50 a second, LoPA's
    # rest and the WAN's input, no pass of its own for metrology, clock or the heartbeat
    # (52.8 a second; 57.4 when a late step left its grid and the heartbeat was off it)
    assert core0.passes / len(core0.windows) <= 54, c6.report(core0)
    figure(c6.report(big))
