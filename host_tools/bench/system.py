"""The system tests S1–S4 (seed 000 section 3.4) with our head-end over serial lines.

For each setup ``GxM`` (G groups of M meters; the paper's 1x3, 1x25, 2x25 and 10x10) and each
run, on the first G*M meters given:

- S1 create key pairs: ``HeadEnd.keys(replace=True)`` (KEYGEN on every meter, a new X25519
  key pair each time);
- S2 read public keys: ``HeadEnd.pubkeys``;
- S3 create group keys: ``HeadEnd.group_create(force=True)`` for each of the G groups (the
  groups at once, one head-end each; chunks of ``CHUNK`` members; the meters derive their pair
  keys);
- S4 read encrypted values: ``HeadEnd.run`` for 6 intervals per group (the groups at once):
  the clock from one member once (READ), then per interval every member's 4-byte ciphertext. The
  waits for the interval boundaries are kept apart from the work: ``wait`` and ``busy``.

Wall time is the host's, from the first command out to the last answer in. Bytes are the
whole frame lines on each meter's serial line, both directions, counted by ``MeterLink`` per
command (``host_tools.headend.lopa.figures``): exact, and independent of the platform except
where a meter had to be asked twice (a "no value yet" at an interval boundary), which the
figures show per command kind. On the last run of each setup the aggregates are checked
against the lab truth (each meter's plaintexts read through its REPL afterwards).

Any meter failing any step stops the bench: :class:`BenchAborted` names the test, setup, run
and meter, and carries every figure measured before it.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from host_tools.bench.results import BenchAborted, Result
from host_tools.headend import wire
from host_tools.headend.client import open_link
from host_tools.headend.keystore import Keystore
from host_tools.headend.lopa import HeadEnd, OpResult, RunResult, State, Target, serial_connector
from host_tools.headend.lopa.headend import METER_FAILURES
from host_tools.headend.lopa.lab import serial_probe

ALL_SETUPS = ("1x3", "1x25", "2x25", "10x10")
QUICK_SETUPS = ("1x3", "1x25")
ROUNDS = 6  # S4: intervals read per run, as in the paper
# Members per GROUP_KEYS chunk in S3: the protocol's 25, so that a group of up to 25 takes one
# chunk (S3's bytes: docs/PROTOCOL.md "S3 on the wire"). With base64 lines a 25-member chunk was
# a 1,400-character line and the bench sent 12: a meter whose bytecode lives in its heap (the
# virtual board; a Pico without frozen modules) may hold no free block of 1-1.4 KB however much
# is free in all, and the line, its frame and its payload each need one (seen: 972, 1,009 and
# 1,346-byte allocations failing with 30 KB free in holes, 2026-11-23). Escaped lines are the
# frame's size plus ~3 %: 25 members make a line of about 1,090 bytes, a frame of 1,057.
CHUNK = 25
Progress = Callable[[str], None]

WHAT = {
    "S1": "create key pairs: KEYGEN (replace) on every meter, concurrently",
    "S2": "read public keys: PUBKEY on every meter, concurrently",
    "S3": f"create group keys: GROUP_BEGIN, GROUP_KEYS (chunks of {CHUNK}), GROUP_COMMIT on "
          "every member, the groups at once; the meters derive their pair keys",
    "S4": f"read encrypted values of {ROUNDS} intervals: READ (clock) on one member once, "
          "then per interval CIPHERTEXT on every member, the groups at once",
}


class SetupError(ValueError):
    """A --setups value that cannot be run; the message says why."""


def parse_setup(text: str) -> tuple[int, int]:
    """``"GxM"`` -> (G groups, M meters each)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not m:
        raise SetupError(f"setup {text!r}: expected GxM (G groups of M meters), e.g. 2x25")
    g, n = int(m.group(1)), int(m.group(2))
    if g < 1:
        raise SetupError(f"setup {text!r}: at least 1 group")
    if n < 3:
        raise SetupError(f"setup {text!r}: a group has at least 3 members")
    return g, n


def parse_setups(text: str) -> list[str]:
    out: list[str] = []
    for part in text.split(","):
        if not part.strip():
            continue
        g, n = parse_setup(part)
        name = f"{g}x{n}"
        if name not in out:
            out.append(name)
    if not out:
        raise SetupError("no setup given (e.g. --setups 1x3,1x25)")
    return out


def meters_needed(setups: list[str]) -> int:
    return max(g * n for g, n in map(parse_setup, setups))


class _Collector:
    """Results by (test, setup, variant), filled run by run."""

    def __init__(self, platform: str, results: list[Result]) -> None:
        self.platform = platform
        self.results = results
        self._by: dict[tuple[str, str, str], Result] = {}

    def add(self, test: str, setup: str, variant: str, unit: str, value: float,
            what: str, extra: dict[str, Any] | None = None) -> Result:
        key = (test, setup, variant)
        r = self._by.get(key)
        if r is None:
            r = Result(test, what, unit, [], self.platform, setup=setup, variant=variant,
                       size=parse_setup(setup)[1])
            self._by[key] = r
            self.results.append(r)
        r.samples.append(float(value))
        for k, v in (extra or {}).items():
            r.extra.setdefault(k, []).append(v)
        return r


def _totals(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum of several ``Op.summary()`` (the groups of one step)."""
    per_kind: dict[str, dict[str, int]] = {}
    for s in summaries:
        for k, v in s["per_kind"].items():
            d = per_kind.setdefault(k, {"commands": 0, "tx_bytes": 0, "rx_bytes": 0})
            for f in d:
                d[f] += int(v[f])
    us = [s["meter_us_sum"] for s in summaries if s["meter_us_sum"] is not None]
    return {"tx": sum(int(s["tx_bytes"]) for s in summaries),
            "rx": sum(int(s["rx_bytes"]) for s in summaries),
            "commands": sum(int(s["commands"]) for s in summaries),
            "per_kind": per_kind, "meter_us_sum": sum(us) if us else None}


class SystemBench:
    """S1–S4 over ``targets`` (provisioned meters on serial ports, keys in ``keystore``)."""

    def __init__(self, targets: list[Target], keystore: Keystore, *, platform: str,
                 runs: int, progress: Progress | None = None, timeout: float = 10.0,
                 key_s: float = 4.0, value_wait_s: float = 5.0, check: bool = True,
                 db: Path | None = None, fleet_dir: Path | None = None) -> None:
        """``fleet_dir``: the virtual fleet of ``targets``, whose lab truth is read from the
        meters' flash (no soft reset) instead of through their REPL."""
        if runs < 1:
            raise ValueError("runs must be at least 1")
        self.targets = targets
        self.keystore = keystore
        self.runs = runs
        self.say = progress or (lambda _m: None)
        self.timeout = timeout
        self.key_s = key_s
        self.value_wait_s = value_wait_s
        self.check = check
        self.db = db
        self.fleet_dir = fleet_dir
        self.results: list[Result] = []
        self.col = _Collector(platform, self.results)
        self.interval_s: int | None = None  # the meters' load-profile interval (from S4)

    # -- plumbing ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _state(self) -> Iterator[State]:
        if self.db is not None:
            with State(self.db) as st:
                yield st
            return
        with tempfile.TemporaryDirectory(prefix="meterctl-bench-") as d, \
                State(Path(d) / "headend.db") as st:
            yield st

    def _headend(self, state: State) -> HeadEnd:
        return HeadEnd(state, serial_connector(self.keystore), timeout=self.timeout,
                       key_s=self.key_s, value_wait_s=self.value_wait_s, chunk=CHUNK)

    def _abort(self, test: str, message: str) -> BenchAborted:
        return BenchAborted(test, message, list(self.results))

    def warm(self, targets: list[Target], test: str) -> None:
        """One uncounted INFO per meter before a setup: every meter answers, and a meter that
        rebooted has its WAN counters resynced here, not inside a measured test."""
        def one(t: Target) -> None:
            with open_link(t.port, self.keystore, t.meter_id, self.timeout) as link:
                link.request(wire.K_INFO)

        with cf.ThreadPoolExecutor(max_workers=min(32, len(targets))) as ex:
            futs = {ex.submit(one, t): t for t in targets}
            for f in cf.as_completed(futs):
                try:
                    f.result()
                except METER_FAILURES as e:
                    raise self._abort(test, f"{futs[f].name}: not answering before the test: "
                                      f"{str(e).strip() or type(e).__name__}") from None

    # -- the tests -----------------------------------------------------------------------
    def run(self, setups: list[str]) -> list[Result]:
        need = meters_needed(setups)
        if need > len(self.targets):
            raise SetupError(f"setup {max(setups, key=lambda s: meters_needed([s]))} needs "
                             f"{need} meters; {len(self.targets)} given")
        with self._state() as state:
            for setup in setups:
                self.one_setup(state, setup)
        return self.results

    def one_setup(self, state: State, setup: str) -> None:
        g, n = parse_setup(setup)
        members = self.targets[:g * n]
        groups = [(f"b{setup}g{i}".encode(), members[i * n:(i + 1) * n]) for i in range(g)]
        self.warm(members, f"S1 ({setup})")
        for run in range(1, self.runs + 1):
            where = f"{setup}, run {run}/{self.runs}"
            self.say(f"S1 create key pairs ({where})")
            self._keys(state, "S1", setup, where, members)
            self.say(f"S2 read public keys ({where})")
            self._keys(state, "S2", setup, where, members)
            self.say(f"S3 create group keys ({where}, {g} group(s) of {n})")
            self._groups(state, setup, where, groups)
            self.say(f"S4 read encrypted values, {ROUNDS} intervals ({where})")
            self._rounds(state, setup, where, groups, lab=self.check and run == self.runs)

    def _record(self, test: str, setup: str, wall_s: float,
                summaries: list[dict[str, Any]], busy_s: float | None = None,
                lab_check: dict[str, Any] | None = None) -> None:
        tot = _totals(summaries)
        what = WHAT[test]
        detail = {"commands": tot["commands"], "per_kind": tot["per_kind"],
                  "meter_us_sum": tot["meter_us_sum"]}

        self.col.add(test, setup, "wall", "ms", wall_s * 1000,
                     what + "; host wall time, first command out to last answer in")
        if busy_s is not None:
            self.col.add(test, setup, "busy", "ms", busy_s * 1000,
                         what + "; wall time less the waits for interval boundaries")
            self.col.add(test, setup, "wait", "ms", (wall_s - busy_s) * 1000,
                         what + "; waiting for interval boundaries (not work)",
                         {"interval_s": self.interval_s})
        self.col.add(test, setup, "tx", "bytes", tot["tx"],
                     what + "; bytes head-end -> meters (whole frame lines)")
        self.col.add(test, setup, "rx", "bytes", tot["rx"],
                     what + "; bytes meters -> head-end (whole frame lines)")
        r = self.col.add(test, setup, "bytes", "bytes", tot["tx"] + tot["rx"],
                         what + "; bytes on the wire, both directions", detail)
        if lab_check is not None:  # the last run's
            r.extra["lab_check"] = lab_check

    @staticmethod
    def _failures(res: OpResult) -> str | None:
        if not res.failed:
            return None
        return "; ".join(f"{o.target.name}: {o.error}" for o in res.failed)

    def _keys(self, state: State, test: str, setup: str, where: str,
              members: list[Target]) -> None:
        with self._headend(state) as he:
            t0 = time.perf_counter()
            res = he.keys(members, replace=True) if test == "S1" else he.pubkeys(members)
            wall = time.perf_counter() - t0
        bad = self._failures(res)
        if bad:
            raise self._abort(f"{test} ({where})", bad)
        self._record(test, setup, wall, [res.op.summary()])

    def _each_group(self, state: State, groups: list[tuple[bytes, list[Target]]],
                    fn: Callable[[HeadEnd, bytes, list[Target]], Any]
                    ) -> tuple[float, list[Any]]:
        """``fn(headend, gid, members)`` for every group at once, one head-end each (a
        head-end closes its links when a run ends). Returns (wall s, results in order)."""
        hes = [self._headend(state) for _ in groups]
        out: list[Any] = [None] * len(groups)
        # mpremote's silencing swaps sys.stdout process-wide (lab probe): keep ours
        stdout, stderr = sys.stdout, sys.stderr
        try:
            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(max_workers=len(groups)) as ex:
                futs = {ex.submit(fn, he, gid, mem): i
                        for i, (he, (gid, mem)) in enumerate(zip(hes, groups, strict=True))}
                for f in cf.as_completed(futs):
                    out[futs[f]] = f.result()
            wall = time.perf_counter() - t0
        finally:
            sys.stdout, sys.stderr = stdout, stderr
            for he in hes:
                he.close()
        return wall, out

    def _groups(self, state: State, setup: str, where: str,
                groups: list[tuple[bytes, list[Target]]]) -> None:
        try:
            wall, res = self._each_group(
                state, groups, lambda he, gid, mem: he.group_create(gid, mem, force=True))
        except METER_FAILURES as e:
            raise self._abort(f"S3 ({where})", str(e)) from None
        bad = [f for f in map(self._failures, res) if f]
        if bad:
            raise self._abort(f"S3 ({where})", "; ".join(bad))
        self._record("S3", setup, wall, [r.op.summary() for r in res])

    def _rounds(self, state: State, setup: str, where: str,
                groups: list[tuple[bytes, list[Target]]], lab: bool) -> None:
        probe = serial_probe(timeout=max(self.timeout, 10.0), fleets=[self.fleet_dir],
                             keystore=self.keystore) if lab else None
        try:
            wall, res = self._each_group(
                state, groups, lambda he, gid, mem: he.run(gid, ROUNDS, mem, lab=probe))
        except METER_FAILURES as e:
            raise self._abort(f"S4 ({where})", str(e)) from None
        runs: list[RunResult] = res
        errors = [r.error or "failed" for run in runs for r in run.rounds if not r.ok]
        if errors:
            raise self._abort(f"S4 ({where})", "; ".join(errors))
        lengths = {r.length for run in runs for r in run.rounds}
        self.interval_s = max(lengths) if lengths else None
        busy = max(run.op.wall_s - run.op.wait_s for run in runs)
        lab_check = self._check_lab(where, runs) if lab else None
        self._record("S4", setup, wall, [run.op.summary() for run in runs], busy_s=busy,
                     lab_check=lab_check)

    def _check_lab(self, where: str, runs: list[RunResult]) -> dict[str, Any]:
        """Every aggregate equals the sum of the members' plaintexts (lab truth); returns
        what was checked."""
        wrong, unchecked = [], []
        checked = 0
        for run in runs:
            for r in run.rounds:
                if r.expected is None:
                    unchecked.append(f"group {r.gid.decode(errors='replace')} interval {r.t}")
                elif r.aggregate != r.expected:
                    wrong.append(f"interval {r.t}: aggregate {r.aggregate}, lab truth "
                                 f"{r.expected}")
                else:
                    checked += 1
            unchecked += [f"meter {i}: {why}" for i, why in sorted(run.lab_errors.items())]
        if wrong:
            raise self._abort(f"S4 ({where})", "wrong aggregate: " + "; ".join(wrong))
        return {"rounds_equal_to_lab_truth": checked, "unchecked": unchecked}
