"""The LoPA head-end on simulated meters: key set-up, rounds, recovery, noise, and resuming
from its SQLite state after a crash. The simulated meters (host_tools.headend.lopa.sim) follow
docs/PROTOCOL.md "LoPA kinds" on the head-end's own reference math, which is cross-checked here
against the firmware's firmware/lib/lopa.py."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest

from host_tools.headend import wire
from host_tools.headend.lopa import HeadEnd, Hooks, LopaError, State, codec, ref
from host_tools.headend.lopa.sim import SimFleet, line_len, sim_fleet

GID = b"feeder-7"


class Crash(BaseException):
    """The head-end process dies here (nothing after this point is committed)."""


def headend(f: SimFleet, db: Path | str = ":memory:") -> HeadEnd:
    return HeadEnd(State(db), f.connector(), sleep=f.clock.sleep, now=f.clock.now)


def ready(n: int, m: int = 0, lam: float = 0.0, db: Path | str = ":memory:",
          seed: int = 1) -> tuple[SimFleet, HeadEnd]:
    f = sim_fleet(n, seed=seed)
    he = headend(f, db)
    assert not he.keys(f.targets).failed
    assert not he.pubkeys(f.targets).failed
    assert not he.group_create(GID, f.targets, m=m, lam=lam).failed
    return f, he


def kinds(f: SimFleet, kind: str) -> list[bytes]:
    return [p for m in f.meters.values() for k, p in m.received if k == kind]


# -- reference math ------------------------------------------------------------------------
def test_reference_math_matches_the_firmware() -> None:
    import hmac_sha256 as fw_h
    import lopa as fw  # firmware/lib, on the path via conftest
    import lopa_core as fw_core
    import x25519 as fw_x

    rng = random.Random(5)
    for _ in range(5):
        sk_i, pk_i = ref.keypair(rng.randbytes(32))
        sk_j, pk_j = ref.keypair(rng.randbytes(32))
        assert fw_x.public_key(sk_i) == pk_i
        id_i, id_j = rng.getrandbits(64), rng.getrandbits(64)
        gid = rng.randbytes(rng.randint(1, 16))
        k = ref.pair_key(sk_i, pk_j, gid, id_i, id_j)
        assert k == ref.pair_key(sk_j, pk_i, gid, id_j, id_i)
        assert k == fw.pair_key(sk_i, pk_j, gid, id_i, id_j)
        # the set-up's path (tasks/dc_setup.py): the ids as their bytes, the gid's pads made once
        b_i, b_j = id_i.to_bytes(8, "big"), id_j.to_bytes(8, "big")
        assert fw_core.pair_info_b(b_i, b_j) == fw_core.pair_info_b(b_j, b_i) \
            == fw.pair_info(id_i, id_j)
        assert fw_core.pair_key_pads(sk_i, pk_j, fw_h.hmac_pads(gid),
                                     fw_core.pair_info_b(b_i, b_j)) == k
        t = rng.getrandbits(32)
        assert ref.prf(k, gid, t) == fw.prf(k, gid, t)
        keys = {rng.getrandbits(64): rng.randbytes(32) for _ in range(6)}
        assert ref.blinding(keys, id_i, gid, t) == fw.blinding(list(keys.items()), id_i, gid, t)
    # ids that differ in their low byte only, and in their high byte only: the bytes order as
    # the numbers do
    for a, b in ((0x0102030405060700, 0x0102030405060701), (0x00FFFFFFFFFFFFFF, 1 << 56)):
        ab, bb = a.to_bytes(8, "big"), b.to_bytes(8, "big")
        assert fw_core.pair_info_b(bb, ab) == fw.pair_info(a, b) == b"lopa" + ab + bb
    with pytest.raises(ValueError, match="itself"):
        fw_core.pair_info_b(bytes(8), bytes(8))


def test_low_order_and_short_keys_are_rejected() -> None:
    good = ref.keypair()[1]
    assert ref.check_public_key(good) == good
    for bad in (bytes(32), (1).to_bytes(32, "little"), good[:31]):
        with pytest.raises(ref.BadPublicKey):
            ref.check_public_key(bad)


def test_codec_round_trips_and_fits_the_frame() -> None:
    members = [(i + 1, bytes([i]) * 32) for i in range(codec.CHUNK_MAX)]
    p = codec.group_keys_cmd(b"x" * 16, 7, members)
    assert len(p) <= wire.PAYLOAD_CAP
    assert codec.parse_group_keys_cmd(p) == (b"x" * 16, 7, members)
    assert codec.parse_recover_cmd(codec.recover_cmd(b"g", 9, [3, 4])) == (b"g", 9, [3, 4])
    assert codec.parse_group_begin_cmd(codec.group_begin_cmd(b"g", 300, 2, 0.5)) == (
        b"g", 300, 2, 0.5)
    with pytest.raises(codec.CodecError):
        codec.parse_keygen(bytes(36))  # a key one byte short
    with pytest.raises(codec.CodecError):
        codec.group_keys_cmd(b"g", 0, [*members, (99, bytes(32))])  # 26 members
    with pytest.raises(codec.CodecError):
        codec.enc_gid(bytes(17))


# -- S1-S4 ------------------------------------------------------------------------------------
def test_plain_group_aggregate_is_the_sum_and_ciphertexts_hide_readings() -> None:
    f, he = ready(5)
    run = he.run(GID, 4, lab=f.lab_probe())
    assert len(run.rounds) == 4 and len({r.t for r in run.rounds}) == 4
    for r in run.rounds:
        assert r.ok and not r.missing and r.expected is not None
        assert r.aggregate == r.expected  # no noise: exact
        assert r.lab is not None and set(r.lab) == set(f.meters)
        assert all(r.ciphertexts[i] != r.lab[i] for i in r.lab)
        j = r.to_json()
        assert j["lab_truth"] is True and j["expected"] == r.expected
        assert set(j) >= {"gid", "interval", "ciphertexts", "aggregate", "missing"}
    # every step is in the database
    rows = he.state.rounds(GID)
    assert [x.state for x in rows] == ["done"] * 4
    assert all(len(he.state.ciphertexts(GID, x.t)) == 5 for x in rows)


def test_robust_group_recovers_up_to_m_missing_members() -> None:
    f, he = ready(6, m=2)
    ids = sorted(f.meters)
    full = he.run(GID, 1, lab=f.lab_probe()).rounds[0]
    assert full.ok and full.aggregate == full.expected and not full.missing
    assert set(full.answers) == set(ids)  # S empty: every member still answers its C_i
    f.meters[ids[1]].up = False
    f.meters[ids[4]].up = False
    r = he.run(GID, 1, lab=f.lab_probe()).rounds[0]
    assert r.ok and r.missing == [ids[1], ids[4]]
    assert r.aggregate == r.expected
    assert r.expected == sum(f.meters[i].reading(i, r.t) for i in ids if i not in r.missing)
    assert f"meter {ids[1]}" in r.why[ids[1]] or "did not answer" in r.why[ids[1]]
    f.meters[ids[2]].up = False
    r = he.run(GID, 1).rounds[0]
    assert not r.ok and "3 members did not report" in (r.error or "")
    for i in (ids[1], ids[2], ids[4]):
        assert str(i) in (r.error or "")


def test_plain_group_fails_naming_the_missing_meter() -> None:
    f, he = ready(4)
    ids = sorted(f.meters)
    f.meters[ids[2]].up = False
    r = he.run(GID, 1).rounds[0]
    assert not r.ok and r.aggregate is None and r.missing == [ids[2]]
    assert f"meter {ids[2]} (sim:{ids[2]}) did not report" in (r.error or "")
    assert kinds(f, "RECOVER") == []


def test_member_without_a_port_counts_as_missing() -> None:
    f, he = ready(4, m=1)
    ids = sorted(f.meters)
    targets = [t for t in f.targets if t.meter_id != ids[0]]
    r = he.run(GID, 1, targets=targets, lab=f.lab_probe()).rounds[0]
    assert r.ok and r.missing == [ids[0]] and r.aggregate == r.expected
    assert r.why[ids[0]] == "no port given for it"


def test_reporter_silent_in_recovery_makes_the_round_undecryptable() -> None:
    f, he = ready(5, m=1)
    ids = sorted(f.meters)
    f.meters[ids[0]].up = False

    def die_after_round_1(t: int, got: dict[int, int]) -> None:
        f.meters[ids[3]].up = False  # reported, then lost before the recovery

    r = he.run(GID, 1, hooks=Hooks(after_ciphertexts=die_after_round_1)).rounds[0]
    assert not r.ok and "undecryptable" in (r.error or "")
    assert f"meter {ids[3]}" in (r.error or "") and "did not answer the recovery" in (r.error or "")
    # one RECOVER per reporting member, all with the same S: never retried with another set
    recs = {codec.parse_recover_cmd(p)[2].__repr__() for p in kinds(f, "RECOVER")}
    assert recs == {repr([ids[0]])}
    assert len(kinds(f, "RECOVER")) == 3


def test_groups_far_beyond_27_members_set_up_in_chunks() -> None:
    f, he = ready(60, m=3)
    assert all(len(m.groups[GID].ids) == 60 for m in f.meters.values())
    chunks = kinds(f, "GROUP_KEYS")
    assert len(chunks) == 60 * 3  # 25 + 25 + 10 per member
    assert all(len(p) <= wire.PAYLOAD_CAP for p in chunks)
    ids = sorted(f.meters)
    for i in ids[:3]:
        f.meters[i].up = False
    r = he.run(GID, 1, lab=f.lab_probe()).rounds[0]
    assert r.ok and r.aggregate == r.expected and len(r.missing) == 3


def test_bad_keys_from_a_meter_are_rejected() -> None:
    f = sim_fleet(4)
    ids = sorted(f.meters)
    f.meters[ids[1]].fake_pk = (1).to_bytes(32, "little")  # a low-order point
    he = headend(f)
    res = he.keys(f.targets)
    assert [o.target.meter_id for o in res.failed] == [ids[1]]
    assert "low-order" in (res.failed[0].error or "")
    assert he.state.meter(ids[1]) is None  # nothing stored
    with pytest.raises(LopaError, match=f"no public key for meter {ids[1]}"):
        he.group_create(GID, f.targets)


def test_an_unplugged_port_is_named_and_does_not_hang(tmp_path: Path) -> None:
    from host_tools.headend.keystore import Keystore, MeterEntry
    from host_tools.headend.lopa import Target, serial_connector

    ks = Keystore(tmp_path / "ks.json")
    ks.put(MeterEntry(42, bytes(32), port=str(tmp_path / "ttyACM9")))
    he = HeadEnd(State(":memory:"), serial_connector(ks), timeout=1.0)
    res = he.pubkeys([Target(42, str(tmp_path / "ttyACM9")), Target(43, "/dev/null")])
    assert [o.ok for o in res.outcomes] == [False, False]
    assert "ttyACM9: no such port" in (res.outcomes[0].error or "")
    assert "43" in (res.outcomes[1].error or "")  # not in the keystore: named


def test_parameters_are_checked() -> None:
    f, he = ready(4)
    with pytest.raises(LopaError, match=r"1\.\.2"):
        he.group_create(b"g2", f.targets, m=3)
    with pytest.raises(LopaError, match=r"3\.\.512"):
        he.group_create(b"g2", f.targets[:2])
    with pytest.raises(LopaError, match="other members"):
        he.group_create(GID, f.targets[:3])
    with pytest.raises(LopaError, match="no group"):
        he.run(b"nope", 1)


def test_a_replaced_key_pair_needs_the_group_set_up_again() -> None:
    f, he = ready(3)
    ids = sorted(f.meters)
    res = he.keys([t for t in f.targets if t.meter_id == ids[0]], replace=True)
    assert res.outcomes[0].created and "changed" in (res.outcomes[0].note or "")
    with pytest.raises(LopaError, match=f"public key of meter.*{ids[0]}.*changed"):
        he.group_create(GID, f.targets)
    assert not he.group_create(GID, f.targets, force=True).failed
    r = he.run(GID, 1, lab=f.lab_probe()).rounds[0]
    assert r.ok and r.aggregate == r.expected


def test_figures_count_bytes_and_round_trips_per_s_test() -> None:
    f, he = ready(3, m=1)
    he.run(GID, 2)
    ops = {o["test"]: o for o in he.state.ops()}
    assert set(ops) == {"S1", "S2", "S3", "S4"}
    s3 = ops["S3"]
    assert s3["per_kind"]["GROUP_KEYS"]["commands"] == 3
    assert s3["tx_bytes"] == sum(line_len(p) for m in f.meters.values()
                                 for k, p in m.received
                                 if k in ("GROUP_BEGIN", "GROUP_KEYS", "GROUP_COMMIT"))
    s4 = ops["S4"]
    assert s4["per_kind"]["CIPHERTEXT"]["commands"] == 6
    assert s4["per_kind"]["RECOVER"]["commands"] == 6
    assert all(o["rtt_ms_mean"] is not None and o["bytes"] > 0 for o in ops.values())


# -- resuming from the database ------------------------------------------------------------
def test_group_set_up_resumes_after_a_crash(tmp_path: Path) -> None:
    db = tmp_path / "he.db"
    f = sim_fleet(30)
    he = headend(f, db)
    he.keys(f.targets)
    ids = sorted(f.meters)
    victim = ids[7]
    # The head-end dies while member 7 is between its chunks (after the meter answered).

    def on_answer(i: int, kind: int, ans: bytes) -> None:
        if i == victim and kind == wire.K_GROUP_KEYS:
            raise Crash

    he2 = HeadEnd(State(db), f.connector(on_answer), sleep=f.clock.sleep, now=f.clock.now)
    with pytest.raises(Crash):
        he2.group_create(GID, f.targets, m=2)
    he2.state.close()
    before = {i: sum(k == "GROUP_BEGIN" for k, _ in f.meters[i].received) for i in ids}
    committed = {r.meter_id for r in State(db).members(GID) if r.state == "committed"}
    assert victim not in committed
    # A new head-end process on the same database.
    he3 = headend(f, db)
    res = he3.group_create(GID, f.targets, m=2)
    assert not res.failed
    g = he3.state.group(GID)
    assert g is not None and g.state == "ready"
    for i in ids:
        begins = sum(k == "GROUP_BEGIN" for k, _ in f.meters[i].received)
        # members committed before the crash are not set up again
        assert begins == before[i] + (0 if i in committed else 1), i
        assert GID in f.meters[i].groups
    # ready: a third call does nothing
    again = headend(f, db).group_create(GID, f.targets, m=2)
    assert again.note and "already set up" in again.note


def test_run_resumes_without_redoing_rounds_and_keeps_the_missing_set(tmp_path: Path) -> None:
    db = tmp_path / "he.db"
    f, he = ready(5, m=1, db=db)
    ids = sorted(f.meters)
    f.meters[ids[2]].up = False
    calls = {"n": 0}

    def crash_on_second(t: int, s: list[int]) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise Crash  # S of round 2 committed, no RECOVER sent yet

    with pytest.raises(Crash):
        he.run(GID, 3, hooks=Hooks(after_missing=crash_on_second))
    he.state.close()
    rounds = State(db).rounds(GID)
    assert [r.state for r in rounds] == ["done", "recovering"]
    assert rounds[1].missing == [ids[2]]
    ct_before = len(kinds(f, "CIPHERTEXT"))
    f.meters[ids[2]].up = True  # back: but round 2's S stays as it was committed
    res = headend(f, db).run(GID, 3, lab=f.lab_probe())
    assert res.resumed and len(res.rounds) == 3
    assert [r.resumed for r in res.rounds] == [True, True, False]
    assert res.rounds[0].t == rounds[0].t and res.rounds[1].t == rounds[1].t
    assert all(r.ok for r in res.rounds)
    assert res.rounds[1].missing == [ids[2]] and res.rounds[1].aggregate == res.rounds[1].expected
    assert res.rounds[2].missing == [] and res.rounds[2].aggregate == res.rounds[2].expected
    # only the new round's ciphertexts were asked for (5 meters; round 1 and 2 not again)
    assert len(kinds(f, "CIPHERTEXT")) == ct_before + 5
    recs = [codec.parse_recover_cmd(p) for p in kinds(f, "RECOVER")]
    assert {tuple(s) for _, t, s in recs if t == rounds[1].t} == {(ids[2],)}
    # the run is finished: the next call starts a new one
    nxt = headend(f, db).run(GID, 1)
    assert not nxt.resumed and nxt.run_id != res.run_id


def test_an_answer_lost_in_a_crash_is_not_asked_with_another_set(tmp_path: Path) -> None:
    db = tmp_path / "he.db"
    f, he = ready(4, m=1, db=db)
    he.state.close()
    ids = sorted(f.meters)
    f.meters[ids[0]].up = False
    lost = ids[2]

    def on_answer(i: int, kind: int, ans: bytes) -> None:
        if i == lost and kind == wire.K_RECOVER:
            raise Crash  # the meter answered (and erased C_i); the head-end never stored it

    he2 = HeadEnd(State(db), f.connector(on_answer), sleep=f.clock.sleep, now=f.clock.now)
    with pytest.raises(Crash):
        he2.run(GID, 1)
    he2.state.close()
    res = headend(f, db).run(GID, 1)
    r = res.rounds[0]
    assert not r.ok and "undecryptable" in (r.error or "") and f"meter {lost}" in (r.error or "")
    assert "already answered" in (r.error or "")
    recs = [codec.parse_recover_cmd(p)[2] for p in kinds(f, "RECOVER")]
    assert all(s == [ids[0]] for s in recs)


def test_a_round_interrupted_before_its_interval_closed_waits_for_it_when_resumed(
        tmp_path: Path) -> None:
    """Issue 20: Ctrl-C while a round waited for its interval to close, then the same run
    again: the resumed run asked at once and failed the round ("no value"). It waits now."""
    db = tmp_path / "he.db"
    f = sim_fleet(3, length=900)  # a field interval: far longer than the "no value" retries
    he = headend(f, db)
    assert not he.keys(f.targets).failed and not he.pubkeys(f.targets).failed
    assert not he.group_create(GID, f.targets).failed

    def ctrl_c(t: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        he.run(GID, 2, hooks=Hooks(before_wait=ctrl_c))
    he.state.close()
    started = State(db).rounds(GID)
    assert [r.state for r in started] != ["done"] and len(started) == 1
    res = headend(f, db).run(GID, 2, lab=f.lab_probe())
    assert res.resumed and res.rounds[0].t == started[0].t and res.rounds[0].resumed
    for r in res.rounds:
        assert r.ok, r.error
        assert r.aggregate == r.expected


def test_a_member_closing_the_interval_late_is_waited_for_by_its_own_clock() -> None:
    """Issue 20's `make bench` abort ("plain group ... cannot decrypt ... asked for t"): on a
    loaded 2-core host one member's VM closed the interval seconds after the head-end's
    reckoning, longer than the "no value" retries. The head-end now reads that member's clock
    and waits for its close; a clock far off is still named, not waited for."""
    f, he = ready(5)
    late = max(f.meters)  # not the member whose READ sets the pace
    f.meters[late].late_s = 4.0  # beyond value_wait_s (2 s)
    run = he.run(GID, 2, lab=f.lab_probe())
    for r in run.rounds:
        assert r.ok and not r.missing, r.error
        assert r.aggregate == r.expected
    f.meters[late].late_s = 120.0  # a wrong clock: no value, named, no long wait
    t0 = f.clock.now()
    r = he.run(GID, 1).rounds[0]
    assert not r.ok and f"meter {late}" in (r.error or "") and "asked for" in (r.error or "")
    assert f.clock.now() - t0 < 3 * 3 + 10


def test_a_group_set_up_at_a_boundary_starts_where_every_member_has_it() -> None:
    """A 4-worker `make test` run: two of three meters answered "no value" for good to the
    first round of a group made a moment before an interval boundary. Their clocks were ahead
    of the member whose READ sets the pace, so they committed in the next interval, and a
    group is in force from its commit's interval on (firmware/tasks/dc_round.py; the simulated
    meters now keep that rule). The first round is one that had opened on every clock by the
    commit, within CLOCK_SKEW_S."""
    f = sim_fleet(3)
    f.clock.t = 1_700_000_000.25  # 0.75 s before a boundary of the 3-s intervals
    pace = min(f.meters)  # the first READ goes to the lowest id
    for i, m in f.meters.items():
        if i != pace:
            m.late_s = -1.0  # a second ahead: these commit in the next interval
    he = headend(f)
    assert not he.keys(f.targets).failed and not he.pubkeys(f.targets).failed
    assert not he.group_create(GID, f.targets).failed
    t_read = f.meters[pace].interval()[0]
    assert [m.groups[GID].first - t_read for i, m in sorted(f.meters.items())] == [0, 1, 1]
    run = he.run(GID, 2, lab=f.lab_probe())
    for r in run.rounds:
        assert r.ok and not r.missing, r.error
        assert r.aggregate == r.expected
    assert [r.t for r in run.rounds] == [t_read + 1, t_read + 2]
    # a group whose set-up ended long ago is not held back: its first round is the one open
    g = he.state.group(GID)
    assert g is not None and g.ready is not None
    with he.state._tx() as db:
        db.execute("UPDATE groups SET ready=? WHERE gid=?", (g.ready - 3600, GID))
    f.clock.t = (t_read + 10) * 3 + 2.9  # 0.1 s before a boundary on the pace's clock
    assert he.run(GID, 1).rounds[0].t == t_read + 10


def test_groups_set_up_at_a_boundary_run_together_from_where_every_member_has_them() -> None:
    """run_many, as run above: two groups made a moment before a boundary, their members'
    clocks a second ahead of the one whose READ sets the pace. Both groups' first round is
    the interval in force on every member; none answers "no value"."""
    f = sim_fleet(3)
    f.clock.t = 1_700_000_000.25  # 0.75 s before a boundary of the 3-s intervals
    pace = min(f.meters)
    for i, m in f.meters.items():
        if i != pace:
            m.late_s = -1.0
    he = headend(f)
    assert not he.keys(f.targets).failed and not he.pubkeys(f.targets).failed
    for gid in (GID, b"feeder-8"):
        assert not he.group_create(gid, f.targets).failed
    t_read = f.meters[pace].interval()[0]
    assert {m.groups[b"feeder-8"].first - t_read for i, m in f.meters.items() if i != pace} \
        == {1}
    runs, failed = he.run_many([GID, b"feeder-8"], 2, lab=f.lab_probe())
    assert not failed, failed
    for run in runs:
        assert [r.t for r in run.rounds] == [t_read + 1, t_read + 2], run.gid
        for r in run.rounds:
            assert r.ok and not r.missing and r.aggregate == r.expected, r.error


def test_ctrl_c_during_recovery_keeps_every_answer_the_meters_gave(tmp_path: Path) -> None:
    """A meter answers RECOVER once per round: an answer received but dropped by a Ctrl-C
    would leave the round undecryptable for good. The requests under way finish and their
    answers are stored before the interrupt goes on; the rerun decrypts the round."""
    import _thread

    db = tmp_path / "he.db"
    f, he = ready(4, m=1, db=db)
    he.state.close()
    ids = sorted(f.meters)
    f.meters[ids[0]].up = False
    fired: list[int] = []

    def on_answer(i: int, kind: int, ans: bytes) -> None:
        if kind == wire.K_RECOVER and not fired:
            fired.append(i)
            _thread.interrupt_main()  # Ctrl-C while the others' answers are on their way

    he2 = HeadEnd(State(db), f.connector(on_answer), sleep=f.clock.sleep, now=f.clock.now)
    # Python's own Ctrl-C handler, as in a terminal: a runner started in the background by a
    # non-interactive shell inherits SIGINT ignored, and interrupt_main() then does nothing
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            he2.run(GID, 1)
    finally:
        signal.signal(signal.SIGINT, old)
    he2.state.close()
    t = State(db).rounds(GID)[0].t
    # every meter that answered has its answer stored (those not yet asked are asked later)
    answered = {i for i, m in f.meters.items() for k, _p in m.received if k == "RECOVER"}
    assert fired[0] in answered and set(State(db).answers(GID, t)) == answered
    r = headend(f, db).run(GID, 1, lab=f.lab_probe()).rounds[0]
    assert r.ok and r.t == t and r.aggregate == r.expected, r.error


# -- distributed noise ---------------------------------------------------------------------
LAM = 40.0


def test_noise_shares_of_n_minus_m_members_sum_to_laplace() -> None:
    rng = random.Random(2024)
    for n, m in ((3, 0), (5, 2), (50, 10)):
        sums = [sum(ref.noise_share(rng, n, m, LAM) for _ in range(n - m)) for _ in range(3000)]
        d = ref.ks_statistic(sums, lambda x: ref.laplace_cdf(x, LAM))
        assert d < ref.ks_critical(len(sums)), (n, m, d)
    # and the test has power: the same sums are not Laplace(2 lambda)
    d = ref.ks_statistic(sums, lambda x: ref.laplace_cdf(x, 2 * LAM))
    assert d > ref.ks_critical(len(sums))


def test_firmware_noise_shares_sum_to_laplace() -> None:
    import lopa as fw

    if not hasattr(fw, "noise_share"):
        pytest.skip("firmware/lib/lopa.py has no noise_share yet")
    rng = random.Random(77)
    n, m = 6, 2
    sums = [sum(fw.noise_share(n, m, LAM, rng.random) for _ in range(n - m))
            for _ in range(3000)]
    d = ref.ks_statistic(sums, lambda x: ref.laplace_cdf(x, LAM))
    assert d < ref.ks_critical(len(sums)), d


def test_aggregate_error_over_many_rounds_is_laplace() -> None:
    """Through the whole head-end: a robust group with noise and exactly M members missing
    every round, so that N - M shares are summed: aggregate - lab truth ~ Laplace(lambda)."""
    f, he = ready(4, m=1, lam=LAM, seed=3)
    ids = sorted(f.meters)
    f.meters[ids[1]].up = False
    errs = []
    for _ in range(4):  # the load profile keeps 192 intervals: probe every 100 rounds
        errs += [r.lab_error for r in he.run(GID, 100, lab=f.lab_probe()).rounds]
    assert all(e is not None for e in errs)
    d = ref.ks_statistic([float(e) for e in errs if e is not None],
                         lambda x: ref.laplace_cdf(x, LAM))
    assert d < ref.ks_critical(len(errs)), d
    assert any(e != 0 for e in errs)


def test_group_create_carries_each_meters_registrar_tag(tmp_path: Path) -> None:
    """With the registrar's approval (`headend group create --registrar`), each member's
    GROUP_COMMIT carries its own tag over the member list; a group the registrar refuses (a
    member it never registered) is not begun on any meter."""
    from host_tools.registrar import Policy, Registrar

    f = sim_fleet(5, seed=3)
    he = headend(f)
    assert not he.keys(f.targets).failed
    assert not he.pubkeys(f.targets).failed
    reg = Registrar(tmp_path / "registrar.json")
    reg.init(Policy(3, 1000.0, 2.0, 1000.0))
    members = {t.meter_id: he.state.meter(t.meter_id).pk for t in f.targets}  # type: ignore
    for mid, pk in list(members.items())[:4]:
        reg.record(mid, pk)

    def approve(gid: bytes, m: int, lam: float,
                mem: list[tuple[int, bytes]]) -> dict[int, bytes]:
        try:
            return reg.approve(gid, m, lam, mem)
        except Exception as e:
            raise LopaError(str(e)) from None

    with pytest.raises(LopaError, match="not registered"):
        he.group_create(GID, f.targets, lam=1500.0, approve=approve)
    assert kinds(f, "GROUP_BEGIN") == []
    reg.record(*list(members.items())[4])
    assert not he.group_create(GID, f.targets, lam=1500.0, approve=approve).failed
    tags = reg.approve(GID, 0, 1500.0, sorted(members.items()))
    for mid, meter in f.meters.items():
        (commit,) = [p for k, p in meter.received if k == "GROUP_COMMIT"]
        assert commit == codec.group_commit_cmd(GID, tags[mid])


def test_several_overlapping_groups_run_in_one_pass() -> None:
    """`headend run --gid a,b,c` (HeadEnd.run_many): overlapping groups' rounds for the same
    intervals, each interval waited for once; a group that cannot run is reported and the
    others go on; each aggregate is its members' sum."""
    f = sim_fleet(5, seed=4)
    he = headend(f)
    assert not he.keys(f.targets).failed
    assert not he.pubkeys(f.targets).failed
    assert not he.group_create(b"all", f.targets).failed
    assert not he.group_create(b"four", f.targets[:4], m=1).failed
    assert not he.group_create(b"three", f.targets[2:]).failed
    t0 = f.clock.now()
    runs, failed = he.run_many([b"all", b"nope", b"four", b"three"], 2, lab=f.lab_probe())
    assert set(failed) == {b"nope"} and "no group" in failed[b"nope"]
    assert [r.gid for r in runs] == [b"all", b"four", b"three"]
    ts = [[r.t for r in run.rounds] for run in runs]
    assert ts[0] == ts[1] == ts[2] and len(set(ts[0])) == 2  # the same two intervals
    for run in runs:
        for r in run.rounds:
            assert r.ok and r.aggregate == r.expected, (run.gid, r)
    # two intervals took about two interval lengths, not one per group and interval
    length = runs[0].rounds[0].length
    assert f.clock.now() - t0 < 3.5 * length
    with pytest.raises(LopaError, match="twice"):
        he.run_many([b"all", b"all"], 1)


def test_key_chunks_keep_every_line_within_its_cap() -> None:
    # A member's public key is its own to choose: keys of LF bytes travel as twice their size
    # (docs/PROTOCOL.md "Lines"), and the chunks must still fit a line.
    rng = random.Random(25)
    plain = [(rng.getrandbits(63), rng.randbytes(32)) for _ in range(25)]
    assert codec.key_chunks(GID, plain) == [plain]  # 25 random keys: one chunk
    hostile = [(rng.getrandbits(63), b"\n" * 32) for _ in range(25)]
    chunks = codec.key_chunks(GID, hostile)
    assert len(chunks) > 1 and [m for c in chunks for m in c] == hostile
    keys = wire.Keys.derive(1, bytes(32), wire.ROLE_AGGREGATOR)
    for seq, c in enumerate(chunks):
        frame = wire.seal(keys, False, wire.K_GROUP_KEYS, 2**32 - 1, 0,
                          codec.group_keys_cmd(GID, seq, c))
        assert len(wire.to_line(frame)) - 1 <= wire.LINE_CAP
    assert [len(c) for c in codec.key_chunks(GID, plain, 12)] == [12, 12, 1]
