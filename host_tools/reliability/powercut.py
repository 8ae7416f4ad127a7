"""The power-cut campaign (``make powercut``), modelled on littlefs's power-loss testing.

Each virtual meter runs a workload of the operations that persist something: a top-up
(credit), the relay moved (off-switch state), a LoPA key pair made and a group set up again
with another member count (key file, group file), the clock set, a wait over an interval
close (load profile, energy registers, logs), reads (the WAN counters, reserved 32 at a time).
Power is cut (the VM SIGKILLed, as the supervisor's power cut does) in two ways:

- **at a write point**: the virtual board's filesystem counts every persisted change (open
  for writing, each write, rename, remove, mkdir) from the moment the supervisor arms it, and
  stops the VM at exactly the k-th (``arm-cut``, board/virtual/host/rom.py ``_wp_hit``);
  every k from 1 to the number of write points the operation made in a counting run is cut,
  every other one torn (half of that write done). Writes of background work (an interval
  closing) that fall in the window are write points too, and are named in the figures.
  Under a board's profile (a Pico's littlefs on the modelled flash chip, the default) the
  points are the same file operations (``level: file``), and what a cut keeps is then what
  littlefs has committed on the chip (the flash image), as on the board;
- **at random**: after a random delay while an operation runs.

After each restart the meter is checked against what the head-end knows was committed (an
operation that was cut may have happened or not, never half):

- the load profile: records already read are unchanged, sequence numbers and cumulative
  registers never go back; the energy registers are at least the last committed ones;
- the three logs: records already read are unchanged, sequence numbers only grow;
- keys: the WAN keys still verify, the LoPA public key is the one made last, the off-switch
  key still signs; counters: a WAN frame and an off-switch command accepted before the cut
  are refused when replayed (the WAN frame is the first thing sent after the restart: any
  fresh frame before it would move the counter past it and hide a lost reservation), and no
  answer reuses an uplink counter (the link checks);
- the relay is in its last commanded state, on the pin and in the off-switch's own answer;
- the group table is the old or the new one, never half (member count, nothing pending);
- the credit balance is the sum of the committed top-ups.

Figures: cuts by kind, write points by operation and file, restarts, violations, boot time
after a cut (from the cut to the first authenticated answer). Platform: the virtual board.
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from host_tools.headend import queries, switch, wire
from host_tools.headend.client import (
    LinkError,
    MeterError,
    MeterLink,
    ReplayedResponse,
    open_link,
)
from host_tools.headend.keystore import Keystore
from host_tools.headend.lopa import codec, ref
from host_tools.headend.provision import meter_time_now
from host_tools.reliability.fleetup import PLATFORM, Meter, bring_up, parallel, say, spread
from host_tools.sim import fleet, profiles, relay

LOAD = {"irms": 40.0, "pf": 0.95}  # 8.7 kW
INTERVAL_S = 2  # short load-profile intervals: an interval closes in every wait
LIMITS = switch.Limits(max_per_hour=100_000, min_spacing_s=0, arm_window_s=30)
LOGS = ("security", "metrology", "offswitch")
PROFILE_CAP = 192  # firmware/tasks/metrology.py
CLOCK_SAVE_EVERY_S = 300  # firmware/tasks/clock.py SAVE_EVERY_S: the RTC saved to flash
LOG_CAP = 128  # firmware/policy.py LOGS
GID = b"pc-group"
# host-side group members (their keys are only needed to be valid X25519 public keys)
PEERS = [(1000 + i, ref.keypair(bytes([i + 1]) * 32)[1]) for i in range(3)]
OPS = ("topup", "switch", "group", "keygen", "time", "interval", "read")
BOOT_TIMEOUT_S = 30.0
PROGRESS_S = 30.0  # a progress line at most this often


class Violation(Exception):
    """A checked invariant does not hold after a restart."""


@dataclass
class Figures:
    cuts_random: int = 0
    cuts_write: int = 0
    cuts_torn: int = 0
    not_reached: int = 0  # write-point runs whose k-th write never came (disarmed)
    restarts: int = 0
    checks: int = 0
    by_point: collections.Counter[str] = field(default_factory=collections.Counter)
    by_op: collections.Counter[str] = field(default_factory=collections.Counter)
    points_per_op: dict[str, int] = field(default_factory=dict)
    boot_s: list[float] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    @property
    def cuts(self) -> int:
        return self.cuts_random + self.cuts_write

    def merge(self, o: Figures) -> None:
        self.cuts_random += o.cuts_random
        self.cuts_write += o.cuts_write
        self.cuts_torn += o.cuts_torn
        self.not_reached += o.not_reached
        self.restarts += o.restarts
        self.checks += o.checks
        self.by_point.update(o.by_point)
        self.by_op.update(o.by_op)
        for k, v in o.points_per_op.items():
            self.points_per_op[k] = max(v, self.points_per_op.get(k, 0))
        self.boot_s += o.boot_s
        self.violations += o.violations

    def report(self, meters: int, wall_s: float) -> str:
        lines = [
            f"power-cut campaign: {meters} meters, {wall_s:.1f} s wall; platform: {PLATFORM}",
            f"cuts: {self.cuts} ({self.cuts_write} at write points, {self.cuts_torn} of them "
            f"torn mid-write; {self.cuts_random} at random moments)",
            f"restarts (VM power-ups after a cut, counted by the supervisors): {self.restarts}",
            f"write-point runs where the k-th write never came (disarmed): {self.not_reached}",
            "write points per operation (counting run): "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.points_per_op.items())),
            "cuts by operation under way: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.by_op.items())),
            "write points cut (op file: count): "
            + ", ".join(f"{k}: {v}" for k, v in sorted(self.by_point.items())),
            f"checks after restart: {self.checks}",
            f"boot time after a cut (cut -> first authenticated answer): {spread(self.boot_s)}",
            f"violations: {len(self.violations)}",
        ]
        lines += [f"  VIOLATION {v}" for v in self.violations[:50]]
        return "\n".join(lines)


def point_name(op: str, path: str) -> str:
    """A write point for the figures: the operation and the file, without .tmp/.bak."""
    name = path.split(">")[-1].rsplit("/", 1)[-1]
    for suf in (".tmp", ".bak", ".new"):
        name = name.removesuffix(suf)
    if name.startswith("lopa_"):
        name = "lopa_<gid>.grp"
    return f"{op.split('-')[0]} {name}"


class Campaign:
    """One meter's campaign: its workload, the cuts, and the model of what is committed."""

    def __init__(self, meter: Meter, base: Path, keystore: Keystore, rng: random.Random,
                 say: Callable[[str], None]) -> None:
        self.m = meter
        self.base = base
        self.ks = keystore
        self.rng = rng
        self.say = say
        self.fig = Figures()
        self.link: MeterLink | None = None
        # what the head-end knows was committed; "pending": an operation that was cut
        self.balance = 0
        self.relay = 0
        self.pk = b""
        self.group_n: int | None = None
        self.pending: tuple[str, Any] | None = None
        self.profile_last: dict[str, int] | None = None
        self.logs_last: dict[str, list[Any]] = {}
        self.clock = 0
        # How far the clock may resume behind its last reading after a cut: a Pico has no
        # battery-backed RTC (ports/rp2/main.c, v1.28.0, starts it at 2021-01-01 at every
        # power-up), so the firmware resumes from the time it last saved, at most
        # CLOCK_SAVE_EVERY_S old (firmware/tasks/clock.py SAVE_EVERY_S); the unix VM's and
        # the Pyboard's RTC keep running through a cut.
        prof = fleet.meter_profile(fleet.meter_dir(base, meter.index))
        self.clock_slack = CLOCK_SAVE_EVERY_S if profiles.get(prof or "unix")["port"] == "rp2" \
            else 0
        self.replay: tuple[bytes, int] | None = None  # a WAN command line the meter accepted
        self.os_token: bytes | None = None  # an off-switch command it accepted
        self.power_cuts = 0

    # -- plumbing ----------------------------------------------------------------------
    def _link(self, timeout: float = 10.0) -> MeterLink:
        if self.link is None:
            self.link = open_link(self.m.port, self.ks, self.m.meter_id, timeout)
        self.link.timeout = timeout
        return self.link

    def _drop_link(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None

    def _ctl(self, req: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        return fleet.ctl(self.m.dir, req, timeout=timeout)

    # -- the workload ----------------------------------------------------------------------
    def op(self, name: str) -> None:
        """One operation of the workload; the model is updated only when it is acknowledged."""
        link = self._link()
        if name == "topup":
            amount = self.rng.randint(1, 100_000)
            self.pending = ("topup", amount)
            ans = switch.topup(link, amount)
            self.balance += amount
            if int(ans["balance_mc"]) != self.balance:
                raise Violation(f"top-up answered balance {ans['balance_mc']}, "
                                f"expected {self.balance}")
        elif name == "switch":
            keys = switch.OsKeys.derive(self.m.meter_id, self._os_key())
            target = 0 if self.relay else 1
            self.pending = ("relay", target)
            ctr = self.ks.next_os_ctr(self.m.meter_id)
            token = switch.command(keys, switch.OP_OFF if target == 0 else switch.OP_ON, ctr)
            r = switch.send_token(link, keys, token)
            if not r.ok:
                raise Violation(f"off-switch refused {'off' if target == 0 else 'on'}: "
                                f"{r.result_name}")
            self.os_token = token
            if target:
                relay.press(self.m.index, "button", self.base, hold_s=0.4)
                r = switch.status(link)
                if not r.relay:  # not confirmed (a cut under way): stays pending
                    raise LinkError("relay still open after an armed ON and a button press")
            self.relay = target
        elif name == "group":
            n = 4 if self.group_n == 3 else 3
            self.pending = ("group", n)
            members = sorted([(self.m.meter_id, self.pk), *PEERS[:n - 1]])
            link.request_raw(wire.K_GROUP_BEGIN, codec.group_begin_cmd(GID, n, 1, 0.0))
            old = link.timeout
            link.timeout = 30.0
            try:
                link.request_raw(wire.K_GROUP_KEYS, codec.group_keys_cmd(GID, 0, members))
            finally:
                link.timeout = old
            commit = codec.parse_group_commit(
                link.request_raw(wire.K_GROUP_COMMIT, codec.group_commit_cmd(GID)))
            if commit.n != n:
                raise Violation(f"GROUP_COMMIT answered {commit.n} members, sent {n}")
            self.group_n = n
        elif name == "keygen":
            self.pending = ("keygen", None)
            self.pk = codec.parse_keygen(
                link.request_raw(wire.K_KEYGEN, codec.keygen_cmd(True))).pk
        elif name == "time":
            link.request(wire.K_TIME_SET, {"t": meter_time_now()})
        elif name == "interval":
            time.sleep(INTERVAL_S * 1.25)  # an interval closes: profile, registers, logs
        elif name == "read":
            for _ in range(6):
                self._read_capture()
        self.pending = None

    def _os_key(self) -> bytes:
        e = self.ks.get(self.m.meter_id)
        assert e is not None and e.os_key
        return e.os_key

    def _read_capture(self) -> dict[str, Any]:
        """READ, keeping the exact command line so that it can be replayed after a cut."""
        import json

        link = self._link()
        role = wire.role_of(wire.K_READ)  # the supplier's, with its own counter
        ctr = self.ks.next_down_ctr(self.m.meter_id, role=role)
        line = wire.to_line(wire.seal(link.keys_for(role), False, wire.K_READ, ctr, 0, b""))
        link.send_line(line)
        resp = link.await_response(ctr, role)
        if resp.kind == wire.K_ERROR:
            code, detail = wire.parse_error(resp.payload)
            if code == wire.E_REPLAY and isinstance(detail, int):  # resync after a reboot
                self.ks.next_down_ctr(self.m.meter_id, detail, role)
                return self._read_capture()
            raise LinkError(f"READ refused: {wire.describe_error(resp.payload)}")
        self.replay = (line, ctr)
        r: dict[str, Any] = json.loads(resp.payload)
        return r

    # -- cuts --------------------------------------------------------------------------------
    def _wait_up(self, t_cut: float, cuts_before: int) -> None:
        """Until the supervisor has cut and restarted the VM and the firmware answers."""
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while True:
            st = self._ctl({"cmd": "status"})
            if st["power_cuts"] > cuts_before and st["vm"] == "on":
                break
            if time.monotonic() > deadline:
                raise Violation("the meter did not power up again after a cut")
            time.sleep(0.02)
        self.power_cuts = int(st["power_cuts"])
        self.fig.restarts += int(st["power_cuts"]) - cuts_before
        self._drop_link()
        while True:
            try:
                self._probe()
                break
            except (LinkError, MeterError, OSError):
                self._drop_link()
                if time.monotonic() > deadline:
                    raise Violation("the firmware did not answer within "
                                    f"{BOOT_TIMEOUT_S:g} s of a cut") from None
        self.fig.boot_s.append(time.monotonic() - t_cut)

    def _probe(self) -> None:
        """The first authenticated exchange after a restart. With a captured command, that
        command itself, replayed, which must be refused: nothing authentic may reach the meter
        before the replay, since a fresh frame would move the meter's counter past it and hide
        a reservation that was never persisted (issue 18). Without one, INFO. An answer under
        an uplink counter used before the cut is a violation, not a meter still booting."""
        link = self._link(timeout=1.0)
        try:
            if self.replay is None:
                link.request(wire.K_INFO)
                return
            line, ctr = self.replay
            link.send_line(line)
            resp = link.await_response(ctr, wire.role_of(wire.K_READ))
        except ReplayedResponse as e:
            raise Violation(f"the first answer after the restart reused an uplink counter "
                            f"({e})") from None
        if resp.kind != wire.K_ERROR or wire.parse_error(resp.payload)[0] != wire.E_REPLAY:
            raise Violation(f"a WAN frame accepted before the cut was accepted again "
                            f"(answer {resp.kind_name}, the first frame after the restart)")

    def _run_op(self, name: str) -> bool:
        """Run an operation that may be cut; True if it completed. A watcher closes the link
        as soon as the supervisor reports the cut, so no request waits for its timeout."""
        before = self.power_cuts
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(0.02):
                try:
                    cut = self._ctl({"cmd": "status"})["power_cuts"] > before
                except fleet.SimError:
                    continue
                if cut:
                    lk = self.link
                    if lk is not None:
                        lk.abort("the meter's power was cut")
                    return

        th = threading.Thread(target=watch, daemon=True)
        th.start()
        try:
            self.op(name)
            return True
        except (LinkError, MeterError, OSError, codec.CodecError, switch.SwitchError,
                fleet.SimError):
            return False
        finally:
            stop.set()
            th.join()

    def cut_at_write(self, name: str, k: int, torn: bool, match: str = "") -> bool:
        """Cut at the k-th write point (of a path containing ``match``) from now, while
        operation ``name`` runs; False if the k-th never came (then disarmed)."""
        before = self.power_cuts
        self._ctl({"cmd": "arm-cut", "k": k, "torn": torn, "off_s": 0.05, "match": match,
                   "level": "file"})
        self._drop_link()
        done = self._run_op(name)
        st = self._ctl({"cmd": "status"})
        if st["power_cuts"] == before:
            # Not cut yet: background writes (an interval closing) may still reach k.
            end = time.monotonic() + INTERVAL_S * 1.5
            while st["power_cuts"] == before and time.monotonic() < end:
                time.sleep(0.05)
                st = self._ctl({"cmd": "status"})
        if st["power_cuts"] == before:
            try:
                self._ctl({"cmd": "arm-cut", "k": 0})
            except fleet.SimError:
                # The k-th write came while we disarmed: the cut restarted the VM (which starts
                # disarmed) before it could answer. Only a cut excuses the error.
                if self._ctl({"cmd": "status"})["power_cuts"] == before:
                    raise
            st = self._ctl({"cmd": "status"})
            if st["power_cuts"] == before:
                self.fig.not_reached += 1
                if done:
                    self.pending = None
                return False
        last = st["write_cut"]["last"] or {}
        self._wait_up(float(last.get("at", time.monotonic())), before)
        self.fig.cuts_write += 1
        self.fig.cuts_torn += bool(last.get("torn"))
        self.fig.by_op[name] += 1
        self.fig.by_point[point_name(str(last.get("op")), str(last.get("path")))] += 1
        return True

    def cut_at_random(self, name: str) -> None:
        before = self.power_cuts
        delay = self.rng.uniform(0.0, 0.4)
        t_cut = [0.0]

        def cut() -> None:
            time.sleep(delay)
            t_cut[0] = time.monotonic()
            try:
                self._ctl({"cmd": "power-cut", "off_s": 0.05}, timeout=BOOT_TIMEOUT_S)
            except fleet.SimError as e:
                self.fig.violations.append(f"{self.m.port}: power cut failed: {e}")

        th = threading.Thread(target=cut)
        th.start()
        self._run_op(name)
        th.join()
        self._wait_up(t_cut[0], before)
        self.fig.cuts_random += 1
        self.fig.by_op[name] += 1

    def count_points(self, name: str) -> int:
        """How many persisted writes the operation makes (a counting run, no cut)."""
        self._ctl({"cmd": "arm-cut", "k": -1, "level": "file"})
        self._run_op(name)
        st = self._ctl({"cmd": "arm-cut", "k": 0})
        pts = st["write_cut"]["points"]
        self.fig.points_per_op[name] = max(len(pts), self.fig.points_per_op.get(name, 0))
        return len(pts)

    # -- checks -----------------------------------------------------------------------------
    def check(self) -> None:
        """Every invariant, after a restart; then the model follows what was found."""
        self.fig.checks += 1
        link = self._link(timeout=10.0)
        # counters: a command accepted before the cut is refused now
        if self.replay is not None:
            line, ctr = self.replay
            link.send_line(line)
            try:
                resp = link.await_response(ctr, wire.role_of(wire.K_READ))
            except LinkError as e:
                raise Violation(f"replayed frame: no refusal ({e})") from None
            if resp.kind != wire.K_ERROR or wire.parse_error(resp.payload)[0] != wire.E_REPLAY:
                raise Violation(f"a WAN frame accepted before the cut was accepted again "
                                f"(answer {resp.kind_name})")
        r = self._check_profile(link)
        if int(r["clock"]) < self.clock - self.clock_slack:
            raise Violation(f"clock went back: {r['clock']} < {self.clock}"
                            + (f" - {self.clock_slack} s" if self.clock_slack else ""))
        self.clock = int(r["clock"])
        for name in LOGS:
            self._check_log(link, name)
        self._check_keys_relay(link)
        credit = switch.credit(link)
        bal = int(credit["balance_mc"])
        ok = [self.balance]
        if self.pending and self.pending[0] == "topup":
            ok.append(self.balance + int(self.pending[1]))
        if bal not in ok:
            raise Violation(f"credit balance {bal}, expected {' or '.join(map(str, ok))}")
        self.balance = bal
        self._check_group(link)
        self.pending = None

    def _check_profile(self, link: MeterLink) -> dict[str, Any]:
        """The load profile since the last check, then the registers (READ after the
        profile: an interval closing in between only makes the registers larger)."""
        last = self.profile_last
        start = last["seq"] if last else 0
        recs = queries.read_profile(link, start)
        r = self._read_capture()
        if last:
            if last["seq"] > (recs[-1]["seq"] if recs else 0) - PROFILE_CAP:
                if not recs or recs[0] != last:
                    raise Violation(f"profile record {last['seq']} changed or lost: "
                                    f"{last} -> {recs[0] if recs else None}")
        prev = last
        for rec in recs:
            if prev is not None and rec is not prev and rec["seq"] != prev["seq"]:
                if rec["seq"] <= prev["seq"] or rec["t_end"] <= prev["t_end"]:
                    raise Violation(f"profile goes back: {prev} -> {rec}")
                if rec["import_wh"] < prev["import_wh"] or rec["export_wh"] < prev["export_wh"]:
                    raise Violation(f"cumulative registers go back in the profile: "
                                    f"{prev} -> {rec}")
            prev = rec
        if prev is not None:
            if (int(r["energy_import_wh"]) < prev["import_wh"]
                    or int(r["energy_export_wh"]) < prev["export_wh"]):
                raise Violation(f"energy registers {r['energy_import_wh']}/"
                                f"{r['energy_export_wh']} Wh below the last committed "
                                f"interval's {prev['import_wh']}/{prev['export_wh']}")
            self.profile_last = prev
        return r

    def _check_log(self, link: MeterLink, name: str) -> None:
        last = self.logs_last.get(name)
        recs = queries.read_log(link, name, last[0] if last else 0)
        if last and recs and recs[-1][0] - last[0] < LOG_CAP and recs[0] != last:
            raise Violation(f"{name} log record {last[0]} changed or lost: {last} -> "
                            f"{recs[0]}")
        if last and not recs:
            raise Violation(f"{name} log: record {last[0]} and all after it are gone")
        seqs = [int(x[0]) for x in recs]
        if seqs != sorted(set(seqs)):
            raise Violation(f"{name} log sequence numbers not increasing: {seqs}")
        for rec in recs:
            if "unreadable" in str(rec[2]):
                raise Violation(f"{name} log: {rec[2]}")
        if recs:
            self.logs_last[name] = recs[-1]

    def _check_keys_relay(self, link: MeterLink) -> None:
        try:
            pk = ref.check_public_key(
                codec.parse_pubkey(link.request_raw(wire.K_PUBKEY, b"")).pk)
        except (MeterError, ref.BadPublicKey) as e:
            raise Violation(f"the LoPA key pair is lost or damaged: {e}") from None
        # A KEYGEN cut before its answer may have committed a new pair the head-end never
        # saw: any valid key then (a torn key file would have left none, or a bad one).
        if pk != self.pk and not (self.pending and self.pending[0] == "keygen"):
            raise Violation("the LoPA public key changed without a KEYGEN")
        self.pk = pk
        st = switch.status(link)  # verified with the off-switch's own key
        want = [self.relay]
        if self.pending and self.pending[0] == "relay":
            want.append(int(self.pending[1]))
        pin = int(self._ctl({"cmd": "status"})["pins"].get("relay", 0))
        if st.relay not in want or pin != st.relay:
            raise Violation(f"relay: off-switch says {st.relay}, pin {pin}, last commanded "
                            f"{' or '.join(map(str, want))}")
        self.relay = st.relay
        if self.os_token is not None:
            keys = switch.OsKeys.derive(self.m.meter_id, self._os_key())
            rep = switch.send_token(link, keys, self.os_token)
            if rep.result != switch.R_REPLAY:
                raise Violation(f"an off-switch command accepted before the cut was "
                                f"answered {rep.result_name} when replayed")

    def _check_group(self, link: MeterLink) -> None:
        import json

        body = json.loads(link.request_raw(wire.K_GROUPS, b""))
        if body.get("pending"):
            raise Violation(f"a group set-up is pending after a restart: {body['pending']}")
        mine = [g for g in body["groups"] if g["gid"] == GID.hex()]
        n = int(mine[0]["n"]) if mine else None
        ok = [self.group_n]
        if self.pending and self.pending[0] == "group":
            ok.append(int(self.pending[1]))
        if n not in ok:
            raise Violation(f"group table: {GID.decode()} has {n} members, expected "
                            f"{' or '.join(map(str, ok))} (half a set-up?)")
        self.group_n = n

    # -- the campaign -----------------------------------------------------------------------
    def start(self) -> None:
        # the profile is the supplier's, with the household's consent: given first, with the
        # button at power-up, as a household does (policy.py WAN_CONSENT)
        fleet.give_consent(self.m.index, self.base)
        link = self._link()
        self.pk = codec.parse_keygen(link.request_raw(wire.K_KEYGEN, codec.keygen_cmd(False))).pk
        self.balance = int(switch.credit(link)["balance_mc"])
        self.relay = switch.status(link).relay
        self.power_cuts = int(self._ctl({"cmd": "status"})["power_cuts"])
        self.op("group")
        self.check()

    def step(self, kind: str, name: str, k: int = 0, torn: bool = False) -> None:
        try:
            if kind == "write":
                self.cut_at_write(name, k, torn)
            else:
                self.cut_at_random(name)
            self.check()
        except Violation as e:
            self.fig.violations.append(f"{self.m.port} after {name} ({kind} {k}): {e}")
            self.say(f"VIOLATION meter {self.m.index}: {e}")
            self._drop_link()
            self._resync()
        except (LinkError, MeterError, OSError, codec.CodecError, fleet.SimError) as e:
            self.fig.violations.append(f"{self.m.port} after {name} ({kind} {k}): "
                                       f"check failed: {e}")
            self.say(f"VIOLATION meter {self.m.index}: check failed: {e}")
            self._drop_link()
            self._resync()

    def _resync(self) -> None:
        """After a violation: learn the meter's state again so the campaign goes on."""
        for _ in range(3):
            try:
                self.pending, self.replay, self.os_token = None, None, None
                self.profile_last, self.logs_last = None, {}
                link = self._link()
                self.pk = codec.parse_pubkey(link.request_raw(wire.K_PUBKEY, b"")).pk
                self.balance = int(switch.credit(link)["balance_mc"])
                self.relay = switch.status(link).relay
                import json

                gs = json.loads(link.request_raw(wire.K_GROUPS, b""))["groups"]
                mine = [g for g in gs if g["gid"] == GID.hex()]
                self.group_n = int(mine[0]["n"]) if mine else None
                self.check()
                return
            except (Violation, LinkError, MeterError, OSError, codec.CodecError):
                self._drop_link()
                time.sleep(1)

    def run(self, cuts: int, random_share: float,
            progress: Callable[[], None] = lambda: None) -> Figures:
        """About ``cuts`` cuts: every write point of every operation in turn (each k of the
        counting run), with random cuts mixed in at ``random_share``; ``progress`` is called
        after each step."""
        self.start()
        plan: list[tuple[str, str, int]] = []
        torn = False
        while self.fig.cuts < cuts and self.fig.not_reached < cuts:
            if not plan:
                for name in self.rng.sample(OPS, len(OPS)):
                    n = self.count_points(name)
                    plan += [("write", name, k) for k in range(1, n + 1)]
                self.rng.shuffle(plan)
            if self.rng.random() < random_share or not plan:
                self.step("random", self.rng.choice(OPS))
            else:
                kind, name, k = plan.pop()
                torn = not torn
                self.step(kind, name, k, torn)
            progress()
        self._drop_link()
        return self.fig


def run(cuts: int, meters: int, base: Path, seed: int = 1, random_share: float = 0.25,
        say: Callable[[str], None] = say, profile: str | None = None) -> Figures:
    """The campaign over ``meters`` virtual meters in parallel, ``cuts`` cuts in all, under
    port profile ``profile`` (None: the fleet's default, a Pico)."""
    ks = Keystore(base / "keystore.json")
    t0 = time.monotonic()
    fl = bring_up(meters, base / "fleet", ks, INTERVAL_S, LIMITS, profile=profile)
    for m in fl:  # a heavy load: the cumulative registers move by several Wh per interval
        fleet.set_wave(m.index, LOAD, base / "fleet")
    say(f"{meters} meters up ({profile or profiles.DEFAULT}), flashed and provisioned in "
        f"{time.monotonic() - t0:.1f} s")
    total = Figures()
    campaigns: list[Campaign] = []
    lock = threading.Lock()
    shown = [time.monotonic()]

    def progress() -> None:
        # a line every PROGRESS_S: the campaign takes minutes, and prints its figures at the end
        with lock:
            now = time.monotonic()
            if now - shown[0] < PROGRESS_S:
                return
            shown[0] = now
            done = sum(c.fig.cuts for c in campaigns)
            bad = sum(len(c.fig.violations) for c in campaigns)
            say(f"{done} of {cuts} cuts, {bad} violations, {now - t0:.0f} s")

    try:
        per = [cuts // meters + (1 if i < cuts % meters else 0) for i in range(meters)]

        def one(i: int) -> Figures:
            c = Campaign(fl[i], base / "fleet", ks, random.Random(seed * 1000 + i), say)
            with lock:
                campaigns.append(c)
            return c.run(per[i], random_share, progress)

        for f in parallel(range(meters), one, workers=meters):
            total.merge(f)
    finally:
        fleet.stop(base / "fleet")
    say(total.report(meters, time.monotonic() - t0))
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cuts", type=int, default=1000)
    ap.add_argument("--meters", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--random-share", type=float, default=0.25,
                    help="share of cuts at random moments (the rest at write points)")
    ap.add_argument("--dir", type=Path, help="keep the fleet here (default: a temp dir)")
    ap.add_argument("--profile", default=profiles.DEFAULT,
                    help=f"port profile of the meters ({', '.join(profiles.names())}; "
                         f"default {profiles.DEFAULT})")
    a = ap.parse_args(argv)
    if a.profile not in profiles.PROFILES:  # one line, before anything is started
        print(f"powercut: unknown profile {a.profile!r}; valid: {', '.join(profiles.names())}",
              file=sys.stderr)
        return 2
    if a.dir:
        fig = run(a.cuts, a.meters, a.dir, a.seed, a.random_share, profile=a.profile)
    else:
        with tempfile.TemporaryDirectory(prefix="powercut-") as d:
            fig = run(a.cuts, a.meters, Path(d), a.seed, a.random_share, profile=a.profile)
    ok = not fig.violations and fig.cuts >= a.cuts
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
