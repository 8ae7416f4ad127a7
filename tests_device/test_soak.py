"""The soak's default-suite run (host_tools/reliability/soak.py; the week-long run of 50 meters
is `make soak`): six virtual meters in two robust groups on a clock the head-end moves on,
a LoPA round for each of 8 fifteen-minute intervals, with meters failing, losing power and
being probed through the REPL for the lab truth between batches of 4. No
interval may be lost, every aggregate must equal the lab truth, the free heap must not fall
all along (two hours of simulated time cannot show a slow leak: the judgement itself is
tested on made-up samples below; the week-long `make soak` applies it), and metrology's
mailbox must never overflow."""

from __future__ import annotations

from pathlib import Path

import pytest

from host_tools.reliability import soak
from host_tools.sim import profiles

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


def test_leak_judgement() -> None:
    """The memory judgement can fail: a heap losing 40 B an interval over a week is a leak;
    a flat one with gc noise of a few KB is not, nor a short dip."""
    week = range(0, 672, 8)
    leaking = [(t, 100_000 - 40 * t + (37 * t % 11) * 100) for t in week]
    flat = [(t, 100_000 + (37 * t % 11) * 300) for t in week]
    dip = [(t, 100_000 - (1500 if 300 < t < 400 else 0)) for t in week]
    assert soak.trend(leaking) == pytest.approx(-40 * 96, rel=0.05)
    assert soak.leak(leaking)
    assert soak.leak(flat) is None
    assert soak.leak(dip) is None


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
