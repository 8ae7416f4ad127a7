"""Replay and forgery suite (issue 10) against one flashed, provisioned virtual meter (its own
fleet), through the real path: the WAN pty, comm, cs_security, the off-switch on core 1.

For EVERY command kind the meter accepts (read from the firmware: K_INFO and the kinds that
tasks/cs_security.py routes; a kind without a sample payload in host_tools/fuzz/corpus.py fails
until covered), frames that are replayed, reordered, truncated, bit-flipped, oversized,
addressed to another meter and sealed with another key are each refused AND logged in the
security log (one "wan: rejected (...)" record per frame, with the reason), and change nothing:
the relay, credit and tariff registers, LoPA keys and groups, the clock, the seal, and the WAN
and off-switch counters. The forged frames carry harmful commands (an authentic OFF for the
relay, a top-up, a new key pair, a time jump ...), so a forgery that got through would show.
The off-switch kinds are forged against the off-switch's own key too. Last, a flood: more
forged frames than the kernel's rate limit lets into the security log cost at most its bucket
in flash writes, the rest are counted, and the off-switch and metrology logs stay exactly as
they were.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import importlib.util
import json
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from host_tools import mpcompat
from host_tools.fuzz.corpus import sample_payloads
from host_tools.headend import switch, wire
from host_tools.headend.client import MeterError, MeterLink, open_link
from host_tools.headend.keystore import Keystore
from host_tools.headend.lopa import codec
from host_tools.headend.queries import read_log
from host_tools.sim import fleet, relay

from .conftest import own_meter

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
LIMITS = switch.Limits(max_per_hour=60, min_spacing_s=1, arm_window_s=20)
BATCH = 8  # frames between two syncs: well under the 16-message mailboxes of comm, cs_security
FORGED_BASE = 50_000_000  # counters of forged frames: far above any the head-end will use


def _firmware(path: str) -> ModuleType:
    # a firmware module that also runs on CPython (lib/wan.py, policy.py)
    mpcompat.install()  # lib/wan.py imports MicroPython's cryptolib
    sys.path.insert(0, str(FIRMWARE / "lib"))
    try:
        spec = importlib.util.spec_from_file_location("_fw_" + Path(path).stem, FIRMWARE / path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(FIRMWARE / "lib"))


def _const(path: str, name: str) -> int:
    """`name = const(N)` of a firmware module that does not run on CPython (kernel.py)."""
    tree = ast.parse((FIRMWARE / path).read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == name and isinstance(node.value, ast.Call)
                and isinstance(node.value.args[0], ast.Constant)):
            return int(node.value.args[0].value)
    raise AssertionError(f"{path}: no {name} = const(...)")


def accepted_kinds() -> list[int]:
    """The kinds the meter acts on, from the firmware: K_INFO (answered by cs_security itself)
    and every kind in cs_security's _ROUTES (the policy's entry from the WAN)."""
    fw = _firmware("lib/wan.py")
    tree = ast.parse((FIRMWARE / "tasks" / "cs_security.py").read_text())
    routes = next(n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id == "_ROUTES" for t in n.targets))
    names = ["K_INFO"]
    assert isinstance(routes, ast.Tuple)
    for kind in routes.elts[::4]:  # flat: kind, task, message kind, encrypted, kind, ...
        assert isinstance(kind, ast.Attribute)
        names.append(kind.attr)
    return sorted({int(getattr(fw, n)) for n in names})


KINDS = accepted_kinds()


def _kind_id(k: int) -> str:
    return f"0x{k:02x}-{wire.KIND_NAMES.get(k, '?')}"


@dataclass
class Meter:
    base: Path
    port: str
    keystore: Keystore
    meter_id: int
    link: MeterLink
    sec_next: int = 0  # the next security-log seq not yet looked at
    os_next: int = 0  # the same for the off-switch log
    # per kind: (the genuine frame, accepted; a frame with an earlier counter, never sent)
    originals: dict[int, tuple[bytes, bytes]] | None = None
    before: dict[str, Any] | None = None  # state() once the genuine frames were handled

    @property
    def keys(self) -> wire.Keys:
        return self.link.keys

    @property
    def os_keys(self) -> switch.OsKeys:
        e = self.keystore.get(self.meter_id)
        assert e is not None
        return switch.OsKeys.derive(self.meter_id, e.os_key)

    def seal(self, kind: int, payload: bytes, ctr: int | None = None) -> bytes:
        # under the keys and with the counter of the role the meter's policy gives the kind
        role = wire.role_of(kind)
        c = self.keystore.next_down_ctr(self.meter_id, role=role) if ctr is None else ctr
        return wire.seal(self.link.keys_for(role), False, kind, c, 0, payload)

    def sync(self) -> None:
        """An authentic INFO with the head-end's next counter, answered: every line sent
        before it has been handled (comm and cs_security keep order). Raises on REPLAY,
        which would mean a forged frame moved the meter's counter."""
        ctr = self.keystore.next_down_ctr(self.meter_id)
        self.link.send_line(wire.to_line(wire.seal(self.keys, False, wire.K_INFO, ctr, 0, b"")))
        f = self.link.await_response(ctr)
        assert f.kind == wire.K_INFO, wire.describe_error(f.payload)

    def send(self, lines: list[bytes]) -> None:
        for i in range(0, len(lines), BATCH):
            for line in lines[i:i + BATCH]:
                self.link.send_line(line)
            self.sync()

    def new_records(self, log: str = "security") -> list[list[Any]]:
        attr = "sec_next" if log == "security" else "os_next"
        recs = read_log(self.link, log, getattr(self, attr))
        if recs:
            setattr(self, attr, recs[-1][0] + 1)
        return recs

    def skip_records(self) -> None:
        self.new_records()
        self.new_records("offswitch")

    def wait_interval_closed(self, timeout: float = 30.0) -> None:
        """Until metrology has closed an interval: it has measured (a READ has volts), and
        its log has a record for the flood test to keep. A fast host reaches this in under
        one 5-s interval after boot."""
        end = time.monotonic() + timeout
        while not read_log(self.link, "metrology"):
            assert time.monotonic() < end, f"no interval closed in {timeout:.0f} s"
            time.sleep(0.2)

    def state(self) -> dict[str, Any]:
        """What no refused frame may change."""
        r = relay.relay(0, self.base)
        credit = self.link.request(wire.K_CREDIT)
        credit.pop("tariff_now", None)  # moves with the wall clock, not with commands
        groups = json.loads(self.link.request_raw(wire.K_GROUPS, b""))
        info = self.link.request(wire.K_INFO)
        rd = self.link.request(wire.K_READ)
        # the clock and the calibration (the voltage the meter reads from the 230 V wave)
        assert abs(rd["clock"] - time.time()) < 30 and abs(rd["vrms"] - 230) < 5, rd
        return {"relay": r, "credit": credit,
                "energy": (rd["energy_import_wh"], rd["energy_export_wh"]),
                "pubkey": self.link.request_raw(wire.K_PUBKEY, b"")[:32].hex(),
                "groups": {k: groups[k] for k in ("groups", "pending", "key",
                                                  "persisted_bytes")},
                "info": info, "os_status": switch.status(self.link).to_json()}


@pytest.fixture(scope="module")
def meter(tmp_path_factory: pytest.TempPathFactory, real_port: str | None) -> Iterator[Meter]:
    if real_port:
        pytest.skip("needs the virtual board's relay and flash (own virtual meter)")
    # 5-s intervals: the metrology log has records (one per interval) for the flood test;
    # no energy flows, so that the registers stay as they were
    with own_meter(tmp_path_factory.mktemp("forgery"), wave={"vrms": 230.0, "irms": 0.0,
                   "pf": 1.0}, interval_s=5, offswitch_limits=LIMITS) as own:
        base, ks = own.base, own.keystore
        with open_link(own.port, ks, None, 10.0) as link:
            link.ser.timeout = 0.005  # answers are short: do not wait 50 ms on each read
            m = Meter(base, own.port, ks, own.meter_id, link)
            link.request_raw(wire.K_KEYGEN, codec.keygen_cmd(False))  # a LoPA key pair
            switch.switch(link, "on")  # the relay closed: a forged OFF would show
            relay.press(0, "button", base)
            assert relay.relay(0, base)["relay"] == "closed"
            # Every kind's genuine frame, once (replayed and reordered below), then the state
            # that no forged frame may change.
            m.originals = {}
            for kind, payload in samples(m).items():
                early = ks.next_down_ctr(m.meter_id, role=wire.role_of(kind))
                original = m.seal(kind, payload)
                m.originals[kind] = (original, m.seal(kind, payload, early))
                link.send_line(wire.to_line(original))
                m.sync()
            m.wait_interval_closed()
            m.before = m.state()
            m.skip_records()
            yield m


def harmful(m: Meter, kind: int, os_ctr: int) -> bytes:
    """What a forger would like the meter to do, for each kind that changes something."""
    j = json.dumps
    bad = {
        wire.K_TIME_SET: j({"t": 2_000_000_000}).encode(),
        wire.K_CALIBRATE: j({"volts": 100, "amps": 1, "pf": 0.5}).encode(),
        wire.K_KEYGEN: codec.keygen_cmd(True),
        wire.K_GROUP_BEGIN: codec.group_begin_cmd(b"forged", 3, 0, 0.0),
        wire.K_SWITCH: switch.command(m.os_keys, switch.OP_OFF, os_ctr),
        wire.K_TOPUP: j({"amount_mc": 5_000_000}).encode(),
        wire.K_TARIFF: j({"t1_mc_kwh": 1, "t2_mc_kwh": 1}).encode(),
        wire.K_PREPAID: j({"on": True}).encode(),
    }
    return bad.get(kind) or samples(m)[kind]


def samples(m: Meter) -> dict[int, bytes]:
    return sample_payloads(m.os_keys, m.keystore.next_os_ctr(m.meter_id), int(time.time()))


def _raw_frame(keys: wire.Keys, kind: int, ctr: int, payload: bytes) -> bytes:
    # a frame whose payload is over the cap, MACed correctly (wire.seal refuses to make one)
    head = struct.pack(">BBBQIIH", wire.VER, kind, 0, keys.meter_id, ctr, 0, len(payload))
    head += payload
    return head + hmac.new(keys.k_down_mac, head, hashlib.sha256).digest()[:wire.MAC_LEN]


def _flip(frame: bytes, i: int) -> bytes:
    b = bytearray(frame)
    b[i] ^= 0x10
    return bytes(b)


@pytest.mark.parametrize("kind", KINDS, ids=[_kind_id(k) for k in KINDS])
def test_every_kind_forged_is_refused_logged_and_changes_nothing(meter: Meter,
                                                                 kind: int) -> None:
    m = meter
    assert m.originals is not None
    assert kind in m.originals, f"kind {_kind_id(kind)} has no sample payload: cover it " \
                                "in host_tools/fuzz/corpus.py sample_payloads()"
    original, reordered = m.originals[kind]
    m.skip_records()
    relay_before = relay.relay(0, m.base)
    # Forged frames: fresh counters far above the head-end's, harmful payloads.
    base = FORGED_BASE + kind * 100
    payload = harmful(m, kind, m.keystore.next_os_ctr(m.meter_id) + 500)
    good = wire.seal(m.link.keys_for(wire.role_of(kind)), False, kind, base, 0, payload)
    other_meter = wire.Keys.derive(m.meter_id ^ 0x5A5A, m.keys.master)
    other_key = wire.Keys.derive(m.meter_id, bytes(x ^ 0xA5 for x in m.keys.master))
    pl = wire.HEADER + 1 if payload else 13  # a payload byte, or a counter byte
    forged: list[tuple[str, bytes, str]] = [
        ("replayed", original, "replay ctr"),
        ("reordered", reordered, "replay ctr"),
        ("truncated by one byte", good[:-1], "len mismatch" if payload else "short frame"),
        ("truncated to 12 bytes", good[:12], "short frame"),
        ("bit-flipped kind", _flip(good, 1), "bad mac"),
        ("bit-flipped payload", _flip(good, pl), "bad mac"),
        ("bit-flipped mac", _flip(good, len(good) - 1), "bad mac"),
        ("oversized", _raw_frame(m.keys, kind, base + 1, payload.ljust(wire.PAYLOAD_CAP + 1,
                                                                        b" ")),
         "payload over cap"),
        ("wrong meter", wire.seal(other_meter, False, kind, base + 2, 0, payload),
         "wrong meter id"),
        ("wrong meter id in the header", good[:3] + (m.meter_id + 1).to_bytes(8, "big")
         + good[11:], "wrong meter id"),
        ("wrong key", wire.seal(other_key, False, kind, base + 4, 0, payload), "bad mac"),
    ]
    m.send([wire.to_line(f) for _, f, _ in forged])
    recs = m.new_records()
    texts = [r[2] for r in recs]
    assert len(texts) == len(forged), f"{len(forged)} forged frames, log: {texts}"
    for (what, _, why), text in zip(forged, texts, strict=True):
        assert text.startswith("wan: rejected (") and why in text, f"{what}: {text}"
    assert m.new_records("offswitch") == []  # nothing reached core 1
    assert relay.relay(0, m.base) == relay_before
    # (m.sync() above: an authentic frame with the head-end's next counter still passes, so
    # no forged counter was consumed; test_no_forgery_changed_anything compares the rest)


def test_a_line_over_the_cap_is_refused_and_logged(meter: Meter) -> None:
    m = meter
    m.skip_records()
    frame = m.seal(wire.K_TOPUP, json.dumps({"amount_mc": 5_000_000}).encode())
    line = wire.to_line(frame)
    m.send([line[:-1] + b"A" * (wire.LINE_CAP + 10 - len(line)) + b"\n"])
    assert [r[2] for r in m.new_records()] == ["wan: rejected (line over cap)"]


def test_offswitch_commands_forged_against_its_own_key(meter: Meter) -> None:
    # Authentic WAN frames (the main core could be compromised) carrying off-switch commands
    # that the off-switch's own key does not sign: core 1 refuses each, logs it, signs a
    # refusal, and the relay stays.
    m = meter
    keys = m.os_keys
    before = relay.relay(0, m.base)
    assert before["relay"] == "closed"
    m.skip_records()
    ctr = m.keystore.next_os_ctr(m.meter_id) + 100
    e = m.keystore.get(m.meter_id)
    assert e is not None
    other_key = switch.OsKeys.derive(m.meter_id, bytes(x ^ 0xFF for x in e.os_key))
    other_meter = switch.OsKeys.derive(m.meter_id + 1, e.os_key)
    cmd = switch.command(keys, switch.OP_OFF, ctr)
    tokens = [
        ("wrong key", switch.command(other_key, switch.OP_OFF, ctr), "bad MAC"),
        ("WAN key", switch.command(switch.OsKeys.derive(m.meter_id, e.master), switch.OP_OFF,
                                   ctr), "bad MAC"),
        ("bit-flipped", _flip(cmd, 20), "bad MAC"),
        ("counter bit-flipped", _flip(cmd, 13), "bad MAC"),
        ("truncated", cmd[:-1], "malformed"),
        ("oversized", cmd + b"\x00", "malformed"),
        ("wrong meter", switch.command(other_meter, switch.OP_OFF, ctr), "wrong meter"),
        ("replayed", switch.command(keys, switch.OP_ON, before["offswitch_ctr"]), "replay"),
    ]
    for what, token, why in tokens:
        r = switch.send_token(m.link, keys, token)
        assert r.result_name == why and r.relay == 1, (what, r.to_json())
    after = relay.relay(0, m.base)
    assert after == before
    recs = m.new_records("offswitch")
    assert len(recs) == len(tokens)
    logged = {"wrong meter": f"for meter {m.meter_id + 1}"}
    for (what, _, why), rec in zip(tokens, recs, strict=True):
        assert rec[2].endswith("refused: " + logged.get(why, why)), (what, rec)
    # a status nonce of the wrong size is refused too (a signed MALFORMED; not logged: a read)
    r = switch.open_reply(keys, m.link.request_raw(wire.K_SWITCH_STATUS, b"\x01\x02"))
    assert r.result_name == "malformed"


def _flood_lines(m: Meter, n: int, base: int) -> list[bytes]:
    other_key = wire.Keys.derive(m.meter_id, bytes(32))
    other_meter = wire.Keys.derive(m.meter_id + 7, m.keys.master)
    lines = []
    for i in range(n):
        k = other_key if i % 2 else other_meter
        lines.append(wire.to_line(wire.seal(k, False, wire.K_SWITCH, base + i, 0,
                                            b"\x01" * 30)))
    return lines


def _log_writes(m: Meter, flood: list[bytes]) -> int:
    """Flash writes to the security log while `flood` goes in (the ROM's write-point count)."""
    mdir = fleet.meter_dir(m.base, 0)
    fleet.ctl(mdir, {"cmd": "arm-cut", "k": -1, "match": "log_security", "level": "file"})
    try:
        m.send(flood)
    finally:
        st = fleet.ctl(mdir, {"cmd": "arm-cut", "k": 0})
    return sum(1 for p in st["write_cut"]["points"] if p[1] == "write")


def test_flooding_the_security_log_is_rate_limited_counted_and_leaves_the_other_logs_untouched(
        meter: Meter) -> None:
    # A flood of forged lines costs a bounded number of flash writes (the kernel's token
    # bucket: _FLOOD_BURST at once, then _FLOOD_PER_HOUR), the records over it are counted
    # (STATS "log_dropped", and a record with the count when a token is free again), and the
    # other logs keep every record.
    m = meter
    cap = _firmware("policy.py").LOGS["security"][1]  # records the security ring holds
    burst = _const("kernel.py", "_FLOOD_BURST")
    per_hour = _const("kernel.py", "_FLOOD_PER_HOUR")
    off = read_log(m.link, "offswitch")
    met = read_log(m.link, "metrology")
    assert off and met, "both logs have records to lose"
    m.skip_records()
    first = m.sec_next
    n = burst + 2 * cap  # more than the bucket holds, whatever earlier tests used of it
    dropped0 = m.link.request(wire.K_STATS)["log_dropped"]
    t0 = time.monotonic()
    writes = _log_writes(m, _flood_lines(m, n, FORGED_BASE))
    dt = time.monotonic() - t0
    new = m.new_records()
    dropped = m.link.request(wire.K_STATS)["log_dropped"] - dropped0
    print(f"\nflood: {n} forged frames through the WAN pty in {dt:.1f} s (virtual meter): "
          f"{writes} security-log writes, {dropped} records dropped and counted")
    assert all(r[2].startswith(("wan: rejected (wan: ", "log: ")) for r in new), new
    assert dropped > 0, "the bucket never ran out"
    # one flash write a record (the ring keeps the last `cap` of them), never over the bucket
    assert writes == new[-1][0] - first + 1 <= burst
    # every forged line: a record, or counted (records of the count: what refilled meanwhile)
    refill = 1 + int((time.monotonic() - t0) * per_hour / 3600)
    assert n <= writes + dropped <= n + refill
    # Flooded again at once: the bucket is empty, so only what it refilled meanwhile is
    # written, each a record of the count dropped.
    t1 = time.monotonic()
    writes2 = _log_writes(m, _flood_lines(m, 2 * cap, FORGED_BASE + n))
    refill = 1 + int((time.monotonic() - t0) * per_hour / 3600)
    new2 = m.new_records()
    assert writes2 == len(new2) <= refill, new2
    assert all(r[2].startswith("log: ") and r[2].endswith(" records dropped (rate limit)")
               for r in new2), new2
    assert m.link.request(wire.K_STATS)["log_dropped"] - dropped0 == dropped + 2 * cap
    print(f"flood again: {2 * cap} frames in {time.monotonic() - t1:.1f} s: {writes2} writes")
    assert read_log(m.link, "offswitch") == off  # same records, same sequence numbers
    # metrology: the same records, same sequence numbers, and only its own new ones after them
    # (an interval closes every 5 s)
    met_after = read_log(m.link, "metrology")
    assert met_after[:len(met)] == met
    assert all(" closed: " in r[2] for r in met_after[len(met):])


def test_no_forgery_changed_anything(meter: Meter) -> None:
    # Last in the module: relay, credit and tariff registers, energy, LoPA key and groups,
    # seal, off-switch state and counter as they were after the genuine frames.
    assert meter.state() == meter.before


def _topups(link: MeterLink, mitm: Any = None) -> list[int]:
    """Wrap the link's send_line: the counters of the TOPUPs it sends (and ``mitm``, an
    adversary on the wire, called after each one with its frame and line)."""
    sent: list[int] = []
    real = link.send_line

    def send_line(line: bytes) -> None:
        frame = wire.from_line(line)
        real(line)
        if frame[1] == wire.K_TOPUP:
            sent.append(int.from_bytes(frame[11:15], "big"))
            if mitm is not None:
                mitm(real, frame, line, len(sent))

    link.send_line = send_line  # type: ignore[method-assign]
    return sent


def test_a_topup_whose_answer_an_attacker_swallowed_is_never_applied_twice(
        meter: Meter) -> None:
    # After the state check: this one tops up. Issue 18, finding 6, by an adversary on the
    # WAN: it lets the genuine TOPUP through and swallows the meter's answer, then sends
    # keyless frames naming the TOPUP's counter and the TOPUP itself again, for an answer
    # bound to that counter that says "refused". The keyless ones get silence; the replay gets
    # a REPLAY that says the counter may have been carried out; the head-end sends the TOPUP
    # no second time, and the balance moved once.
    link = meter.link
    balance0 = link.request(wire.K_CREDIT)["balance_mc"]

    def swallow_and_replay(send: Any, frame: bytes, line: bytes, n: int) -> None:
        if n > 1:
            return
        ctr = int.from_bytes(frame[11:15], "big")
        reader, end, swallowed = wire.LineReader(), time.monotonic() + 10, False
        while not swallowed:
            assert time.monotonic() < end, "the meter did not answer the genuine TOPUP"
            for ln in reader.feed(link.ser.read(4096)):
                try:
                    swallowed |= wire.open_frame(link.keys_for(wire.role_of(wire.K_TOPUP)), True,
                                                 wire.from_line(ln)).ref == ctr
                except wire.WireError:
                    pass
        for forged in (frame[:15], frame[:30], bytes([2]) + frame[1:],
                       frame[:-1] + bytes([frame[-1] ^ 1])):
            send(wire.to_line(forged))
        send(line)

    sent = _topups(link, swallow_and_replay)
    try:
        with pytest.raises(MeterError, match="may have been carried out") as e:
            link.request(wire.K_TOPUP, {"amount_mc": 1234})
    finally:
        del link.send_line
    assert e.value.code == wire.E_REPLAY and e.value.changed == sent[0]
    assert len(sent) == 1, sent
    assert link.request(wire.K_CREDIT)["balance_mc"] == balance0 + 1234
    # (their log records: the flood test above used up the kernel's rate limit)
    # after a power cut the meter refuses the counters it reserved: a TOPUP above its last
    # changing command was not carried out, so the head-end sends it again, once
    fleet.power_cut(0, meter.base)
    end = time.monotonic() + 30
    while fleet.meter_status(0, meter.base)["files"].get("main.py") != "running":
        assert time.monotonic() < end
        time.sleep(0.1)
    time.sleep(1.5)  # the firmware past its boot
    sent = _topups(link)
    link.timeout = 15.0
    try:
        assert link.request(wire.K_TOPUP, {"amount_mc": 100})["balance_mc"] == balance0 + 1334
    finally:
        del link.send_line
    assert len(sent) == 2 and sent[1] > sent[0], sent
    assert link.request(wire.K_CREDIT)["balance_mc"] == balance0 + 1334
