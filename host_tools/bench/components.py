"""The component tests C1–C14 (issue 7) on one board: a virtual meter, a real Pico or
Pyboard, or an emulated board (issue 8).

The board times itself and the host repeats: every run's figure is kept. What runs where:

- C1–C5, C13/C14 and one metrology tick: over the raw REPL (main.py interrupted), through
  the firmware's own modules on the board (``host_tools/bench/onboard.py``: ``x25519``,
  ``lopa``, ``metro``, and the DC security task's request handlers and group code). The
  other group members are key pairs made here; every result is checked against
  ``cryptography`` (``host_tools/headend/lopa/ref.py``): a wrong key, pair key or ciphertext
  raises :class:`BenchAborted`, it is never a figure.
- C6 (busy share of each 1-s tick) and C7 (persisted LoPA bytes): on the running firmware over
  the authenticated WAN (``STATS``, and a 50-member group of host-made keys set up with
  ``GROUP_BEGIN``/``GROUP_KEYS``/``GROUP_COMMIT``, deleted afterwards); C8–C10 (file sizes,
  ``os.statvfs``) over the REPL with that group committed. They need a provisioned meter (its
  keys in ``keystore``); boards without main.py (the emulated ones) skip them.
- C11/C12: on the host, the .mpy bytes of the board's image (``host_tools.flash.build``)
  without and with the LoPA modules.

Units: timings in "us". On an emulated board the count it keeps (instructions or cycles) is
converted at its nominal clock (one instruction per cycle: a lower bound) and kept raw in
``extra``.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from host_tools.bench.onboard import PRELUDE
from host_tools.bench.results import BenchAborted, BenchInterrupted, Result
from host_tools.headend.lopa import codec, ref
from host_tools.transport.serial import Board, BoardError, BoardInfo

Progress = Callable[[str], None]
MASK32 = 0xFFFF_FFFF
BENCH_ME = 0x6265_6E63_6800_0001  # the board's member id in the bench's groups ("bench")
C6_SIZE = 50  # the group C6/C7–C9 are measured with (issue 7: "with LoPA at 50 members")
SUM_CHECK_MAX = 64  # check the group sum over every member up to this size (host pair keys)
# Members per GROUP_KEYS chunk over the WAN to the running meter of C6 (it holds a 50-member
# group and the whole firmware): 12, not the protocol's 25, so that its line, frame and payload
# each need a free block of ~0.5 KB, not ~1 KB, in a heap fragmented by a running meter
# (system.CHUNK says what failed, 2026-11-23). S3's bytes do not depend on it.
WAN_CHUNK = 12
KEY_WAIT_S = 2.0  # the longest one pair key may take on the running meter (C6 set-up)
STATS_GAP_S = 2.2
STATS_WAIT_S = 5.0  # between STATS requests: the reported 1-s window holds no other request
# What the LoPA modules are in an image (C11/C12).
LOPA_MODULES = ("/lib/lopa.mpy", "/lib/lopa_core.mpy", "/lib/lopa_noise.mpy", "/lib/x25519.mpy",
                "/lib/x25519_py.mpy", "/lib/x25519_thumb.mpy", "/lib/x25519_v7m.mpy",
                "/tasks/dc_security.mpy", "/tasks/dc_base.mpy", "/tasks/dc_keys.mpy",
                "/tasks/dc_setup.mpy", "/tasks/dc_rare.mpy", "/tasks/dc_round.mpy",
                "/tasks/dc_recover.mpy", "/tasks/dc_budget.mpy", "/tasks/dc_group.mpy")
# What the on-board bench imports; an emulated board (no flash image) gets these and what
# they import, found in the firmware's sources.
BENCH_IMPORTS = ("lopa", "metro", "x25519", "tasks.dc_security", "tasks.dc_setup",
                 "tasks.dc_round")
# The emulated boards have no extmod, so no json or binascii: store imports json (the bench
# never calls it), the DC security task logs ids with binascii.hexlify.
EMU_STUBS = {
    "/json.py": b"# no json on the emulated board: store imports it, the bench never uses it\n",
    "/binascii.py": b"def hexlify(b):\n    return bytes(b).hex().encode()\n",
}
# Modules the firmware imports only on an ARMv7E-M core (x25519.py: the UMAAL code): an ARMv6-M
# board is not given them (the rp2040 board's RAM filesystem, 40 KB, holds the rest with
# lib/metro_fast.py only without them).
V7EM_ONLY = ("x25519_v7m",)
ADC_RATE_HZ = 4000  # the metrology tick: one second of samples per channel (the Pico's rate)


@dataclass
class BoardKind:
    """How a board counts time and what to call it."""

    platform: str  # the label every Result carries
    arch: str | None  # mpy-cross -march of its image
    image_board: str  # the board definition whose image C11/C12 measure
    unit: str = "us"  # what the board's clock counts: us, or instructions / cycles
    nominal_hz: int = 0  # emulated boards: the clock counts are converted at
    emulated: str | None = None  # emulated board name (m0plus, m4, m33, rp2040)
    cpi_est: float | None = None  # instruction counts: the target's estimated cycles each


def host_cpu() -> str:
    from host_tools.sim.bench import cpu_model

    return cpu_model()


def board_kind(b: Board, info: BoardInfo | None = None) -> BoardKind:
    info = info or b.info()
    if info.platform == "emulated":
        from host_tools.emu.build import BOARDS

        unit, hz, name = b.eval("(__import__('emu').UNIT, __import__('emu').NOMINAL_HZ, "
                                "__import__('emu').BOARD)")
        emu = next((k for k, key in (("rp2040", "RP2040"), ("m33", "Cortex-M33"),
                                     ("m4", "Cortex-M4"), ("m3", "Cortex-M3"))
                    if key in name), "m0plus")
        spec = BOARDS[emu]
        image = {"m4": "stm32_pybv11", "m33": "rp2_pico2"}.get(emu, "rp2_pico")
        return BoardKind(spec.label, spec.mpy_arch, image, str(unit), int(hz), emu,
                         spec.cpi_est)
    if info.platform == "linux":
        return BoardKind(f"virtual board (unix VM {info.name} {info.version}) on {host_cpu()}",
                         info.arch, "virtual")
    from host_tools.flash.build import BuildError, board_for_platform
    from host_tools.sim.fleet import is_virtual_port

    try:
        image = board_for_platform(info.platform)
    except BuildError:
        image = ""
    if is_virtual_port(b.port):
        # a virtual meter under a board's port profile: the board's identity, the PC's speed
        return BoardKind(f"virtual board (unix VM micropython as {info.name} {info.version} on "
                         f"{info.machine}) on {host_cpu()}", info.arch, image)
    freq = b.eval("getattr(__import__('machine'), 'freq', lambda: 0)()")
    mhz = f", machine.freq() {int(freq) / 1e6:g} MHz" if freq else ""
    return BoardKind(f"{info.name} {info.version} on {info.machine}{mhz}", info.arch, image)


# -- talking to the board -------------------------------------------------------------------

class _Bench:
    """One board in the raw REPL with the on-board bench code loaded; collects Results."""

    def __init__(self, b: Board, kind: BoardKind, progress: Progress | None) -> None:
        self.b = b
        self.kind = kind
        self.say = progress or (lambda s: None)
        self.results: list[Result] = []
        self._by_key: dict[tuple[str, int | None, str | None], Result] = {}
        self.test = "C1"
        self.has_main = False
        self.x25519_impl = ""  # emulated boards: which X25519 code runs (x25519.IMPL)
        self.own_bytes = 0  # heap the bench's own buffers take on the board (C13/C14)

    def call(self, expr: str, doing: str) -> Any:
        try:
            out = self.b.exec(f"print('R', repr({expr}))", doing).decode(errors="replace")
        except BoardError as e:
            raise BenchAborted(self.test, str(e), self.results) from None
        for line in out.splitlines():
            if line.startswith("R "):
                return ast.literal_eval(line[2:])
        raise BenchAborted(self.test, f"{doing}: no answer from the board ({out.strip()[:80]!r})",
                           self.results)

    def run(self, code: str, doing: str) -> None:
        try:
            self.b.exec(code, doing)
        except BoardError as e:
            raise BenchAborted(self.test, str(e), self.results) from None

    def fail(self, message: str) -> BenchAborted:
        return BenchAborted(self.test, message, self.results)

    def add(self, test: str, what: str, unit: str, value: float, *, size: int | None = None,
            variant: str | None = None, extra: dict[str, Any] | None = None) -> Result:
        """Append one run's figure to its Result (made on first use)."""
        key = (test, size, variant)
        r = self._by_key.get(key)
        if r is None:
            r = Result(test, what, unit, [], self.kind.platform, size=size, variant=variant)
            self._by_key[key] = r
            self.results.append(r)
        r.samples.append(value)
        for k, v in (extra or {}).items():
            r.extra.setdefault(k, []).append(v)
        return r

    def timing(self, test: str, what: str, count: int, *, size: int | None = None,
               variant: str | None = None, extra: dict[str, Any] | None = None,
               x25519_calls: int = 0) -> None:
        """A timing as the board counted it: us, or an emulated count converted to us.
        ``x25519_calls``: how many X25519s the test runs, whose machine code's cycles are
        counted by its own timing walk where the estimate is made (_cycles_est)."""
        extra = dict(extra or {})
        if self.kind.nominal_hz:
            extra[self.kind.unit] = count
            if self.kind.cpi_est:  # the target's cycles, estimated from the instructions
                extra["cycles_est"] = self._cycles_est(count, x25519_calls)
            us = count * 1e6 / self.kind.nominal_hz
        else:
            us = float(count)
        r = self.add(test, what, "us", us, size=size, variant=variant, extra=extra)
        if self.kind.nominal_hz:
            r.extra["nominal_hz"] = self.kind.nominal_hz
        if self.kind.cpi_est:
            r.extra["cpi_est"] = self.kind.cpi_est


    def _cycles_est(self, count: int, x25519_calls: int) -> int:
        """Instructions x the board's CPI (1.36 on the M0+: the firmware's Python code under
        rp2040js), except the ARMv6-M X25519 machine code's: it runs at its own CPI (1.23),
        so its cycles come from the Cortex-M0+ timing walk of the generated code
        (x25519_gen.trace_counts, within 1 % of rp2040js: docs/BENCH.md)."""
        cpi = self.kind.cpi_est or 1.0
        if not x25519_calls or self.x25519_impl != "armv6-m":
            return round(count * cpi)
        mc_insns, mc_cycles = _thumb_x25519_cost()
        rest = max(0, count - x25519_calls * mc_insns)
        return round(rest * cpi + x25519_calls * mc_cycles)


@functools.cache
def _thumb_x25519_cost() -> tuple[int, int]:
    """(instructions, Cortex-M0+ cycles) of one X25519's ARMv6-M machine code."""
    from host_tools.emu.x25519_gen import trace_counts

    insns, cycles, _ = trace_counts()
    return insns, cycles


def firmware_modules(roots: tuple[str, ...] = BENCH_IMPORTS) -> list[tuple[Path, str]]:
    """(source, module name) of ``roots`` and every firmware module they import, statically
    or by name (``lazy.call("tasks.dc_rare", ...)``), found by reading the sources."""
    import ast as pyast
    import re

    from host_tools.flash.build import FIRMWARE_DIR

    def source(name: str) -> Path | None:
        if name == "tasks":
            return FIRMWARE_DIR / "tasks" / "__init__.py"
        if name.startswith("tasks."):
            p = FIRMWARE_DIR / "tasks" / f"{name[6:]}.py"
        else:
            p = FIRMWARE_DIR / "lib" / f"{name}.py"
        return p if p.exists() else None

    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        src = source(name)
        if name in seen or src is None:
            continue
        seen[name] = src
        text = src.read_text()
        for node in pyast.walk(pyast.parse(text)):
            if isinstance(node, pyast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, pyast.ImportFrom) and node.module:
                todo.append(node.module)
                if node.module == "tasks":
                    todo += [f"tasks.{a.name}" for a in node.names]
        todo += re.findall(r"lazy\.call\(\s*[\"']([\w.]+)[\"']", text)
        if name.startswith("tasks."):
            todo.append("tasks")
    return [(p, n) for n, p in sorted(seen.items())]


def upload_firmware_modules(b: Board, arch: str | None,
                            roots: tuple[str, ...] = BENCH_IMPORTS) -> None:
    """Put the modules the bench runs (``roots`` and what they import) into an emulated
    board's RAM filesystem, compiled for its architecture, as `meterctl flash` puts them into
    a Pico's flash."""
    from host_tools.flash.build import compile_one

    for src, name in firmware_modules(roots):
        if name in V7EM_ONLY and arch in ("armv6", "armv6m"):
            continue
        dest = "/" + name.replace(".", "/") + ("/__init__" if name == "tasks" else "") + ".mpy"
        _emu_put(b, dest, compile_one(src, dest, arch))
    for dest, data in EMU_STUBS.items():
        _emu_put(b, dest, data)


def _emu_put(b: Board, dest: str, data: bytes) -> None:
    # One exec per file, as hex: the emulated UART takes about 1,500 characters a second on a
    # loaded host, and hex is 2 characters a byte where mpremote's repr chunks take 3 to 4.
    code = f"import emu\nemu.put({dest!r}, bytes.fromhex({data.hex()!r}))"
    try:
        b.exec(code, f"writing {dest}")
    except BoardError:
        # On a very loaded host the pty can stall mid-paste: back into the raw REPL (the RAM
        # filesystem survives) and write the file once more.
        time.sleep(1.0)
        b.enter_raw(soft_reset=False)
        b.exec(code, f"writing {dest}")


# -- the host's side of a group ------------------------------------------------------------

@dataclass
class HostGroup:
    """The n-1 members other than the board: key pairs made here, in chunk order."""

    gid: bytes
    n: int
    members: list[tuple[int, bytes, bytes]]  # (id, sk, pk)
    chunks: list[bytes]  # GROUP_KEYS payloads, seq 1.. (seq 0 is the board's own record)
    host_keys: dict[tuple[int, int], bytes] = field(default_factory=dict)

    @classmethod
    def make(cls, gid: bytes, n: int, rng: random.Random, first_seq: int = 1,
             chunk: int = codec.CHUNK_MAX) -> HostGroup:
        ids: set[int] = {BENCH_ME}
        members: list[tuple[int, bytes, bytes]] = []
        while len(members) < n - 1:
            mid = rng.getrandbits(64)
            if mid in ids:
                continue
            ids.add(mid)
            sk, pk = ref.keypair(rng.randbytes(32))
            members.append((mid, sk, pk))
        chunks = []
        for seq, k in enumerate(range(0, len(members), chunk)):
            part = [(mid, pk) for mid, _, pk in members[k:k + chunk]]
            chunks.append(codec.group_keys_cmd(gid, first_seq + seq, part))
        return cls(gid, n, members, chunks)

    def board_keys(self, board_pk: bytes) -> dict[int, bytes]:
        """K_{j,board} for every member j, from j's private key (the host's side)."""
        return {mid: ref.pair_key(sk, board_pk, self.gid, mid, BENCH_ME)
                for mid, sk, _ in self.members}

    def keys_digest(self, keys: dict[int, bytes]) -> str:
        h = hashlib.sha256()
        for mid, _, _ in self.members:
            h.update(mid.to_bytes(8, "big") + keys[mid])
        return h.hexdigest()

    def group_sum_ok(self, keys: dict[int, bytes], t: int, x_board: int, c_board: int,
                     rng: random.Random) -> bool:
        """Every other member encrypts a reading for round t with its own pair keys: the
        ciphertexts of the whole group sum to the readings' sum (mod 2^32)."""
        if not self.host_keys:
            for a, (ia, ska, _) in enumerate(self.members):
                for ib, _, pkb in self.members[a + 1:]:
                    self.host_keys[ia, ib] = self.host_keys[ib, ia] = ref.pair_key(
                        ska, pkb, self.gid, ia, ib)
        xs = x_board
        cs = c_board
        for mid, _, _ in self.members:
            pk = {BENCH_ME: keys[mid]}
            for other, _, _ in self.members:
                if other != mid:
                    pk[other] = self.host_keys[mid, other]
            x = rng.getrandbits(20)
            xs += x
            cs += x + ref.blinding(pk, mid, self.gid, t)
        return (cs & MASK32) == (xs & MASK32)


# -- C1–C5, C13/C14 and the metrology tick over the REPL ------------------------------------

def _repl_components(bench: _Bench, sizes: list[int], runs: int, rng: random.Random) -> None:
    say = bench.say
    bench.test = "C1"
    bench.run(PRELUDE.format(me=BENCH_ME), "loading the bench code (firmware modules)")
    for size in sizes:
        gid = f"bench{size}".encode()
        say(f"C1-C5 with {size} members: {size - 1} host key pairs")
        group = HostGroup.make(gid, size, rng)
        bench.test = "C3"
        bench.run("_PK[:] = []", "clearing the group's keys")
        before = bench.call("b_ram()", "heap in use")[0]
        for chunk in group.chunks:
            bench.run(f"_PK.append(bytes.fromhex({chunk.hex()!r}))", "sending the group's keys")
        # The members' records the bench sends from are its own, not the meter's: they are
        # not counted in C13/C14.
        bench.own_bytes = max(0, bench.call("b_ram()", "heap in use")[0] - before)
        for run in range(runs):
            say(f"  {size} members, run {run + 1}/{runs}")
            _one_run(bench, group, size, rng, first=size == sizes[0])
    bench.run("b_drop()", "dropping the group")


def _one_run(bench: _Bench, group: HostGroup, size: int, rng: random.Random,
             first: bool) -> None:
    """One run of C1–C5, C13/C14 and the tick (C13 and the tick only with the first size:
    they do not depend on it)."""
    gid = group.gid
    bench.test = "C1"
    count, sk_hex, pk_hex = bench.call("b_c1()", "C1: making a key pair")
    pk = bytes.fromhex(pk_hex)
    if ref.keypair(bytes.fromhex(sk_hex))[1] != pk:
        raise bench.fail("the board's public key is not X25519(sk, 9) (checked with "
                         "cryptography)")
    bench.timing("C1", "create a key pair: 32 bytes of os.urandom and x25519.public_key",
                 count, size=size,
                 extra={"x25519": bench.x25519_impl} if bench.x25519_impl else None,
                 x25519_calls=1)

    bench.test = "C2"
    count, code, pk2 = bench.call("b_c2()", "C2: reading the public key")
    if code != 0 or bytes.fromhex(pk2) != pk:
        raise bench.fail(f"the PUBKEY handler answered code {code} / another key")
    bench.timing("C2", "read the public key: the DC security task's PUBKEY handler (answers "
                 "the key it holds in RAM: no import, no collection)",
                 count, size=size)

    bench.test = "C3"
    status, count, digest = bench.call(f"b_c3({gid!r}, {size})", f"C3: a {size}-member group")
    if status != "ok":
        limit = (f"a {size}-member group does not fit: {digest} after {count} members"
                 if digest in ("MemoryError", "out of memory")
                 else f"a {size}-member group is refused by the firmware: {digest}")
        raise bench.fail(limit)
    keys = group.board_keys(pk)
    if digest != group.keys_digest(keys):
        raise bench.fail("the board's pair keys differ from the members' own (checked with "
                         "cryptography)")
    bench.timing("C3", f"create group keys for all members: GROUP_KEYS chunks of up to "
                 f"{codec.CHUNK_MAX} through the DC security task, one X25519 + HKDF per step "
                 f"({size - 1} pair keys)", count, size=size, x25519_calls=size - 1)

    bench.test = "C4"
    mid, _, pkj = group.members[0]
    count, k_hex = bench.call(f"b_c4({gid!r}, {mid}, {pkj.hex()!r})", "C4: one pair key")
    if bytes.fromhex(k_hex) != keys[mid]:
        raise bench.fail("the board's pair key differs from the member's (cryptography)")
    bench.timing("C4", "create the group key for one member: lopa.pair_key (X25519 + "
                 "HKDF-SHA256), one set-up step", count, size=size, x25519_calls=1)

    bench.test = "C5"
    x_cold, x_hot = rng.getrandbits(20), rng.getrandbits(20)
    cold, hot, t, c_cold, c_hot, fw_cold, fw_hot = bench.call(
        f"b_c5({gid!r}, {x_cold}, {x_hot})", "C5: encrypting one value")
    for x, c, tt in ((x_cold, c_cold, t), (x_hot, c_hot, t + 1)):
        if c != (x + ref.blinding(keys, BENCH_ME, gid, tt)) & MASK32:
            raise bench.fail(f"the board's ciphertext for round {tt} is not x + b(t) "
                             "(cryptography)")
    if size <= SUM_CHECK_MAX and not group.group_sum_ok(keys, t, x_cold, c_cold, rng):
        raise bench.fail("the group's ciphertexts do not sum to the readings' sum")
    fw = {} if bench.kind.nominal_hz else {"firmware_us": fw_cold}
    bench.timing("C5", f"encrypt one value, cold: the DC security task's interval handling "
                 f"with the blinding not ready: {size - 1} HMAC-SHA256 pads, the sum, the "
                 f"addition", cold, size=size, variant="cold", extra=fw)
    fw = {} if bench.kind.nominal_hz else {"firmware_us": fw_hot}
    bench.timing("C5", "encrypt one value, precomputed: the DC security task's interval "
                 "handling with the blinding made in idle time before the boundary (the "
                 "addition, and the next interval's job started)", hot, size=size,
                 variant="precomputed", extra=fw)

    bench.test = "C14"
    alloc, free = bench.call("b_ram()", "C14: heap in use")
    alloc -= bench.own_bytes
    bench.add("C14", f"heap in use with one committed {size}-member group, after a round "
              f"(the next blinding precomputed): {RAM_WHAT}", "bytes", alloc, size=size,
              extra={"free": free, "bench_buffers_not_counted": bench.own_bytes})
    bench.test = "C13"
    bench.run("b_drop()", "dropping the group")
    if first:
        alloc, free = bench.call("b_ram()", "C13: heap in use")
        bench.add("C13", f"heap in use without a group: {RAM_WHAT}", "bytes",
                  alloc - bench.own_bytes,
                  extra={"free": free, "bench_buffers_not_counted": bench.own_bytes})

    bench.test = "tick"
    count, r, native = bench.call(f"b_tick({ADC_RATE_HZ})", "one metrology tick")
    if r is None or abs(r[5] - 50.0) > 0.5 or abs(r[0] - 20000 / 16 / 2 ** 0.5) > 15:
        raise bench.fail(f"the metrology tick measured {r!r}, not the 50 Hz test wave")
    if first:
        path = ("the per-sample sums in viper, lib/metro_fast.py" if native else
                "the pure-Python path: the board has no native code for lib/metro_fast.py")
        bench.timing("tick", f"one metrology tick: a second of samples ({ADC_RATE_HZ} per "
                     "channel, V and I) through metro.Accumulator.feed in 8 chunks, result() "
                     f"and Energy.add, as the metrology task does each second ({path})", count,
                     extra={"native": native})


RAM_WHAT = ("gc.mem_alloc() after gc.collect() in the bench's steady state on the board "
            "(main.py stopped): the firmware's LoPA modules imported (lopa, hmac_sha256, "
            "tasks.dc_security; x25519 and tasks.dc_setup dropped again between requests, as "
            "the firmware does) and a DC security object holding a key pair; the bench's own "
            "buffers (the members' records it sends from) not counted")


# -- C11/C12 on the host --------------------------------------------------------------------

def code_size(bench: _Bench) -> None:
    from host_tools.flash.build import BuildError, build_image

    kind = bench.kind
    bench.test = "C11"
    if not kind.image_board:
        return
    try:
        files = build_image(kind.image_board, kind.arch)
    except BuildError as e:
        raise bench.fail(f"building the {kind.image_board} image: {e}") from None
    total = sum(len(f.data) for f in files)
    lopa = sum(len(f.data) for f in files if f.dest in LOPA_MODULES)
    what = (f"code size: bytes of the {kind.image_board} image for {kind.arch or 'bytecode'} "
            f"(.mpy, main.py as source), as meterctl flash deploys it")
    extra = {"modules": {f.dest: len(f.data) for f in files if f.dest in LOPA_MODULES}}
    for test, value, how in (("C11", total - lopa, " without the LoPA modules"),
                             ("C12", total, " with the LoPA modules")):
        r = Result(test, what + how, "bytes", [float(value)], kind.platform, extra=dict(extra))
        bench.results.append(r)


# -- C6–C10 on the running firmware -----------------------------------------------------------

class _Wan:
    """A MeterLink whose failures name the request, and whose read-only requests are asked
    once more when no answer came: on a loaded host a virtual meter now and then misses one
    (a new request has a new counter, so asking again is safe)."""

    AGAIN = (0x15, 0x21, 0x27, 0x28)  # STATS, PUBKEY, GROUPS, GROUP_DELETE
    TRIES = 3

    def __init__(self, link: Any) -> None:
        self.link = link
        self.entry = link.entry

    @property
    def timeout(self) -> float:
        return float(self.link.timeout)

    @timeout.setter
    def timeout(self, v: float) -> None:
        self.link.timeout = v

    def _ask(self, kind: int, fn: Callable[[], Any]) -> Any:
        from host_tools.headend import wire
        from host_tools.headend.client import LinkError

        name = wire.KIND_NAMES.get(kind, hex(kind))
        tries = self.TRIES if kind in self.AGAIN else 1
        for i in range(tries):
            try:
                return fn()
            except LinkError as e:
                if i == tries - 1:
                    raise LinkError(f"{name}{f' (asked {tries} times)' if i else ''}: {e}"
                                    ) from None
        raise AssertionError("unreachable")

    def request_raw(self, kind: int, payload: bytes) -> bytes:
        out: bytes = self._ask(kind, lambda: self.link.request_raw(kind, payload))
        return out

    def request(self, kind: int) -> Any:
        return self._ask(kind, lambda: self.link.request(kind))

    def __enter__(self) -> _Wan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.link.close()


def _meter_link(port: str, keystore: Path | None, timeout: float) -> _Wan:
    from host_tools.headend.client import open_link
    from host_tools.headend.keystore import Keystore

    return _Wan(open_link(port, Keystore(keystore), None, timeout))


def _stats(bench: _Bench, link: Any, runs: int, variant: str, extra: dict[str, Any],
           size: int | None = None) -> None:
    from host_tools.headend import wire

    for _ in range(runs):
        time.sleep(STATS_GAP_S)
        # A lost answer is asked again (see _Wan): wait for one only as long as a healthy
        # meter needs, not the whole timeout.
        link.timeout, was = min(link.timeout, STATS_WAIT_S), link.timeout
        try:
            st = link.request(wire.K_STATS)
        finally:
            link.timeout = was
        e = dict(extra)
        e["window_us"] = st["window_us"]
        dc = st["tasks"].get("dc_security")
        e["dc_security_pct"] = dc["cpu_pct"] if dc else None
        bench.add("C6", "CPU use: the busy share of one 1-s kernel window (STATS: the window "
                  "before the request, the time the kernel did not sleep), " + variant,
                  "%", float(st["cpu_pct"]), size=size, variant=variant, extra=e)


def _meter_phase(bench: _Bench, port: str, keystore: Path | None, runs: int, timeout: float,
                 rng: random.Random) -> None:
    """C6 without and with a 50-member group, C7 from the firmware's GROUPS answer; the
    group is left committed for C8–C10, and its gid returned for the clean-up."""
    from host_tools.headend import wire
    from host_tools.headend.client import LinkError, MeterError

    bench.test = "C6"
    try:
        with _meter_link(port, keystore, timeout) as link:
            _stats(bench, link, runs, "without LoPA", {"groups": _groups(link)["groups"]})
            bench.say(f"C6/C7: a {C6_SIZE}-member group on the running meter")
            ans = codec.parse_keygen(link.request_raw(wire.K_KEYGEN, codec.keygen_cmd(False)))
            commit = _set_up(link, BENCH_GID, C6_SIZE, link.entry.meter_id, ans.pk, rng,
                             timeout, begin_tries=3)
            g = _groups(link)
            _stats(bench, link, runs, "with LoPA", {"groups": len(g["groups"])},
                   size=C6_SIZE)
            bench.test = "C7"
            for _ in range(runs):
                bench.add("C7", "persisted bytes of the LoPA state: the key pair and every "
                          "group file (the DC security task's own count, GROUPS)", "bytes",
                          float(g["persisted_bytes"]), size=C6_SIZE,
                          extra={"group_file": commit.persisted, "ram_alloc": g["ram_alloc"]})
    except (LinkError, MeterError, BoardError, OSError) as e:
        raise bench.fail(f"on the running firmware: {e}") from None


BENCH_GID = b"bench-c6"


def _group_begin(link: Any, gid: bytes, n: int, tries: int) -> None:
    """GROUP_BEGIN, asked again after a pause when the meter says it has no memory: on a
    192 KB heap the free memory it checks moves with what the other tasks hold just then."""
    from host_tools.headend import wire
    from host_tools.headend.client import MeterError

    for i in range(tries):
        try:
            link.request_raw(wire.K_GROUP_BEGIN, codec.group_begin_cmd(gid, n, 0, 0.0))
            return
        except MeterError as e:
            if "no memory" not in str(e) or i == tries - 1:
                raise
            time.sleep(1.0)


def _groups(link: Any) -> dict[str, Any]:
    import json

    from host_tools.headend import wire

    out: dict[str, Any] = json.loads(link.request_raw(wire.K_GROUPS, b""))
    return out


FILES_CODE = """
import os
def _sz(p):
    try:
        return os.stat(p)[6]
    except OSError:
        return 0
_d = os.listdir('/data')
_lopa = sum(_sz('/data/' + n) for n in _d if n.startswith('dc_key') or n.startswith('lopa_'))
_st = os.statvfs('/data')
_p = _sz('/data/profile.bin')
if not _p:  # battery-backed RAM: the profile's window in each snapshot (lib/nvrec.py)
    try:
        import policy
        _p = policy.NVRAM_RINGS['/data/profile.bin'][1] * sum(
            1 for n in _d if n.startswith('nvram.'))
    except Exception:
        pass
print('R', repr((_lopa, _p, _sz('/data/clock.json'),
                 _sz('/data/energy.json'), _st[0] * _st[4], _st[0] * _st[2])))
"""


def _files_phase(bench: _Bench, runs: int) -> None:
    bench.test = "C8"
    raw = bench.b.exec(FILES_CODE, "reading file sizes").decode()
    line = next((ln for ln in raw.splitlines() if ln.startswith("R ")), None)
    if line is None:
        raise bench.fail(f"file sizes: no answer ({raw.strip()[:80]!r})")
    lopa, profile, clock, energy, free, total = ast.literal_eval(line[2:])
    for r in bench.results:
        if r.test == "C7":  # what the files take, .tmp/.bak copies included
            r.extra["on_fs_with_copies"] = lopa
    for _ in range(runs):
        bench.add("C8", "persisted bytes of the load profile the ciphertexts are made from "
                  "(/data/profile.bin, a ring of 192 32-byte records; with battery-backed RAM "
                  "its window in each snapshot /data/nvram.N); the ciphertexts "
                  "themselves are kept in RAM only (16 intervals per group)", "bytes",
                  float(profile))
        bench.add("C9", "persisted bytes of the capture objects: what each profile record "
                  "captures (/data/energy.json, the registers) and the interval "
                  "(/data/clock.json)", "bytes", float(clock + energy),
                  extra={"clock.json": clock, "energy.json": energy})
        bench.add("C10", "free file system space: os.statvfs('/data') f_bsize * f_bavail",
                  "bytes", float(free), extra={"total": total})


# -- the entry points ---------------------------------------------------------------------------

def run_components(port: str, *, sizes: list[int], runs: int, quick: bool,
                   progress: Callable[[str], None] | None = None,
                   keystore: Path | None = None, timeout: float = 30.0,
                   read_timeout: float = 10.0, exec_timeout: float = 10.0) -> list[Result]:
    """C1–C14 on one flashed (and, where needed, provisioned) board at `port`: a virtual
    meter, a real Pico, or an emulated board's pty. Returns one Result per
    test/size/variant; each Result.samples has `runs` entries and Result.platform names the
    platform. Raises BenchAborted(test, message, results_so_far) when the board disconnects
    or a size does not fit in the heap (test "C3"; the message names the limit: "a 600-member
    group is refused by the firmware: n 600 outside 3..512", or "a N-member group does not
    fit: out of memory after K members").

    `quick` changes nothing here (sizes and runs decide; capacity() has its own). C6–C10 run
    only on a board with main.py whose keys are in `keystore` (a provisioned meter); the
    emulated boards give C1–C5, C11–C14 and the tick. Besides C1..C14 there is one more test
    id, "tick": the metrology task's work for one second of samples."""
    if runs < 1:
        raise ValueError("runs must be at least 1")
    bad = [s for s in sizes if s < codec.N_MIN]
    if not sizes or bad:
        raise ValueError(f"group sizes must be at least {codec.N_MIN} members")
    rng = random.Random(int.from_bytes(os.urandom(8), "big"))
    say = progress or (lambda s: None)
    bench = _repl_phase(port, sorted(sizes), runs, timeout, rng, say,
                        (read_timeout, exec_timeout))
    code_size(bench)
    if not bench.has_main:
        return bench.results
    if not _provisioned(port, keystore):
        say("C6-C10 skipped: the meter is not in the keystore (meterctl provision)")
        return bench.results
    ok = False
    try:
        _meter_phase(bench, port, keystore, runs, timeout, rng)
        with _open(port, timeout, bench.results) as b:
            bench.b = b
            try:
                b.enter_raw(soft_reset=False)
                _files_phase(bench, runs)
            except BoardError as e:
                raise bench.fail(str(e)) from None
            finally:
                _back_to_main(b)
        ok = True
    except KeyboardInterrupt as e:
        raise e if isinstance(e, BenchInterrupted) else BenchInterrupted(bench.results) from None
    finally:
        # The bench's group goes, whatever happened (a failure here only matters when
        # nothing else failed before).
        try:
            _delete_bench_group(bench, port, keystore, timeout)
        except BenchAborted:
            if ok:
                raise
    return bench.results


def _open(port: str, timeout: float, results: list[Result],
          serial_timeouts: tuple[float, float] = (1.0, 10.0)) -> Board:
    """The board at ``port``; ``serial_timeouts``: Board's read_timeout and exec_timeout."""
    try:
        return Board(port, timeout=timeout, read_timeout=serial_timeouts[0],
                     exec_timeout=serial_timeouts[1])
    except BoardError as e:
        raise BenchAborted("C1", str(e), results) from None


def _repl_phase(port: str, sizes: list[int], runs: int, timeout: float, rng: random.Random,
                say: Progress, serial_timeouts: tuple[float, float] = (1.0, 10.0)) -> _Bench:
    """C1–C5, C13/C14 and the tick with main.py stopped; the board is left running main.py
    again (where it has one) and the port closed, so that the WAN can use it."""
    with _open(port, timeout, [], serial_timeouts) as b:
        try:
            b.enter_raw(soft_reset=True)
            info = b.info()
            kind = board_kind(b, info)
            has_main = info.platform != "emulated" and b.eval(
                "'main.py' in __import__('os').listdir('/')")
        except BoardError as e:
            raise BenchAborted("C1", str(e), []) from None
        bench = _Bench(b, kind, say)
        bench.has_main = bool(has_main)
        say(f"platform: {kind.platform}")
        if kind.emulated:
            say("uploading the firmware modules to the emulated board")
            try:
                upload_firmware_modules(b, kind.arch)
                bench.x25519_impl = str(b.eval("__import__('x25519').IMPL"))
            except BoardError as e:
                raise bench.fail(str(e)) from None
            say(f"X25519 on the board: {bench.x25519_impl}")
        try:
            _repl_components(bench, sizes, runs, rng)
        except KeyboardInterrupt:
            raise BenchInterrupted(bench.results) from None
        finally:
            if has_main:
                _back_to_main(b)
    return bench


def _back_to_main(b: Board) -> None:
    try:
        b.soft_reset_to_main()
    except BoardError:
        pass
    time.sleep(0.5)  # main.py starts its tasks before the next WAN request


def _provisioned(port: str, keystore: Path | None) -> bool:
    from host_tools.headend.keystore import Keystore, KeystoreError

    try:
        Keystore(keystore).find(port)
    except KeystoreError:
        return False
    return True


def _delete_bench_group(bench: _Bench, port: str, keystore: Path | None,
                        timeout: float) -> None:
    from host_tools.headend import wire
    from host_tools.headend.client import LinkError, MeterError

    try:
        with _meter_link(port, keystore, timeout) as link:
            g = _groups(link)
            if g["pending"] == BENCH_GID.hex() or any(
                    x["gid"] == BENCH_GID.hex() for x in g["groups"]):
                link.request_raw(wire.K_GROUP_DELETE, codec.group_delete_cmd(BENCH_GID))
    except (LinkError, MeterError, BoardError, OSError) as e:
        raise bench.fail(f"deleting the bench's group {BENCH_GID!r}: {e}") from None



def run_emulated(board: str, *, sizes: list[int], runs: int, quick: bool,
                 progress: Callable[[str], None] | None = None) -> list[Result]:
    """Build (cached) and boot the emulated board ('m0plus', 'm4', 'm33', 'rp2040') and run the
    component tests that can run there (C1–C5, C13/C14, one metrology tick; and C11/C12, the
    image for its architecture) through the same on-board code as on any board."""
    from host_tools.emu.build import EmuError, board_spec
    from host_tools.emu.run import Emulator

    say = progress or (lambda s: None)
    try:
        spec = board_spec(board)
        say(f"building (cached) and booting the emulated {spec.name} board")
        with Emulator(board, quiet=True) as emu:
            results = run_components(emu.port, sizes=sizes, runs=runs, quick=quick,
                                     progress=progress, timeout=EMU_TIMEOUT.get(board, 60.0),
                                     read_timeout=emu.read_timeout,
                                     exec_timeout=emu.exec_timeout)
    except EmuError as e:
        raise BenchAborted("C1", f"emulated {board}: {e}", []) from None
    if board == "m0plus":
        for core1 in (False, True):
            results.append(emulated_c6(board, C6_EMU_QUICK_S if quick else C6_EMU_S, say,
                                       core1))
    return results


# C6 on the emulated M0+ (host_tools/emu/c6.py): the whole meter for this many emulated
# seconds (about 1.5 s of host time each on an idle 2-core host), with a C6_SIZE group
C6_EMU_S = 60
C6_EMU_QUICK_S = 10


def emulated_c6(board: str, seconds: int, say: Callable[[str], None],
                core1: bool = False) -> Result:
    """C6 on the emulated board: the busy share of each 1-s kernel window of the whole meter
    (one sample a window), with a C6_SIZE-member group precomputing; the off-switch a
    cooperative task (the board has one core), or (``core1``) its Core left to a core 1 that
    is not there: a Pico's core 0 (host_tools/emu/c6.py)."""
    from host_tools.emu import c6

    how = "a Pico's core 0" if core1 else "one core, the off-switch cooperative"
    say(f"C6: the whole meter for {seconds} emulated s, a {C6_SIZE}-member group, {how}")
    try:
        r = c6.run_c6(board, seconds, C6_SIZE, progress=say, core1=core1)
    except c6.EmuError as e:
        raise BenchAborted("C6", f"emulated {board}: {e}", []) from None
    shares = [s * 100 for s in r.shares()]
    extra: dict[str, Any] = {
        "window_s": 1, "seconds": seconds, "interval_s": r.interval_s,
        "est_cpi": r.cpi, "est_median_pct": round(statistics.median(shares) * r.cpi, 2),
        "without_adc_model_median_pct": round(statistics.median(r.meter_shares()) * 100, 2),
        "tasks_pct": {t: round(r.task_share(t) * 100, 3) for t in r.tasks[1:]},
        "ciphertexts": r.answers, "task_errors": {k: v for k, v in r.errors.items() if v},
    }
    variant = "with LoPA, Pico core 0" if core1 else "with LoPA"
    return Result("C6", "CPU use: the busy share of each 1-s kernel window of the whole meter "
                  f"(the kernel's STATS accounting; one sample a window, {seconds} windows), "
                  f"{variant} ({how})", "%", shares, c6.LABEL,
                  size=C6_SIZE, variant=variant, extra=extra)


# rp2040js runs about 40 times slower than QEMU: a 50-member C3 takes minutes there.
EMU_TIMEOUT = {"m0plus": 120.0, "m4": 120.0, "m33": 120.0, "rp2040": 1800.0}


# -- capacity: the largest group and the most groups one meter holds ----------------------------

def capacity(port: str, *, keystore: Path | None = None, quick: bool = False,
             timeout: float = 30.0, progress: Callable[[str], None] | None = None,
             group_size: int = C6_SIZE, max_tries: int = 16,
             commit_groups: bool = True) -> dict[str, Any]:
    """The largest group and the most groups the meter at `port` holds within its heap, with
    its firmware running (over the WAN; the meter must be provisioned).

    - largest group: the largest n for which the DC security task admits a set-up (its check:
      the group's RAM must leave its reserve free), found by bisection on GROUP_BEGIN alone
      (cheap: nothing is derived), then, unless `quick`, set up and committed for real;
    - most groups: `group_size`-member groups set up and committed one after another until
      the meter refuses one (at most `max_tries`; the firmware caps groups at 16); without
      `commit_groups`, the firmware's own estimate (GROUPS max_groups), nothing set up: a
      meter filled until its heap gives out may stop answering, and it keeps the groups it
      committed across a reset.
    Every group the bench made is deleted again. Returns a dict for the JSON."""
    from host_tools.headend import wire
    from host_tools.headend.client import LinkError, MeterError

    say = progress or (lambda s: None)
    rng = random.Random(int.from_bytes(os.urandom(8), "big"))
    made: list[bytes] = []
    out: dict[str, Any] = {"group_size": group_size, "quick": quick}
    t0 = time.monotonic()
    try:
        with _meter_link(port, keystore, timeout) as link:
            try:
                me = link.entry.meter_id
                pk = codec.parse_keygen(link.request_raw(wire.K_KEYGEN, codec.keygen_cmd(False))).pk
                g0 = _groups(link)
                out["groups_before"] = len(g0["groups"])
                out["firmware_max_groups"] = g0["max_groups"]

                def admits(n: int) -> bool:
                    try:
                        # asked twice: the free heap the meter checks moves with its other tasks
                        _group_begin(link, CAP_GID, n, 2)
                    except MeterError as e:
                        if "no memory" in str(e) or "outside" in str(e):
                            return False
                        raise
                    link.request_raw(wire.K_GROUP_DELETE, codec.group_delete_cmd(CAP_GID))
                    return True

                say("capacity: the largest group the meter admits (bisection on GROUP_BEGIN)")
                lo, hi = codec.N_MIN - 1, codec.N_MAX + 1  # admits(lo) (vacuous), not hi
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if admits(mid):
                        lo = mid
                    else:
                        hi = mid
                out["largest_group"] = lo
                out["largest_group_limit"] = (
                    "the firmware's cap of 512 members" if lo == codec.N_MAX
                    else "the DC security task's heap check (its reserve left free)")
                if not quick and lo >= codec.N_MIN:
                    say(f"capacity: setting up a {lo}-member group for real")
                    made.append(CAP_GID)
                    try:
                        _set_up(link, CAP_GID, lo, me, pk, rng, timeout, begin_tries=3)
                        out["largest_group_committed"] = True
                        out["ram_free_with_largest"] = _groups(link)["ram_free"]
                    except (MeterError, LinkError) as e:
                        out["largest_group_committed"] = f"no: {e}"
                    _delete_groups(link, made)
                if not commit_groups:
                    # Nothing committed: a meter set up with group after group until its heap
                    # gives out may stop answering (and keeps the groups it committed across
                    # a reset), which would spoil what runs after. The firmware's own count.
                    g1 = _groups(link)
                    out["most_groups"] = g1["max_groups"]
                    out["most_groups_limit"] = (
                        f"the firmware's estimate for {REF_GROUP}-"
                        "member groups (GROUPS max_groups: those committed and what the free "
                        "heap above its reserve holds); none set up (--quick)")
                    out["ram_free_with_most"] = g1["ram_free"]
                    out["seconds"] = round(time.monotonic() - t0, 1)
                    return out
                count = 0
                refusal = ""
                for i in range(max_tries):
                    gid = f"cap{i}".encode()
                    say(f"capacity: {group_size}-member group {i + 1}")
                    try:
                        made.append(gid)
                        _set_up(link, gid, group_size, me, pk, rng, timeout, begin_tries=3)
                    except (MeterError, LinkError) as e:  # refused, or silent: short of heap
                        refusal = str(e)
                        break
                    count += 1
                out["most_groups"] = out["groups_before"] + count
                out["most_groups_limit"] = refusal or f"stopped after {max_tries} groups"
                try:
                    out["ram_free_with_most"] = _groups(link)["ram_free"]
                except (LinkError, MeterError) as e:  # the heap gave out: that is the figure
                    out["ram_free_with_most"] = f"not answered: {e}"
            finally:  # whatever happened, the bench's groups go
                with contextlib.suppress(LinkError, MeterError):
                    _delete_groups(link, made)
    except (LinkError, MeterError, BoardError, OSError) as e:
        raise BenchAborted("capacity", f"on the running firmware: {e}", []) from None
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


CAP_GID = b"bench-cap"
REF_GROUP = 50  # the firmware's max_groups counts groups of this size when none is committed


def _delete_groups(link: Any, gids: list[bytes]) -> None:
    """Delete the bench's groups (committed or pending); one lost answer is asked again."""
    from host_tools.headend import wire
    from host_tools.headend.client import MeterError

    for gid in gids:
        with contextlib.suppress(MeterError):  # unknown group: it never got that far
            link.request_raw(wire.K_GROUP_DELETE, codec.group_delete_cmd(gid))
    gids.clear()


def _set_up(link: Any, gid: bytes, n: int, me: int, pk: bytes, rng: random.Random,
            timeout: float, begin_tries: int = 1) -> codec.CommitAnswer:
    """GROUP_BEGIN, the meter's own record and n-1 host-made members in chunks, COMMIT."""
    from host_tools.headend import wire

    group = HostGroup.make(gid, n, rng, first_seq=1, chunk=WAN_CHUNK)
    _group_begin(link, gid, n, begin_tries)
    link.request_raw(wire.K_GROUP_KEYS, codec.group_keys_cmd(gid, 0, [(me, pk)]))
    # A chunk is answered when its pair keys are derived (one X25519 per kernel step: about
    # half a second per chunk on a Pico, more on a loaded PC): wait for that.
    link.timeout = timeout + WAN_CHUNK * KEY_WAIT_S
    try:
        for chunk in group.chunks:
            link.request_raw(wire.K_GROUP_KEYS, chunk)
    finally:
        link.timeout = timeout
    return codec.parse_group_commit(
        link.request_raw(wire.K_GROUP_COMMIT, codec.group_commit_cmd(gid)))
