"""C6 on the emulated Cortex-M0+: the whole meter (firmware/meter.py's kernel and tasks) runs
for N emulated seconds and the kernel's own accounting gives the busy share of each 1-s window
(``python -m host_tools.emu c6 --board m0plus [--seconds 60]``; docs/emulated.md, "C6").

How it runs:

- QEMU with ``-icount shift=3``: 8 ns of virtual time per instruction, so the board's
  ``time.ticks_us()`` counts microseconds of a 125 MHz core at one instruction per cycle, and
  the kernel's 1-s window is 125 M instructions (a lower bound: a real M0+ needs about 1.36
  cycles per instruction for this code, docs/emulated.md; the estimate at that CPI is printed
  beside it).
- The RAM filesystem is loaded before power-on (QEMU's generic loader; ramfs.c): the whole
  firmware compiled for the board, the board adapter and the json/binascii/select stand-ins
  (``board/emulated_port/py/``), the driver (``c6run.py``) and the scripted head-end's lines.
- The LoPA set-up (KEYGEN, a group of ``members`` with host-made key pairs, COMMIT) goes
  through the DC security task's own handlers; the meter is then soft-reset and built by
  ``meter.start``, with its group loaded from /data as at any boot, and asked for each closed
  interval's ciphertext over its WAN by authenticated frames made here (aggregator role).
- The busy share is the kernel's: the window less the time in its idle wait (the port's
  ``time.sleep_ms``, a WFI that QEMU skips to the deadline), exactly what STATS reports
  (kernel_svc.py). The ADC model's own time (the DMA's work on a Pico) is measured and
  printed, and left out of the "meter" share.
- The off-switch is a cooperative task (the board has one core), or with ``core1`` installed
  as on a Pico with its Core left to a core 1 that is not there (a Pico's core 0).
"""

from __future__ import annotations

import argparse
import ast
import random
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from host_tools.emu.build import REPO, EmuError, board_spec, build

__all__ = ["LABEL", "C6Run", "EmuError", "expected_x", "report", "run_c6"]

PY_DIR = REPO / "board" / "emulated_port" / "py"
FIRMWARE = REPO / "firmware"
SKIP = ("main.py", "hw_common.py", "stdio_wan.py")  # the boot, the real boards' own, select
SHIFT = 3  # 8 ns per instruction: 125 MHz at one instruction per cycle
GID = b"c6-emulated"
MEMBERS = 50
INTERVAL_S = 10
T0 = 1_767_225_600  # 2026-01-01 00:00:00 UTC: the meter's RTC at boot, on an interval edge
ASK_AFTER_S = 2  # the head-end asks for an interval's ciphertext this long after it closes
NAME_MAX = 48  # ramfs.h RAMFS_NAME_MAX
MAX_FILES = 160  # ramfs.h RAMFS_MAX_FILES
LABEL = "emulated Cortex-M0+ @125 MHz, zero-wait flash: a lower bound"


@dataclass
class C6Run:
    """One run's windows and what the meter did in it."""

    seconds: int
    members: int
    interval_s: int
    tasks: list[str]
    windows: list[tuple[int, int, int, list[int]]]  # (length us, sleep us, ADC us, task us)
    errors: dict[str, int]
    handled: dict[str, int]
    han: tuple[int, int]
    wan: tuple[int, int]
    answers: list[str]  # "t=<t> c=<c> x=<x>" or the refusal
    adc_gaps: tuple[int, int]
    mem_free: int
    gc_us: int  # one gc.collect() with the meter's heap, after the run
    passes: int  # the kernel's run_once() passes in the run
    adc_rate: int  # the ADC model's samples a second per channel
    core1: bool  # the off-switch's Core left to a core 1 (not run): a Pico's core 0
    cpi: float = 1.36

    def shares(self) -> list[float]:
        """Busy share of each window (the kernel's: window less its sleep), 0..1."""
        return [(n - s) / n for n, s, _, _ in self.windows if n]

    def meter_shares(self) -> list[float]:
        """The same less the ADC model's time (the DMA's work on a Pico)."""
        return [(n - s - a) / n for n, s, a, _ in self.windows if n]

    def task_shares(self, name: str) -> list[float]:
        """Task ``name``'s busy share of each window."""
        i = self.tasks.index(name)
        return [t[i] / n for n, _, _, t in self.windows if n]

    def task_share(self, name: str) -> float:
        i = self.tasks.index(name)
        total = sum(n for n, _, _, _ in self.windows)
        return sum(t[i] for _, _, _, t in self.windows) / total if total else 0.0


def _image(files: list[tuple[str, bytes]]) -> bytes:
    """The RAM filesystem's preload image (ramfs.c ramfs_preload)."""
    head = bytearray(b"EMUFS1\0\0" + struct.pack("<I", len(files)))
    data = bytearray()
    for name, blob in files:
        name = name.lstrip("/")
        if len(name) >= NAME_MAX:
            raise EmuError(f"{name}: name longer than the RAM filesystem's {NAME_MAX - 1}")
        head += name.encode().ljust(NAME_MAX, b"\0") + struct.pack("<I", len(blob))
        data += blob + bytes(-len(blob) % 4)
    return bytes(head + data)


def _symbol(elf: Path, name: str) -> int:
    nm = shutil.which("arm-none-eabi-nm") or "arm-none-eabi-nm"
    out = subprocess.run([nm, str(elf)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    raise EmuError(f"{elf.name}: no symbol {name}")


def firmware_files(arch: str, core1: bool = False) -> list[tuple[str, bytes]]:
    """The firmware as the board's RAM filesystem holds it: .mpy for ``arch``; ``core1``: with
    the _thread stand-in that leaves the off-switch's Core to a core 1 that is not there."""
    from host_tools.flash.build import compile_one

    out: list[tuple[str, bytes]] = []
    for src in sorted(FIRMWARE.glob("*.py")) + sorted((FIRMWARE / "lib").glob("*.py")) \
            + sorted(PY_DIR.glob("*.py")):
        if src.name in SKIP:
            continue
        dest = f"/{src.stem}.mpy"
        if src.parent == PY_DIR and src.name == "_thread_core1.py":
            if core1:
                out.append(("/_thread.mpy", compile_one(src, "/_thread.mpy", arch)))
            continue
        if src.parent == PY_DIR and src.name == "board.py":
            out.append((dest, _board_module(src, arch)))
            continue
        out.append((dest, compile_one(src, dest, arch)))
    for src in sorted((FIRMWARE / "tasks").glob("*.py")):
        dest = f"/tasks/{src.stem}.mpy"
        out.append((dest, compile_one(src, dest, arch)))
    return out


def pico_adc_rate() -> int:
    """The Pico adapter's sampling rate per channel (board/rp2_pico ADC_RATE_HZ), which the
    emulated board's ADC model follows."""
    text = (REPO / "board" / "rp2_pico" / "__init__.py").read_text()
    m = re.search(r"^ADC_RATE_HZ = const\((\d+)\)", text, re.M)
    if m is None:
        raise EmuError("board/rp2_pico/__init__.py: no ADC_RATE_HZ = const(N)")
    return int(m.group(1))


def _board_module(src: Path, arch: str) -> bytes:
    """board/emulated_port/py/board.py with the Pico's ADC rate, compiled."""
    from host_tools.flash.build import compile_one

    text = re.sub(r"^ADC_RATE_HZ = const\(\d+\)", f"ADC_RATE_HZ = const({pico_adc_rate()})",
                  src.read_text(), count=1, flags=re.M)
    with tempfile.TemporaryDirectory(prefix="meter-c6-") as d:
        tmp = Path(d) / "board.py"
        tmp.write_text(text)
        return compile_one(tmp, "/board.mpy", arch)


@dataclass
class _HeadEnd:
    """The group's other members and the aggregator's frames, made here."""

    meter_id: int
    master: bytes
    members: list[tuple[int, bytes, bytes]]  # (id, sk, pk)

    @classmethod
    def make(cls, n: int, rng: random.Random) -> _HeadEnd:
        from host_tools.headend.lopa import ref

        meter_id = rng.getrandbits(63) or 1
        ids = {meter_id}
        members: list[tuple[int, bytes, bytes]] = []
        while len(members) < n - 1:
            mid = rng.getrandbits(64)
            if mid in ids:
                continue
            ids.add(mid)
            sk, pk = ref.keypair(rng.randbytes(32))
            members.append((mid, sk, pk))
        return cls(meter_id, rng.randbytes(32), members)

    def setup_module(self) -> str:
        """c6_setup.py: the set-up's requests, as cs_security would hand them over."""
        from host_tools.headend.lopa import codec

        n = len(self.members) + 1
        chunks = [codec.group_keys_cmd(GID, 0, [(self.meter_id, bytes(32))])[:-40]]
        for seq, k in enumerate(range(0, len(self.members), codec.CHUNK_MAX)):
            part = [(mid, pk) for mid, _, pk in self.members[k:k + codec.CHUNK_MAX]]
            chunks.append(codec.group_keys_cmd(GID, seq + 1, part))
        return (f"ME = {self.meter_id}\nKEYGEN = {codec.keygen_cmd(False)!r}\n"
                f"BEGIN = {codec.group_begin_cmd(GID, n, 0, 0.0)!r}\n"
                f"CHUNKS = {chunks!r}\nCOMMIT = {codec.group_commit_cmd(GID)!r}\n")

    def wan_script(self, t0: int, seconds: int, interval_s: int) -> bytes:
        """Each closed interval's CIPHERTEXT request, due ASK_AFTER_S after its close."""
        from host_tools.headend import wire
        from host_tools.headend.lopa import codec

        keys = wire.Keys.derive(self.meter_id, self.master, wire.ROLE_AGGREGATOR)
        out = []
        ctr = 0
        # the meter boots a little after t0: ask for every interval up to well past the run
        for k in range(1, seconds // interval_s + 8):
            ctr += 1
            t = (t0 // interval_s) + k - 1
            frame = wire.seal(keys, False, wire.K_CIPHERTEXT, ctr, 0, codec.ciphertext_cmd(GID, t))
            due = t0 + k * interval_s + ASK_AFTER_S
            out.append(b"%d " % due + wire.to_line(frame))
        return b"".join(out)

    def open_answers(self, lines: list[bytes], pk: bytes) -> list[str]:
        """Each WAN answer, checked (MAC, aggregator's keys) and decrypted; a ciphertext's
        reading unblinded with the pair keys the members hold (the meter's x, mWh)."""
        from host_tools.headend import wire
        from host_tools.headend.lopa import ref

        keys = wire.Keys.derive(self.meter_id, self.master, wire.ROLE_AGGREGATOR)
        pair = {mid: ref.pair_key(sk, pk, GID, mid, self.meter_id)
                for mid, sk, _ in self.members}
        out = []
        # whole lines only: the board keeps the first KEEP bytes (board/emulated_port/py), so
        # a long run's last answer may be cut
        for raw in b"".join(lines).split(b"\n")[:-1]:
            if not raw.strip(b"\r~"):
                continue
            f = wire.open_frame(keys, True, wire.from_line(raw))
            if f.kind == wire.K_CIPHERTEXT and len(f.payload) == 8:
                t, c = struct.unpack(">II", f.payload)
                x = (c - ref.blinding(pair, self.meter_id, GID, t)) & 0xFFFF_FFFF
                out.append(f"t={t} c={c} x={x}")
            else:
                out.append(f"{f.kind_name}: {wire.describe_error(f.payload)}")
        return out


def run_c6(board: str = "m0plus", seconds: int = 60, members: int = MEMBERS,
           interval_s: int = INTERVAL_S, seed: int = 6,
           progress: Callable[[str], None] | None = None, core1: bool = False) -> C6Run:
    """Boot the emulated board with the firmware, set up a ``members`` group (0: none), run
    the meter for ``seconds`` emulated seconds; returns the windows. ``core1``: the off-switch
    installs as on a Pico, its Core left to a core 1 that this board lacks (a Pico's core 0);
    else it runs as a cooperative task (the port has no _thread), as on the PYBV11 build."""
    from host_tools.transport.serial import Board, BoardError

    say = progress or (lambda s: None)
    spec = board_spec(board)
    if spec.runner != "qemu" or spec.mpy_arch != "armv6m":
        raise EmuError(f"C6 runs on the QEMU Cortex-M0+ board (m0plus), not {board}")
    if seconds < 2 or not 1 <= interval_s <= 3600 or members == 1 or members < 0:
        raise EmuError("--seconds >= 2, --interval 1..3600, --members 0 or >= 2")
    rng = random.Random(seed)
    he = _HeadEnd.make(max(members, 2), rng)
    image = build(board, quiet=True)
    files = firmware_files(spec.mpy_arch, core1)
    if members:
        from host_tools.flash.build import compile_one

        with tempfile.TemporaryDirectory(prefix="meter-c6-") as d:
            src = Path(d) / "c6_setup.py"
            src.write_text(he.setup_module())
            files.append(("/c6_setup.mpy", compile_one(src, "/c6_setup.mpy", spec.mpy_arch)))
        files.append(("/c6_wan.txt", he.wan_script(T0, seconds, interval_s)))
    say(f"{len(files)} files, {sum(len(b) for _, b in files):,} bytes into the RAM filesystem")
    blob = _image(files)
    start, end = _symbol(image, "_sramfs"), _symbol(image, "_eramfs")
    if len(files) > MAX_FILES or len(blob) > end - start:
        raise EmuError(f"{len(files)} files, {len(blob):,} bytes: more than the board's RAM "
                       f"filesystem takes ({MAX_FILES} files, {end - start:,} bytes; ramfs.h, "
                       f"board/{spec.board_dir.name}/*.ld)")
    with tempfile.TemporaryDirectory(prefix="meter-c6-") as d:
        img = Path(d) / "ramfs.bin"
        img.write_bytes(blob)
        from host_tools.emu.run import Emulator

        with Emulator(board, image=image, shift=SHIFT,
                      preload=(img, start)) as emu, \
                Board(emu.port, timeout=60.0, read_timeout=emu.read_timeout,
                      exec_timeout=emu.exec_timeout) as b:
            try:
                b.enter_raw(soft_reset=True)
                b.exec("import store\n"
                       f"store.save('/data/cs_keys.json', {{'meter': {he.meter_id}, "
                       f"'master': {he.master.hex()!r}}})\n"
                       f"store.save('/data/clock.json', {{'interval_s': {interval_s}}})\n",
                       "provisioning")
                pk = bytes(32)
                printed = bytearray()
                if members:
                    say(f"LoPA set-up: KEYGEN and a {members}-member group on the board")
                    out = b.exec("import c6run, c6_setup as s\n"
                                 "print('R', repr(c6run.setup(s.ME, s.KEYGEN, s.BEGIN, "
                                 "s.CHUNKS, s.COMMIT)))", "setting up the group").decode()
                    pk, codes = _result(out)
                    if any(codes):
                        raise EmuError(f"the group set-up was refused: answer codes {codes}")
                b.enter_raw(soft_reset=True)  # the meter boots with a clean heap
                say(f"running the meter for {seconds} emulated s")
                printed = bytearray()
                out = b.exec(f"import c6run\nprint('R', repr(c6run.run({seconds}, {T0})))",
                             "running the meter", data_consumer=printed.extend).decode()
                out = out or printed.decode(errors="replace")
            except BoardError as e:
                tail = printed.decode(errors="replace").strip()[-1500:] if printed else ""
                raise EmuError(f"on the board: {e}" + (f"\n{tail}" if tail else "")) from None
    (passes, gc_us, w, names, errors, handled, han, wan, answers, gaps, mem_free) = \
        _result(out)
    windows = []
    for line in out.splitlines():
        if line.startswith("W "):
            r = [int(v) for v in line[2:].split()]
            windows.append((r[0], r[1], r[2], r[3:]))
    if len(windows) != w or any(len(t) != len(names) for _, _, _, t in windows):
        raise EmuError(f"the board reported {w} windows, {len(windows)} arrived whole")
    run = C6Run(seconds, members, interval_s, list(names), windows,
                dict(zip(names, errors, strict=True)), dict(zip(names, handled, strict=True)),
                han, wan, he.open_answers(list(answers), pk) if members else [], gaps,
                mem_free, gc_us, passes, pico_adc_rate(), core1, spec.cpi_est or 1.0)
    return run


def _result(out: str) -> tuple:  # type: ignore[type-arg]
    for line in out.splitlines():
        if line.startswith("R "):
            return ast.literal_eval(line[2:])  # type: ignore[no-any-return]
    raise EmuError(f"no result from the board: {out.strip()[-300:]}")


def expected_x(interval_s: int) -> int:
    """mWh one full interval of the ADC model's load imports (230 V, 10 A, 30 degrees)."""
    return round(230 * 10 * 0.8660254 * interval_s / 3.6)


def report(r: C6Run) -> str:
    sh = sorted(r.shares())
    me = sorted(r.meter_shares())
    med = statistics.median(sh)
    lines = [f"C6 the meter's CPU share, {LABEL}",
             f"(QEMU -icount shift={SHIFT}: 1 instruction = 8 ns, the kernel's 1-s window = "
             f"125 M instructions; {len(sh)} windows of {r.seconds} emulated s; ADC "
             f"{r.adc_rate} Hz per channel; "
             + (f"a {r.members}-member LoPA group precomputing, interval {r.interval_s} s, "
                "a ciphertext asked for each" if r.members else "no LoPA group")
             + ("; the off-switch's Core on core 1, not run: a Pico's core 0" if r.core1 else
                "; the off-switch a cooperative task (no second core)") + ")",
             "busy share of each 1-s window (the kernel's STATS accounting: the window less "
             "its idle wait), %:"]
    row = [f"{s * 100:.2f}" for s in r.shares()]
    for k in range(0, len(row), 12):
        lines.append("  " + " ".join(row[k:k + 12]))
    lines.append(f"min / median / max: {sh[0] * 100:.2f} / {med * 100:.2f} / {sh[-1] * 100:.2f} %"
                 f"  (est. at CPI {r.cpi:g}: {sh[0] * r.cpi * 100:.2f} / "
                 f"{med * r.cpi * 100:.2f} / {sh[-1] * r.cpi * 100:.2f} %)")
    med_me = statistics.median(me)
    lines.append(f"without the ADC model (the DMA's work on a Pico): median {med_me * 100:.2f} % "
                 f"(est. {med_me * r.cpi * 100:.2f} %)")
    if not r.core1:
        rest = [m - o for m, o in zip(r.meter_shares(), r.task_shares("offswitch"), strict=True)]
        med1 = statistics.median(rest)
        lines.append(f"and less the off-switch task's own time (core 1 on a Pico; --offswitch "
                     f"core1 measures a Pico's core 0 whole): median {med1 * 100:.2f} % "
                     f"(est. {med1 * r.cpi * 100:.2f} %)")
    lines.append("Elster AS300 C6: 30.02 % without LoPA, 30.11 % with LoPA (50 meters)")
    top = sorted(((r.task_share(t), t) for t in r.tasks[1:]), reverse=True)
    total_s = sum(n for n, _, _, _ in r.windows) / 1e6
    busy = sum(n - sl for n, sl, _, _ in r.windows) / max(1, sum(n for n, _, _, _ in r.windows))
    kern = busy - sum(s for s, _ in top)
    lines.append("by task (share of the run): " + ", ".join(
        f"{t} {s * 100:.2f} %" for s, t in top if s > 0)
        + f"; the kernel itself {kern * 100:.2f} % (its scheduling loop, "
        f"{r.passes / total_s:.0f} passes a second, {kern * total_s * 1e6 / max(1, r.passes):.0f}"
        f" us each on average, and the once-a-second gc.collect: {r.gc_us / 1e4:.2f} % for one "
        "after the run)")
    adc = sum(a for _, _, a, _ in r.windows) / max(1, sum(n for n, _, _, _ in r.windows))
    lines.append(f"ADC model inside metrology: {adc * 100:.3f} %; HAN {r.han[0]} writes, "
                 f"{r.han[1]:,} bytes; WAN in/out {r.wan[0]:,}/{r.wan[1]:,} bytes; ADC gaps "
                 f"{r.adc_gaps[0]} ({r.adc_gaps[1]} samples); heap free at the end "
                 f"{r.mem_free:,} B")
    errs = {k: v for k, v in r.errors.items() if v}
    lines.append(f"task errors: {errs or 'none'}")
    if r.members:
        lines.append(f"ciphertexts (x unblinded with the members' pair keys; a full interval "
                     f"is {expected_x(r.interval_s)} mWh): " + "; ".join(r.answers or ["none"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m host_tools.emu c6")
    ap.add_argument("--board", default="m0plus", choices=["m0plus"])
    ap.add_argument("--seconds", type=int, default=60, help="emulated seconds (default 60)")
    ap.add_argument("--members", type=int, default=MEMBERS,
                    help=f"LoPA group size (default {MEMBERS}; 0: no group)")
    ap.add_argument("--interval", type=int, default=INTERVAL_S,
                    help=f"load-profile interval, s (default {INTERVAL_S})")
    ap.add_argument("--offswitch", choices=["coop", "core1"], default="coop",
                    help="coop: the off-switch a cooperative task (this board has one core; "
                         "default); core1: installed as on a Pico, its Core left to a core 1 "
                         "that is not there (a Pico's core 0)")
    ap.add_argument("--update-doc", type=Path, metavar="MD",
                    help="also put the report into MD, between its bench-emulated:c6 markers "
                         "(c6-without-lopa with --members 0)")
    args = ap.parse_args(argv)
    if args.seconds < 2:
        ap.error("--seconds must be at least 2")
    try:
        r = run_c6(args.board, args.seconds, args.members, args.interval,
                   progress=lambda m: print(f"[c6] {m}", file=sys.stderr, flush=True),
                   core1=args.offswitch == "core1")
    except EmuError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    text = report(r)
    print(text)
    if args.update_doc:
        from host_tools.emu.bench import update_doc

        key = ("c6" if args.members else "c6-without-lopa") \
            + ("-core0" if args.offswitch == "core1" else "")
        update_doc(args.update_doc, key,
                   "```\n" + text + "\n```")
    return 0
