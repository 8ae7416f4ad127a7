"""The soak (``make soak``): a fleet of virtual meters whose clock the head-end moves on, a
LoPA round every 15-minute interval for a simulated week, meters failing and losing power
meanwhile.

**Time paced by the head-end.** The firmware's intervals follow its RTC (firmware/tasks/
clock.py reads ``board.rtc_get()`` and marks a boundary whenever ``t // length`` changes). The
virtual board's RTC is host-side state of its supervisor: ``set-clock`` (host_tools/sim/
supervisor.py, board/virtual/__init__.py ``rtc_get``) holds it at a time that only the host
moves on, as a lab's master clock would drive the board's crystal. So simulated time does not
depend on how fast the host is: the soak closes interval t by moving every meter's clock to
5 s into interval t+1, then runs the round of t (:meth:`HeadEnd.round_at`, one thread per
group): a meter that is up answers its CIPHERTEXT once it has closed the interval (the
head-end asks again while it says "no value"), and time moves on only when every meter that
is up has caught up (it answered, or a READ shows it in interval t+1): a meter that saw two
boundaries at once would close one interval for two. A slow host makes the soak slower,
never wrong. Nothing in the firmware knows. (The other choice, the head-end moving each
RTC with the authenticated TIME_SET, costs a WAN round trip per meter per interval and a
security-log record each time, which would evict the records the soak looks for.) What
stays at host speed: the ADC (2 kHz of real time, so an interval's energy is that of the
real seconds between two steps: small numbers, the same on the meter and in the lab truth)
and the off-switch's own millisecond clock.

**Failures and cuts**, between batches of BATCH intervals, at most one meter per group at a
time and none in a group disturbed in the batch before (a robust group tolerates M missing
members; a meter that answered a round's CIPHERTEXT and loses power before its RECOVER makes
that round undecryptable by design, DREAM section 6, so no meter is disturbed while its
group's rounds run): a *failure* powers a meter off for 1..BATCH/2 intervals (the supervisor's
``power-on`` ends it), a *power cut* SIGKILLs and restarts it at once (it loses the
ciphertexts it held and the unfinished interval), and the *lab probe* (lab truth through the
REPL, host_tools/headend/lopa/lab.py) interrupts it and soft-resets it, every meter in turn
before its 192-record load profile wraps, and all at the end. A meter disturbed when an
interval closes is not asked for that interval's round (it counts as missing).

**Pass**: no interval lost (every round decrypted, by recovery when members were missing);
every aggregate equals the lab truth (the sum of the reporting members' plaintexts); no
member that was up missed a round for want of a value (its clock behind the fleet's); the
free heap (STATS, then GROUPS ``ram_free`` after a gc.collect on the meter; ten meters in turn
after each batch) grows or shrinks by at most HEAP_GOAL_B_PER_DAY within a boot (HeapFit: one
slope over each meter's boots, each boot's first sample its warm-up; judged over a fitted
week or more); metrology's mailbox never overflowed (STATS ``dropped``, and the kernel's
"mailbox metrology full" line in the security log). Figures are printed; the platform is
the virtual board (this PC), never a Pico. ``--samples FILE`` keeps every heap sample (after
every batch) and ``--judge FILE`` judges them again.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from host_tools.headend import wire
from host_tools.headend.client import LinkError, MeterError, open_link
from host_tools.headend.keystore import Keystore
from host_tools.headend.lopa import HeadEnd, LopaError, State, Target, serial_connector
from host_tools.headend.lopa.headend import METER_FAILURES, RoundResult
from host_tools.headend.lopa.lab import read_profile
from host_tools.headend.lopa.ref import aggregate
from host_tools.reliability.fleetup import PLATFORM, Meter, bring_up, parallel, say, spread
from host_tools.sim import fleet, profiles

LENGTH = 900  # 15-minute intervals
WEEK = 672
INTO = 5  # the clock is moved to this many seconds into the next interval
MIN_INTERVAL_S = 1.5  # real seconds an interval lasts at least: >= 1 s of ADC samples in it
UP_S = 120.0  # how long a meter may take to be up again, or to catch up with the clock
PROFILE_CAP = 192  # records in a meter's load profile (firmware/tasks/metrology.py)
# A meter's clock this far off the fleet's after a power-up is set: less than INTO, or a
# meter behind by more would be one interval late in every round after (the clock is held)
CLOCK_OFF_S = 2
HEAP_GOAL_B_PER_DAY = 50  # issue 17: |free-heap trend| per simulated day, within a boot
# A meter's fit is judged over a fitted window of a simulated week or more: gc leaves ram_free
# ~100-300 B apart from one sample to the next, so a 2-day fit is still ~+-150 B/day off
JUDGE_MIN_INTERVALS = WEEK
WARM_UP_SAMPLES = 1  # each boot's first samples, left out of the fit (HeapFit)


@dataclass
class Config:
    meters: int = 50
    intervals: int = WEEK
    group: int = 10  # members per group
    m: int = 2  # robust: members that may be missing
    batch: int = 8  # intervals between disturbances (and memory samples)
    fail_p: float = 0.25  # per group and batch (when allowed): a failure
    cut_p: float = 0.25  # ... or a power cut
    seed: int = 1
    profile: str = profiles.DEFAULT  # the meters' port profile (host_tools/sim/profiles.py)


@dataclass
class Figures:
    rounds: int = 0
    decrypted: int = 0
    by_recovery: int = 0  # rounds that decrypted with members missing
    missing_members: int = 0
    lost: list[str] = field(default_factory=list)  # intervals without an aggregate
    wrong: list[str] = field(default_factory=list)  # aggregate != lab truth
    unverified: list[str] = field(default_factory=list)  # no lab truth for a reporter
    # members asked for a round that had no value: up, but their clock behind the fleet's
    late: list[str] = field(default_factory=list)
    failures: int = 0
    time_sets: int = 0  # meters whose clock was behind after a power-up (a Pico's)
    cuts: int = 0
    probes: int = 0
    batch_s: list[float] = field(default_factory=list)
    interval_s: list[float] = field(default_factory=list)  # wall time of step + round
    catch_up: int = 0  # meters up that did not report and were waited for (READ)
    mem: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # id -> (t, ram_free)
    # id -> the intervals after which the meter restarted (power cut, failure, lab probe)
    restarts: dict[int, list[int]] = field(default_factory=dict)
    index: dict[int, int] = field(default_factory=dict)  # id -> the meter's index
    heap: dict[int, HeapFit] = field(default_factory=dict)  # id -> its free heap's fit
    leaks: list[str] = field(default_factory=list)  # meters whose |trend| missed the goal
    dropped: dict[int, int] = field(default_factory=dict)  # metrology mailbox drops seen
    overflow_logs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    aggregates: list[int] = field(default_factory=list)  # of the decrypted rounds
    wall_s: float = 0.0
    first: int = 0  # the first interval
    simulated_s: int = 0

    def name(self, meter_id: int) -> str:
        i = self.index.get(meter_id)
        return f"id {meter_id}" if i is None else str(i)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.wrong or self.unverified or self.late or self.leaks
                    or any(self.dropped.values()) or self.overflow_logs or self.errors)

    def report(self, cfg: Config) -> str:
        fits = [self.heap[i] for i in sorted(self.heap, key=lambda i: self.index.get(i, i))]
        judged = [f for f in fits if f.judged]
        pooled = HeapFit.pooled(fits)
        if not judged:
            verdict = (f"not judged (no meter's fitted window reaches {JUDGE_MIN_INTERVALS} "
                       "intervals)")
        else:
            good = sum(1 for f in judged if f.ok)
            verdict = (f"{'PASS' if good == len(judged) else 'FAIL'} ({good} of {len(judged)} "
                       f"judged meters within {HEAP_GOAL_B_PER_DAY} B/day)")
        aggs = [float(a) for a in self.aggregates]
        lines = [
            f"soak: {cfg.meters} meters in groups of {cfg.group} (robust, M={cfg.m}), "
            f"{cfg.intervals} intervals of {LENGTH} s = {cfg.intervals * LENGTH / 86400:.2f} "
            f"simulated days, clock paced by the head-end; {self.wall_s:.0f} s wall; "
            f"platform: {PLATFORM}, profile {cfg.profile}",
            f"rounds: {self.rounds}, decrypted {self.decrypted} ({self.by_recovery} by "
            f"recovery, {self.missing_members} member-rounds missing, of them {len(self.late)} "
            f"of a meter up whose clock was behind); lost intervals: {len(self.lost)}",
            f"aggregates equal to the lab truth: {self.decrypted - len(self.wrong)} of "
            f"{self.decrypted} (wrong {len(self.wrong)}, without truth "
            f"{len(self.unverified)}); aggregate per round: {spread(aggs, 'mWh', 0)}, "
            f"{sum(1 for a in aggs if a == 0)} of them 0",
            f"disturbances: {self.failures} failures (powered off 1..{cfg.batch // 2} "
            f"intervals), {self.cuts} power cuts, {self.probes} lab probes (REPL, soft reset); "
            f"clocks behind after a power-up, set by the head-end: {self.time_sets}",
            f"interval (clock step + the groups' rounds), wall time: "
            f"{spread(self.interval_s)}; meters up that missed a round and were waited for: "
            f"{self.catch_up}",
            f"batch of {cfg.batch} intervals, wall time: {spread(self.batch_s)}",
            f"free heap (GROUPS ram_free after gc.collect): {sum(map(len, self.mem.values()))} "
            f"samples on {len(self.mem)} meters, each boot's trend fitted after its first "
            f"{WARM_UP_SAMPLES} sample(s) (warm-up), a restart starting a new boot; goal "
            f"|trend| <= {HEAP_GOAL_B_PER_DAY} B per simulated day over a fitted window of "
            f">= {JUDGE_MIN_INTERVALS} intervals:",
            *(f"  meter {self.name(f.meter_id)}: {f.describe()}" for f in fits),
            f"free heap trend per simulated day over the meters: "
            f"{spread([f.slope for f in fits], 'B/day', 0)}; all meters pooled: "
            f"{pooled.slope:+.0f} B/day (standard error {pooled.stderr:.0f}) from "
            f"{pooled.samples} samples; the whole run fitted "
            f"as one line (restarts ignored: earlier reports' figure): "
            f"{spread([trend(self.mem[f.meter_id]) for f in fits], 'B/day', 0)}",
            f"free heap: {verdict}",
            f"metrology mailbox overflows: STATS dropped {sum(self.dropped.values())}, "
            f"'mailbox metrology full' log lines {len(self.overflow_logs)}",
        ]
        for what, items in (("LOST", self.lost), ("WRONG", self.wrong), ("LATE", self.late),
                            ("UNVERIFIED", self.unverified), ("LEAK", self.leaks),
                            ("OVERFLOW", self.overflow_logs), ("ERROR", self.errors)):
            lines += [f"  {what} {x}" for x in items[:20]]
        lines.append("PASS" if self.ok else "FAIL")
        return "\n".join(lines)


PROBE_NEVER = 1 << 30  # a member never probed sorts first


def probe_due(batch_no: int, last: int | None, cfg: Config) -> bool:
    """Whether a group's member probed longest ago (at batch ``last``, None: never) is due
    for its lab probe. A run that a load profile holds whole needs none before the final
    probes. Otherwise: a group can be probed every other batch (a disturbed group stays quiet
    for the next one), so each member once in 2 x group batches, from the first batch on, so
    that the first probe of the group's last member also comes before its profile wraps (the
    probes once began only after 2 x group batches, and a week's first days had no lab
    truth)."""
    if cfg.intervals + cfg.batch <= PROFILE_CAP:
        return False
    return last is None or batch_no - last >= 2 * cfg.group - 1


@dataclass
class HeapFit:
    """A meter's free heap (ram_free samples) as growth while it runs: one least-squares slope
    shared by its boots, each boot with its own level. A restart ends a boot: the level a
    fresh heap settles at is no growth (before 8ef4db7, a group's set-up left 8.5 KB of
    machine code in RAM until the next reset: a step up at the first restart, which one line
    fitted over the run read as +1..+4 KB/day), while a leak grows within every boot, however
    often the meter restarts. Each boot's first WARM_UP_SAMPLES are its warm-up, left out: a
    boot's first rare requests (the sample's own STATS and GROUPS, a recovery, the blinding
    job's noise) import their code and intern its names (qstrs), which stay until the next
    reset, bounded by the firmware's code (tests_device/test_soak.py shows it stops)."""

    meter_id: int
    slope: float  # bytes per simulated day, within boots
    samples: int  # in the fit
    boots: int  # boots with >= 2 samples in the fit
    window: int  # intervals the fitted boots span, summed
    span: tuple[int, int]  # the intervals of the meter's first and last sample
    levels: tuple[float, float]  # min and max over the fitted boots of their mean free heap
    sxx: float = 0.0  # the fit's sums, for pooling meters
    sxy: float = 0.0
    syy: float = 0.0

    @property
    def stderr(self) -> float:
        """The slope's standard error, bytes per simulated day (0: too few samples)."""
        dof = self.samples - self.boots - 1
        if dof < 1 or not self.sxx:
            return 0.0
        rss = max(0.0, self.syy - self.sxy * self.sxy / self.sxx)
        return float((rss / dof / self.sxx) ** 0.5 * (86400 / LENGTH))

    @property
    def judged(self) -> bool:
        return self.window >= JUDGE_MIN_INTERVALS

    @property
    def ok(self) -> bool:
        return not self.judged or abs(self.slope) <= HEAP_GOAL_B_PER_DAY

    def describe(self) -> str:
        verdict = ("PASS" if self.ok else "FAIL") if self.judged else "not judged"
        return (f"{self.slope:+.0f} B/day (standard error {self.stderr:.0f}) from "
                f"{self.samples} samples in {self.boots} boots, "
                f"fitted window {self.window} intervals ({self.window * LENGTH / 86400:.1f} "
                f"days) of {self.span[0]}..{self.span[1]}; boot levels {self.levels[0]:.0f}.."
                f"{self.levels[1]:.0f} B: {verdict}")

    @classmethod
    def of(cls, meter_id: int, samples: list[tuple[int, int]], restarts: list[int],
           first: int = 0) -> HeapFit:
        """The fit of (interval, free heap) samples; ``restarts``: the intervals after which
        the meter restarted (a sample at such an interval was taken before it); intervals
        are shown from ``first``."""
        boots: dict[int, list[tuple[int, int]]] = {}
        for t, v in sorted(samples):
            boots.setdefault(sum(1 for r in restarts if r < t), []).append((t, v))
        sxx = sxy = syy = 0.0
        n = used = window = 0
        levels: list[float] = []
        for boot in boots.values():
            b = boot[WARM_UP_SAMPLES:]
            if len(b) < 2:
                continue
            mx = statistics.fmean(float(t) for t, _ in b)
            my = statistics.fmean(float(v) for _, v in b)
            sxx += sum((t - mx) ** 2 for t, _ in b)
            sxy += sum((t - mx) * (v - my) for t, v in b)
            syy += sum((v - my) ** 2 for _, v in b)
            n += len(b)
            used += 1
            window += b[-1][0] - b[0][0]
            levels.append(my)
        slope = sxy / sxx * (86400 / LENGTH) if sxx else 0.0
        ts = [t - first for t, _ in samples] or [0]
        return cls(meter_id, slope, n, used, window, (min(ts), max(ts)),
                   (min(levels), max(levels)) if levels else (0.0, 0.0), sxx, sxy, syy)

    @classmethod
    def pooled(cls, fits: list[HeapFit]) -> HeapFit:
        """Every meter's boots in one fit (one slope; a level per boot)."""
        sxx = sum(f.sxx for f in fits)
        sxy = sum(f.sxy for f in fits)
        return cls(0, sxy / sxx * (86400 / LENGTH) if sxx else 0.0,
                   sum(f.samples for f in fits), sum(f.boots for f in fits),
                   sum(f.window for f in fits), (0, 0), (0.0, 0.0), sxx, sxy,
                   sum(f.syy for f in fits))


def trend(samples: list[tuple[int, int]]) -> float:
    """Least-squares slope of ram_free over the interval index, in bytes per day, as one
    line over the whole run (restarts ignored: the figure reported before HeapFit)."""
    if len(samples) < 3:
        return 0.0
    xs = [float(t) for t, _ in samples]
    ys = [float(v) for _, v in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    if den == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den * (86400 / LENGTH)


class Soak:
    def __init__(self, cfg: Config, base: Path, say: Callable[[str], None] = say,
                 samples: Path | None = None) -> None:
        if cfg.batch < 1:
            raise ValueError("batch must be >= 1")
        if cfg.meters < cfg.group or cfg.group < 3 or not 1 <= cfg.m <= cfg.group - 2:
            raise ValueError("need groups of >= 3 members, 1 <= M <= members - 2")
        self.cfg = cfg
        self.base = base
        self.say = say
        self.samples = samples  # the heap samples are written here after every batch
        self.rng = random.Random(cfg.seed)
        self.fig = Figures()
        self.ks = Keystore(base / "keystore.json")
        self.meters: list[Meter] = []
        self.groups: list[list[Meter]] = []
        self.heads: list[HeadEnd] = []
        self.runs: list[int] = []
        self.results: dict[tuple[int, int], RoundResult] = {}
        self.truth: dict[int, dict[int, int]] = {}  # meter id -> {t_end: import_mwh}
        self.busy: dict[int, threading.Thread] = {}  # meter index -> its disturbance
        self.off_until: dict[int, int] = {}  # meter index -> last interval it is off for
        self.quiet: set[int] = set()  # groups left alone in the next batch
        self.last_probe: dict[int, int] = {}  # meter index -> batch of its last lab probe
        # The first interval: a whole one ahead of host time, so that no RTC goes back (a
        # meter's clock saved host time while it ran before the fleet's clock was set).
        self.first = int(time.time()) // LENGTH + 2
        self.clock_t = self.first * LENGTH + INTO  # the fleet's time (set-clock), now
        # held while the fleet's clock moves, and while a meter's clock is checked and set
        self.clock_lock = threading.Lock()

    # -- set-up -------------------------------------------------------------------------------
    def set_up(self) -> None:
        cfg = self.cfg
        t0 = time.monotonic()
        self.meters = bring_up(cfg.meters, self.base / "fleet", self.ks, LENGTH, timeout=120,
                               sim_time=self.first * LENGTH + INTO, profile=cfg.profile)
        self.fig.index = {m.meter_id: m.index for m in self.meters}
        self.say(f"{cfg.meters} meters ({cfg.profile}) up, flashed, provisioned in "
                 f"{time.monotonic() - t0:.0f} s")
        n_groups = cfg.meters // cfg.group
        for gi in range(n_groups):
            ms = self.meters[gi * cfg.group:(gi + 1) * cfg.group]
            if gi == n_groups - 1:
                ms = self.meters[gi * cfg.group:]  # the rest join the last group
            self.groups.append(ms)

        def one(gi: int) -> tuple[HeadEnd, int]:
            he = HeadEnd(State(self.base / f"headend-{gi}.db"), serial_connector(self.ks),
                         timeout=30.0, key_s=3.0, margin_s=0.0, value_wait_s=UP_S / 2)
            tg = [Target(m.meter_id, m.port) for m in self.groups[gi]]
            for what, res in (("keys", he.keys(tg)),
                              ("group", he.group_create(self.gid(gi), tg, m=cfg.m))):
                if res.failed:
                    raise LopaError(f"group {gi}: {what}: "
                                    + "; ".join(f"{o.target.name}: {o.error}"
                                                for o in res.failed))
            run, _ = he.state.open_run(self.gid(gi), cfg.intervals)
            he.close()
            return he, run.run_id

        for he, run_id in parallel(range(n_groups), one, workers=n_groups):
            self.heads.append(he)
            self.runs.append(run_id)
        self.say(f"{n_groups} groups set up in {time.monotonic() - t0:.0f} s")

    @staticmethod
    def gid(gi: int) -> bytes:
        return f"soak{gi}".encode()

    # -- time -----------------------------------------------------------------------------------
    def step(self, t: int) -> None:
        """Close interval ``t`` on every meter: its clock (the supervisor's, which runs on
        while the meter is off: a Pico's firmware resumes behind it after a cut, and is set by
        _set_time_if_behind) to INTO seconds into interval t + 1."""
        def one(m: Meter) -> None:
            try:
                fleet.ctl(m.dir, {"cmd": "set-clock", "t": (t + 1) * LENGTH + INTO}, 30.0)
            except fleet.SimError as e:
                self.fig.errors.append(f"meter {m.index}: set-clock: {e}")

        with self.clock_lock:
            self.clock_t = (t + 1) * LENGTH + INTO
            parallel(self.meters, one, workers=16)

    def _read_interval(self, m: Meter) -> int:
        with open_link(m.port, self.ks, m.meter_id, 15.0) as link:
            return int(link.request(wire.K_READ)["interval"]["index"])

    def _wait_up(self, m: Meter, t: int = 0) -> bool:
        """Until the meter's firmware answers a READ in interval t or later (by default: in
        any interval, i.e. its clock has told metrology which one is open)."""
        deadline = time.monotonic() + UP_S
        while time.monotonic() < deadline:
            try:
                if self._read_interval(m) >= t:
                    return True
            except (LinkError, MeterError, OSError, KeyError, TypeError, ValueError):
                pass
            time.sleep(0.5)
        return False

    def catch_up(self, t: int, up: list[Meter]) -> None:
        """Before the clock moves on from interval t + 1: every meter that was up when t
        closed and did not report for t has closed t too (else it would see two boundaries
        at once, and close one interval for two)."""
        reported = {i for gi in range(len(self.groups))
                    if (r := self.results.get((gi, t))) is not None for i in r.ciphertexts}
        slow = [m for m in up if m.meter_id not in reported and m.index not in self.busy]
        if not slow:
            return
        for he in self.heads:
            he.close()  # the READs below open the meters' ports themselves
        self.fig.catch_up += len(slow)

        def one(m: Meter) -> None:
            if not self._wait_up(m, t + 1):
                self.fig.errors.append(f"meter {m.index}: not in interval {t + 1} "
                                       f"{UP_S:.0f} s after it began")

        parallel(slow, one, workers=16)

    # -- the rounds --------------------------------------------------------------------------
    def round(self, t: int, up: set[int]) -> None:
        """The round of interval t in every group, at once; members not ``up`` when t closed
        are not asked (they count as missing)."""
        def group(gi: int) -> None:
            he = self.heads[gi]
            tg = [Target(m.meter_id, m.port if m.index in up else "") for m in self.groups[gi]]
            try:
                self.results[(gi, t)] = he.round_at(self.gid(gi), t, LENGTH, self.runs[gi], tg)
            except (LopaError, *METER_FAILURES) as e:
                self.fig.errors.append(f"group {gi} round {t}: {e}")

        parallel(range(len(self.groups)), group, workers=len(self.groups))

    def _set_time_if_behind(self, m: Meter) -> None:
        """A meter up again after a power cut, whose clock is behind the fleet's: a Pico's (no
        battery-backed RTC: its firmware resumes from the time it last saved). The head-end
        sets it with an authenticated TIME_SET, as it would a real meter's; a meter whose RTC
        ran on (unix, a Pyboard) is not behind and gets none. The fleet's clock stands still
        meanwhile (clock_lock): a TIME_SET that crossed a step (the fleet's time read before
        it, the board's RTC moved by it) once left a meter's clock 900 s behind for good, one
        interval late in every round after. A running VM sees a set-clock at its next poll,
        so a clock off at the first READ is read again before it is set, and every TIME_SET
        is checked by a READ after it."""
        with self.clock_lock:
            now = self.clock_t
            for attempt in range(4):
                try:
                    with open_link(m.port, self.ks, m.meter_id, 15.0) as link:
                        if abs(int(link.request(wire.K_READ)["clock"]) - now) <= CLOCK_OFF_S:
                            return
                        if attempt:
                            link.request(wire.K_TIME_SET, {"t": now})
                            self.fig.time_sets += 1
                except (LinkError, MeterError, OSError, KeyError, TypeError, ValueError) as e:
                    self.fig.errors.append(f"meter {m.index}: time set after power-up: {e}")
                    return
                time.sleep(0.5)
        self.fig.errors.append(f"meter {m.index}: clock still off after 3 time sets")

    # -- disturbances ----------------------------------------------------------------------------
    def _off(self, m: Meter, off_s: float) -> None:
        try:
            fleet.ctl(m.dir, {"cmd": "power-cut", "off_s": off_s}, timeout=off_s + 60)
        except fleet.SimError as e:
            self.fig.errors.append(f"meter {m.index}: power cut: {e}")
            return
        if not self._wait_up(m):
            self.fig.errors.append(f"meter {m.index}: not up {UP_S:.0f} s after its power cut")
            return
        self._set_time_if_behind(m)

    def _fail(self, m: Meter) -> None:
        # Off until power_on() (after its last interval, off_until) ends it.
        try:
            fleet.ctl(m.dir, {"cmd": "power-cut", "off_s": 1e6}, timeout=UP_S * 30)
        except fleet.SimError as e:
            self.fig.errors.append(f"meter {m.index}: failure: {e}")
            return
        if not self._wait_up(m):
            self.fig.errors.append(f"meter {m.index}: not up {UP_S:.0f} s after its failure")
            return
        self._set_time_if_behind(m)

    def power_on(self, t: int) -> None:
        """Failed meters whose failure ends with interval t: power on (once they are off)."""
        for idx, last in list(self.off_until.items()):
            if last > t:
                continue
            m = self.meters[idx]
            try:
                if fleet.ctl(m.dir, {"cmd": "status"})["vm"] == "off":
                    fleet.ctl(m.dir, {"cmd": "power-on"})
                    del self.off_until[idx]
            except fleet.SimError as e:
                self.fig.errors.append(f"meter {m.index}: power-on: {e}")

    def _probe(self, m: Meter) -> None:
        for attempt in (1, 2):  # a busy host can make the raw REPL slow to come
            try:
                prof = read_profile(m.port, timeout=30.0)
            except Exception as e:  # a probe that fails is reported, not fatal
                if attempt == 2:
                    self.fig.errors.append(f"meter {m.index}: lab probe: {e}")
                continue
            self.truth.setdefault(m.meter_id, {}).update(prof)
            break
        if not self._wait_up(m):
            self.fig.errors.append(f"meter {m.index}: not up {UP_S:.0f} s after its lab probe")

    def _start(self, m: Meter, fn: Callable[[], None], t: int) -> None:
        self.fig.restarts.setdefault(m.meter_id, []).append(t)
        def body() -> None:
            try:
                fn()
            finally:
                self.busy.pop(m.index, None)

        th = threading.Thread(target=body, daemon=True)
        self.busy[m.index] = th
        th.start()

    def disturb(self, batch_no: int, t: int) -> None:
        """After interval t, between batches, in each group with no member disturbed now
        and none in the batch before (so that a robust group never misses more than M
        members in an interval): the lab probe of the member probed longest ago, when due
        (every member once in 2 x members batches, before its load profile wraps), and with
        some chance a failure or a power cut of another member."""
        cfg = self.cfg
        quiet_next: set[int] = set()
        for gi, ms in enumerate(self.groups):
            if gi in self.quiet or any(m.index in self.busy for m in ms):
                continue
            free = list(ms)
            oldest = min(free, key=lambda m: self.last_probe.get(m.index, -PROBE_NEVER))
            if probe_due(batch_no, self.last_probe.get(oldest.index), cfg):
                self.last_probe[oldest.index] = batch_no
                self.fig.probes += 1
                self._start(oldest, lambda m=oldest: self._probe(m), t)  # type: ignore[misc]
                free.remove(oldest)
                quiet_next.add(gi)
            r = self.rng.random()
            if r >= cfg.fail_p + cfg.cut_p or (gi in quiet_next and cfg.m < 2):
                continue  # with M = 1, one disturbance at a time
            m = self.rng.choice(free)
            if r < cfg.fail_p:
                self.off_until[m.index] = t + self.rng.randint(1, max(1, cfg.batch // 2))
                self.fig.failures += 1
                self._start(m, lambda m=m: self._fail(m), t)  # type: ignore[misc]
            else:
                self.fig.cuts += 1
                self._start(m, lambda m=m: self._off(m, 0.05), t)  # type: ignore[misc]
            quiet_next.add(gi)
        self.quiet = quiet_next

    def wait_quiet(self) -> None:
        for th in list(self.busy.values()):
            th.join()

    # -- watching ---------------------------------------------------------------------------
    def sample(self, t: int, meters: list[Meter], final: bool = False) -> None:
        """ram_free (GROUPS) and metrology's mailbox drops (STATS) of these meters (``final``:
        the last, given more time)."""
        def one(m: Meter) -> None:
            if m.index in self.busy:
                return
            try:
                with open_link(m.port, self.ks, m.meter_id, 30.0 if final else 15.0) as link:
                    # STATS first: its code's names, interned at a boot's first STATS, are
                    # then in every ram_free, the boot's first one too
                    st = link.request(wire.K_STATS)
                    g = json.loads(link.request_raw(wire.K_GROUPS, b""))
            except (LinkError, MeterError, OSError, ValueError):
                # a meter just restarting: the next sample (at the end: one sample fewer; a
                # STATS that never came has been seen on a loaded host, not yet understood)
                return
            self.fig.mem.setdefault(m.meter_id, []).append((t, int(g["ram_free"])))
            d = int(st["tasks"].get("metrology", {}).get("dropped", 0))
            if d:
                self.fig.dropped[m.meter_id] = max(d, self.fig.dropped.get(m.meter_id, 0))

        parallel(meters, one, workers=4 if final else 16)

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> Figures:
        cfg = self.cfg
        t_wall = time.monotonic()
        self.set_up()
        first = self.fig.first = self.first
        self.say(f"rounds from interval {first} (RTC {first * LENGTH + INTO})")
        t = first
        batch_no = 0
        per_sample = max(1, min(cfg.meters, 10))
        while t < first + cfg.intervals:
            ts = list(range(t, min(t + cfg.batch, first + cfg.intervals)))
            b0 = time.monotonic()
            for x in ts:
                i0 = time.monotonic()
                # who is up as x closes: a meter that comes up later has not closed x
                up = [m for m in self.meters if m.index not in self.busy]
                self.step(x)
                self.round(x, {m.index for m in up})
                self.catch_up(x, up)
                self.power_on(x)
                left = MIN_INTERVAL_S - (time.monotonic() - i0)
                if left > 0:  # each interval measures energy for at least one second
                    time.sleep(left)
                self.fig.interval_s.append(time.monotonic() - i0)
            for he in self.heads:
                he.close()  # the ports free for the samples and the lab probes
            self.fig.batch_s.append(time.monotonic() - b0)
            ok = sum(1 for gi in range(len(self.groups)) for x in ts
                     if (r := self.results.get((gi, x))) is not None and r.ok)
            self.say(f"batch {batch_no}: intervals {ts[0]}..{ts[-1]}: {ok} of "
                     f"{len(ts) * len(self.groups)} rounds decrypted in "
                     f"{self.fig.batch_s[-1]:.1f} s")
            sample = [self.meters[(batch_no * per_sample + k) % cfg.meters]
                      for k in range(per_sample)]
            self.sample(ts[-1], sample)
            self.dump()
            self.disturb(batch_no, ts[-1])
            batch_no += 1
            t = ts[-1] + 1
        deadline = time.monotonic() + UP_S
        while self.off_until and time.monotonic() < deadline:
            self.power_on(first + cfg.intervals)
            time.sleep(0.2)
        self.wait_quiet()
        # the lab truth of the last records, every meter
        for m in self.meters:
            self.fig.restarts.setdefault(m.meter_id, []).append(first + cfg.intervals - 1)
        parallel(self.meters, self._probe, workers=8)
        self.fig.probes += len(self.meters)
        self.sample(first + cfg.intervals, self.meters, final=True)
        self.dump()
        self.overflow_logs()
        self.judge(first)
        self.fig.wall_s = time.monotonic() - t_wall
        self.fig.simulated_s = cfg.intervals * LENGTH
        return self.fig

    def dump(self) -> None:
        """The heap samples so far to ``samples`` (--samples; ``--judge`` reads them): a run
        stopped before its end still shows its trend."""
        if self.samples is None:
            return
        f = self.fig
        tmp = self.samples.with_suffix(".tmp")
        tmp.write_text(json.dumps({"first": self.first, "intervals": self.cfg.intervals,
                                   "mem": f.mem, "restarts": f.restarts, "index": f.index}))
        tmp.replace(self.samples)

    def overflow_logs(self) -> None:
        from host_tools.headend import queries

        def one(m: Meter) -> None:
            for attempt in (1, 2, 3):
                try:
                    with open_link(m.port, self.ks, m.meter_id, UP_S / 2) as link:
                        recs = queries.read_log(link, "security")
                    break
                except (LinkError, MeterError, OSError) as e:
                    if attempt == 3:
                        self.fig.errors.append(f"meter {m.index}: security log: {e}")
                        return
            for r in recs:
                if "mailbox metrology full" in str(r[2]):
                    self.fig.overflow_logs.append(f"meter {m.index}: {r}")

        parallel(self.meters, one, workers=4)

    def judge(self, first: int) -> None:
        f = self.fig
        for gi in range(len(self.groups)):
            for t in range(first, first + self.cfg.intervals):
                f.rounds += 1
                r = self.results.get((gi, t))
                if r is None or not r.ok:
                    f.lost.append(f"group {gi} interval {t}: "
                                  + (r.error or "failed" if r else "no round"))
                    continue
                f.decrypted += 1
                f.aggregates.append(int(r.aggregate or 0))
                if r.missing:
                    f.by_recovery += 1
                    f.missing_members += len(r.missing)
                f.late += [f"group {gi} interval {t}: {r.why[i]}" for i in r.missing
                           if "no value" in r.why.get(i, "")]
                reporters = [i for i in r.ciphertexts if i not in r.missing]
                t_end = (t + 1) * LENGTH
                vals = [self.truth.get(i, {}).get(t_end) for i in reporters]
                if any(v is None for v in vals):
                    no = [i for i, v in zip(reporters, vals, strict=True) if v is None]
                    f.unverified.append(f"group {gi} interval {t}: no lab truth for {no}")
                    continue
                expected = aggregate(v for v in vals if v is not None)
                if expected != r.aggregate:
                    f.wrong.append(f"group {gi} interval {t}: aggregate {r.aggregate}, lab "
                                   f"truth {expected}")
        for mid, samples in f.mem.items():
            fit = f.heap[mid] = HeapFit.of(mid, samples, f.restarts.get(mid, []), first)
            if not fit.ok:
                f.leaks.append(f"meter {f.name(mid)}: {fit.describe()}")


def run(cfg: Config, base: Path, say: Callable[[str], None] = say,
        samples: Path | None = None) -> Figures:
    soak = Soak(cfg, base, say, samples)
    try:
        fig = soak.run()
    finally:
        for he in soak.heads:
            he.close()
            he.state.close()
        fleet.stop(base / "fleet")
    say(fig.report(cfg))
    return fig


def judge_samples(path: Path) -> int:
    """The free-heap lines of the report, from a run's --samples file (0: PASS)."""
    try:
        d = json.loads(path.read_text())
        fig = Figures(first=int(d["first"]), index={int(k): int(v) for k, v in
                                                    d.get("index", {}).items()})
        fig.mem = {int(k): [(int(t), int(v)) for t, v in s] for k, s in d["mem"].items()}
        fig.restarts = {int(k): [int(t) for t in r] for k, r in d["restarts"].items()}
        if "intervals" not in d:  # written before 'intervals': without the final probes
            end = max((t for s in fig.mem.values() for t, _ in s), default=0)
            for mid in fig.mem:
                fig.restarts.setdefault(mid, []).append(end - 1)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"soak: {path}: not a --samples file ({e})", file=sys.stderr)
        return 2
    for mid, samples in fig.mem.items():
        fit = fig.heap[mid] = HeapFit.of(mid, samples, fig.restarts.get(mid, []), fig.first)
        if not fit.ok:
            fig.leaks.append(str(mid))
    lines = fig.report(Config(meters=len(fig.mem))).splitlines()
    print("\n".join(x for x in lines if "heap" in x or x.startswith("  meter ")))
    return 1 if fig.leaks else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    c = Config()
    ap.add_argument("--meters", type=int, default=c.meters)
    ap.add_argument("--intervals", type=int, default=c.intervals)
    ap.add_argument("--group", type=int, default=c.group, help="members per group")
    ap.add_argument("--m", type=int, default=c.m, help="robust groups: M")
    ap.add_argument("--batch", type=int, default=c.batch)
    ap.add_argument("--seed", type=int, default=c.seed)
    ap.add_argument("--dir", type=Path, help="keep the fleet here (default: a temp dir)")
    ap.add_argument("--profile", default=c.profile,
                    help=f"port profile of the meters ({', '.join(profiles.names())}; "
                         f"default {c.profile})")
    ap.add_argument("--samples", type=Path,
                    help="write every meter's heap samples and restarts here (JSON)")
    ap.add_argument("--judge", type=Path, metavar="SAMPLES",
                    help="only judge the free heap of a run's --samples file, and exit")
    a = ap.parse_args(argv)
    if a.judge:
        return judge_samples(a.judge)
    if a.profile not in profiles.PROFILES:  # one line, before anything is started
        print(f"soak: unknown profile {a.profile!r}; valid: {', '.join(profiles.names())}",
              file=sys.stderr)
        return 2
    cfg = Config(meters=a.meters, intervals=a.intervals, group=a.group, m=a.m,
                 batch=a.batch, seed=a.seed, profile=a.profile)
    cycle = 2 * min(cfg.group, cfg.meters) * cfg.batch  # intervals between a member's probes
    if cycle + cfg.batch > PROFILE_CAP and cfg.intervals > PROFILE_CAP:
        ap.error(f"each member is probed once in {cycle} intervals, and its load profile "
                 f"holds {PROFILE_CAP}: use a smaller --group or --batch (or fewer "
                 f"--intervals), or the early rounds have no lab truth")
    if a.dir:
        fig = run(cfg, a.dir, samples=a.samples)
    else:
        with tempfile.TemporaryDirectory(prefix="soak-") as d:
            fig = run(cfg, Path(d), samples=a.samples)
    return 0 if fig.ok else 1


if __name__ == "__main__":
    sys.exit(main())
