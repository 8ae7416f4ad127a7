"""The soak's default-suite run (host_tools/reliability/soak.py; the week-long run of 50 meters
is `make soak`): six virtual meters in two robust groups on a clock the head-end moves on,
a LoPA round for each of 8 fifteen-minute intervals, with meters failing, losing power and
being probed through the REPL for the lab truth between batches of 4. No
interval may be lost, every aggregate must equal the lab truth, the free heap must not fall
all along (two hours of simulated time cannot show a slow leak: the judgement itself is
tested on made-up samples below; the week-long `make soak` applies it), and metrology's
mailbox must never overflow."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from host_tools.headend import wire
from host_tools.headend.client import open_link
from host_tools.headend.lopa import Target, codec
from host_tools.headend.lopa.headend import RoundResult
from host_tools.reliability import soak
from host_tools.sim import fleet, profiles

from .conftest import session_profile


@pytest.fixture(autouse=True)
def _virtual_only(real_port: str | None) -> None:
    if real_port:
        pytest.skip("needs virtual meters (accelerated clock, power control, lab REPL)")


def test_soak_short(tmp_path: Path) -> None:
    cfg = soak.Config(meters=6, intervals=8, group=3, m=1, batch=4,
                      fail_p=0.5, cut_p=0.5, seed=3,
                      profile=session_profile() or soak.Config.profile)
    lines: list[str] = []
    fig = soak.run(cfg, tmp_path, say=lines.append)
    report = "\n".join(lines)
    print(report)
    assert fig.ok, report
    assert fig.rounds == 2 * 8 and fig.decrypted == fig.rounds, report
    assert not fig.lost and not fig.wrong and not fig.unverified, report
    assert fig.failures + fig.cuts >= 2, report  # disturbed between batches ...
    assert fig.by_recovery >= 1, report  # ... and some round decrypted by recovery
    # a Pico has no battery-backed RTC: each meter that failed for an interval or more came
    # back behind and had its clock set by the head-end; the unix VM's RTC runs on
    if profiles.get(cfg.profile)["port"] == "rp2":
        assert fig.time_sets >= fig.failures >= 1, report
    elif cfg.profile == "unix":
        assert fig.time_sets == 0, report
    # the free heap of every meter, twice per meter on average (a meter busy when sampled
    # is left out of that sample)
    assert len(fig.mem) == 6 and sum(map(len, fig.mem.values())) >= 12, report


def test_heap_judgement() -> None:
    """The free-heap judgement (soak.HeapFit) can fail, also on a leak that restarts hide: a
    month of samples every 8 intervals, a restart every 80, gc noise of +-96 B. Growth of
    1 B an interval (96 B/day) fails the 50 B/day goal whether or not the restarts reset it;
    a flat heap passes, also with a different level per boot (the set-up residue that one
    line over the run read as +KB/day) and with each boot's warm-up; a run shorter than a
    week is not judged."""
    month = range(8, 2880 + 1, 8)
    restarts = list(range(80, 2880, 80))
    rng = random.Random(17)
    noise = {t: rng.choice(range(-96, 97, 32)) for t in month}  # ram_free moves in 32-B steps

    def fit(heap: Callable[[int], float], ts: range = month) -> soak.HeapFit:
        return soak.HeapFit.of(1, [(t, int(heap(t)) + noise[t]) for t in ts], restarts)

    def boot(t: int) -> int:  # this boot's number and how far into it t is
        return sum(1 for r in restarts if r < t)

    def since(t: int) -> int:
        return t - max([0, *(r for r in restarts if r < t)])

    leak = fit(lambda t: 100_000 - t)
    assert leak.slope == pytest.approx(-96, abs=10) and leak.judged and not leak.ok
    hidden = fit(lambda t: 100_000 - since(t))  # a leak that every restart clears
    assert hidden.slope == pytest.approx(-96, abs=15) and not hidden.ok
    assert soak.trend([(t, 100_000 - since(t)) for t in month]) > -20  # one line misses it
    assert not fit(lambda t: 100_000 + t).ok  # the free heap growing is a defect too
    flat = fit(lambda t: 100_000)
    assert abs(flat.slope) < 10 and flat.ok and flat.boots == len(restarts) + 1
    steps = fit(lambda t: 100_000 + (8_700 if boot(t) else 0) + 200 * (boot(t) % 3))
    assert abs(steps.slope) < 10 and steps.ok
    # ... which one line over two days read as KB per day
    assert soak.trend([(t, 100_000 + (8_700 if t > 80 else 0)) for t in range(8, 193, 8)]) > 1000
    warm = fit(lambda t: 100_000 - (0 if since(t) <= 8 else 400))  # a boot's first sample
    assert abs(warm.slope) < 10 and warm.ok
    short = fit(lambda t: 100_000 - 10 * t, range(8, 600, 8))
    assert not short.judged and short.ok and short.slope < -500
    pooled = soak.HeapFit.pooled([leak, flat])
    assert pooled.slope == pytest.approx(-48, abs=10)


def test_the_heap_stays_put_over_rounds_set_ups_and_restarts(tmp_path: Path) -> None:
    """Three meters in a group: their free heap (ram_free after gc.collect, STATS first, as
    the soak samples it) after the set-up, after 8 rounds, after two more groups set up and
    deleted, and after a soft reset (the lab probe's), a power cut, and rounds again. Code a
    set-up imported and never dropped (before 8ef4db7: x25519_thumb, 8.5 KB on the virtual
    Pico) made a restart's heap step up; anything held per round or per set-up makes it fall.
    Repeated STATS and GROUPS (each imports code and interns its names the first time after a
    boot) leave it where it was."""
    cfg = soak.Config(meters=3, intervals=12, group=3, m=1, batch=4,
                      profile=session_profile() or soak.Config.profile)
    s = soak.Soak(cfg, tmp_path, say=lambda _: None)
    try:
        s.set_up()
        for he in s.heads:
            he.close()

        def free() -> list[int]:
            out = []
            for m in s.meters:
                with open_link(m.port, s.ks, m.meter_id, 30.0) as link:
                    link.request(wire.K_STATS)
                    out.append(int(json.loads(link.request_raw(wire.K_GROUPS, b""))
                                   ["ram_free"]))
            return out

        def rounds(n: int) -> None:
            for _ in range(n):
                t = s.clock_t // soak.LENGTH
                s.step(t)
                s.round(t, {m.index for m in s.meters})
                time.sleep(soak.MIN_INTERVAL_S)
            for he in s.heads:
                he.close()
            assert not s.fig.errors, s.fig.errors

        set_up = free()
        again = [free() for _ in range(3)]
        rounds(8)
        after_rounds = free()
        tg = [Target(m.meter_id, m.port) for m in s.meters]
        for gid in (b"heap1", b"heap2"):
            assert not s.heads[0].group_create(gid, tg, m=1).failed
            s.heads[0].close()
            for m in s.meters:
                with open_link(m.port, s.ks, m.meter_id, 30.0) as link:
                    link.request_raw(wire.K_GROUP_DELETE, codec.group_delete_cmd(gid))
        after_set_ups = free()
        s._probe(s.meters[0])  # a soft reset
        fleet.ctl(s.meters[1].dir, {"cmd": "power-cut", "off_s": 0.05}, timeout=60)
        assert s._wait_up(s.meters[1])
        s._set_time_if_behind(s.meters[1])
        rounds(4)
        free()  # the boots' warm-up
        restarted = free()
        report = (f"set-up {set_up}, again {again}, 8 rounds {after_rounds}, 2 set-ups "
                  f"{after_set_ups}, restarted {restarted}")
        for i in range(3):
            assert all(abs(a[i] - set_up[i]) <= 256 for a in again), report
            assert abs(after_rounds[i] - set_up[i]) <= 512, report
            assert abs(after_set_ups[i] - after_rounds[i]) <= 512, report
            assert abs(restarted[i] - after_rounds[i]) <= 1024, report
    finally:
        for he in s.heads:
            he.close()
            he.state.close()
        fleet.stop(tmp_path / "fleet")


def test_every_member_is_probed_before_its_load_profile_wraps() -> None:
    """The week's schedule (groups of 10, batches of 8, a group probed at most every other
    batch): every member's lab probes, the first one included, come less than a load
    profile (192 intervals) apart, so that every round of the week has its lab truth."""
    cfg = soak.Config()
    batches = cfg.intervals // cfg.batch
    last: dict[int, int] = {}
    probes: dict[int, list[int]] = {i: [] for i in range(cfg.group)}
    for b in range(0, batches, 2):  # a probed group stays quiet for the next batch
        oldest = min(range(cfg.group), key=lambda i: last.get(i, -soak.PROBE_NEVER))
        if soak.probe_due(b, last.get(oldest), cfg):
            last[oldest] = b
            probes[oldest].append(b)
    for i, bs in probes.items():
        gaps = [b2 - b1 for b1, b2 in zip([0, *bs], [*bs, batches], strict=True)]
        assert max(gaps) * cfg.batch <= soak.PROFILE_CAP - cfg.batch, (i, bs)
    # a run that one load profile holds is probed at its end only (its disturbances are
    # failures and cuts)
    day = soak.Config(intervals=96)
    assert not any(soak.probe_due(b, None, day) for b in range(day.intervals // day.batch))


def test_an_unknown_profile_is_refused_in_one_line_before_anything_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert soak.main(["--profile", "pico", "--dir", str(tmp_path / "soak")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["soak: unknown profile 'pico'; valid: rp2-pico, rp2-pico2, pybv11, "
                   "pybv11-thread, unix"]
    assert not (tmp_path / "soak").exists()


def test_a_member_up_but_behind_the_fleets_clock_fails_the_soak(tmp_path: Path) -> None:
    """A round decrypted by recovery because a member that was up had no value yet (its
    clock behind the fleet's: a month's run once had one meter 900 s behind for good, and
    every round of its group went by recovery) is a failure, not a disturbance."""
    cfg = soak.Config(meters=3, intervals=2, group=3, m=1)
    s = soak.Soak(cfg, tmp_path, say=lambda _: None)
    s.groups = [[]]
    late = ("meter 7: CIPHERTEXT refused: FAILED: no value (its clock 1797053405 is in "
            "interval 1996726, asked for 1996726)")
    for t, why in ((10, "no port given for it"), (11, late)):
        s.results[(0, t)] = RoundResult(b"g", t, soak.LENGTH, True, {1: 5, 2: 6}, {1: 1, 2: 2},
                                        [7], {7: why}, 11, None)
        for i, x in ((1, 5), (2, 6)):
            s.truth.setdefault(i, {})[(t + 1) * soak.LENGTH] = x
    s.judge(10)
    assert s.fig.decrypted == 2 and s.fig.by_recovery == 2 and not s.fig.wrong
    assert s.fig.late == [f"group 0 interval 11: {late}"]
    assert not s.fig.ok and "LATE group 0 interval 11" in s.fig.report(cfg)
