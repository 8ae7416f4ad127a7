"""Roles on the WAN (issue 18, Build 4; firmware/policy.py WAN_ROLES): the CS security module
(firmware/tasks/cs_security.py) on the real MicroPython VM, fed frames the head-end's codec
(host_tools/headend/wire.py) sealed under each role's keys. For every role and every kind: a
kind its role may not send gets an authenticated POLICY error under that role's keys, bound to
the frame's own counter, is logged, and changes nothing (no counter, no flash, nothing routed);
a kind it may send is routed. PROFILE from the supplier needs the household's consent. Each
role's counters are its own, and one role's keys open nothing of another's."""

from __future__ import annotations

import json
import re
import runpy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from host_tools.headend import wire

Run = Callable[..., str]
ROOT = Path(__file__).resolve().parents[1]
POLICY = runpy.run_path(str(ROOT / "firmware/policy.py"))
METER = 4242
MASTER = bytes(range(32))
ROUTED = {wire.K_INFO} | {k for k in wire.KIND_NAMES if k not in (wire.K_ERROR,)}

HARNESS = """
import binascii, json, struct
import seal, store, wan
from tasks import cs_security
D = {d!r}
cs_security.KEYS = D + "/cs_keys.json"
cs_security.COUNTERS = D + "/cs_ctr.json"
seal.CONSENT = D + "/consent"
store.save(cs_security.KEYS, {{"meter": {meter}, "master": {master!r}}})
store.save(cs_security.COUNTERS, {{"down": [0, 0, 0], "up": 0, "chg": [0, 0, 0]}})

class Port:
    def __init__(self):
        self.out, self.routed, self.logs = [], [], []
    def send(self, to, kind, payload=None):
        if kind == "frame_out":  # a frame: comm writes its line
            self.out.append(wan.frame_to_line(payload))
        else:
            self.routed.append([to, kind])
        return True
    def log(self, text):
        self.logs.append(text)
    log_flood = log

port = Port()
cs = cs_security.CsSecurity(port, {{"info": {{"fw": "t"}}}})

def state():
    # what a refusal must not change (the answer's own uplink counter may move, PROTOCOL.md)
    f = store.load(cs_security.COUNTERS, None) or {{}}
    return [list(cs._down), list(cs._down_res), list(cs._changed), cs.accepted,
            f.get("down"), f.get("chg"), sorted(cs._pending)]

def feed(frame):
    before = state()
    nlog = len(port.logs)
    cs.handle("comm", "frame_in", frame)
    res = {{"out": [o.hex() for o in port.out],
            "routed": port.routed, "logs": port.logs[nlog:], "unchanged": state() == before}}
    port.out, port.routed = [], []
    cs._pending.clear()  # no task answers here: the next request is not "busy"
    return res
"""


def vm(micropython: Run, tmp_path: Path, body: str) -> Any:
    out = micropython(HARNESS.format(d=str(tmp_path), meter=METER, master=MASTER.hex()) + body)
    return json.loads(out.strip().splitlines()[-1])


def keys(role: int) -> wire.Keys:
    return wire.Keys.derive(METER, MASTER, role)


def command(role: int, kind: int, ctr: int, payload: bytes = b"") -> bytes:
    """A command as the meter's comm task hands it on: the frame (its line's escapes
    undone)."""
    return wire.seal(keys(role), False, kind, ctr, 0, payload)


def answer(role: int, line_hex: str) -> wire.Frame:
    """The meter's answer line (in hex), opened with ``role``'s keys (WireError under any
    other)."""
    return wire.open_frame(keys(role), True, wire.from_line(bytes.fromhex(line_hex)))


def test_the_host_sends_each_kind_under_the_role_the_firmware_policy_gives_it() -> None:
    roles = POLICY["WAN_ROLES"]
    assert [name for name, _ in roles] == list(wire.ROLE_NAMES)
    for role, (_name, kinds) in enumerate(roles):
        for kind in kinds:
            if kind != wire.K_INFO:
                assert wire.role_of(kind) == role, (kind, role)
    # every routed kind belongs to exactly one role (INFO: every role's)
    owned = [k for _, kinds in roles for k in kinds if k != wire.K_INFO]
    assert sorted(owned) == sorted(set(owned))
    assert set(owned) == set(wire.ROLE_OF_KIND) - {wire.K_INFO}
    assert all(wire.K_INFO in kinds for _, kinds in roles)
    assert POLICY["WAN_CONSENT"] == (("supplier", wire.K_PROFILE),)


def test_the_aggregator_may_read_no_individual_value() -> None:
    agg = dict(POLICY["WAN_ROLES"])["aggregator"]
    for k in (wire.K_READ, wire.K_PROFILE, wire.K_CREDIT, wire.K_LOGS, wire.K_STATS,
              wire.K_SWITCH, wire.K_TIME_SET, wire.K_SEAL, wire.K_UNSEAL, wire.K_TOPUP):
        assert k not in agg


@pytest.mark.parametrize("role", range(len(wire.ROLE_NAMES)))
def test_each_role_is_refused_every_kind_its_policy_does_not_list(
        micropython: Run, tmp_path: Path, role: int) -> None:
    allowed = dict(POLICY["WAN_ROLES"])[wire.ROLE_NAMES[role]]
    all_kinds = sorted(set(wire.ROLE_OF_KIND))
    frames = [command(role, k, 10 + i, b"{}") for i, k in enumerate(all_kinds)]
    r = vm(micropython, tmp_path, f"""
seal.set_consent(True)
print(json.dumps([feed(frame) for frame in {frames!r}]))
""")
    for i, kind in enumerate(all_kinds):
        got, ctr = r[i], 10 + i
        name = wire.KIND_NAMES[kind]
        if kind in allowed:
            # routed, or answered (INFO; BAD_ARGS for "{}"), never POLICY
            assert got["routed"] or got["out"], (name, got)
            for line in got["out"]:
                f = answer(role, line)
                assert not (f.kind == wire.K_ERROR and f.payload[0] == wire.E_POLICY), name
            continue
        assert got["routed"] == [], (name, got)
        assert got["unchanged"], (name, got)  # no counter moved, nothing on flash
        assert len(got["out"]) == 1, (name, got)
        f = answer(role, got["out"][0])  # under the sender's role keys
        assert f.kind == wire.K_ERROR and f.ref == ctr, name
        code, detail = wire.parse_error(f.payload)
        assert code == wire.E_POLICY, (name, code, detail)
        assert f"role {wire.ROLE_NAMES[role]} may not send kind {kind}" == detail
        assert got["logs"] == [f"wan: rejected (policy: role {role} may not send kind {kind})"]
        for other in range(len(wire.ROLE_NAMES)):
            if other != role:
                with pytest.raises(wire.WireError):
                    answer(other, got["out"][0])


def test_the_supplier_reads_the_profile_only_while_the_household_consents(
        micropython: Run, tmp_path: Path) -> None:
    s = wire.ROLE_SUPPLIER
    r = vm(micropython, tmp_path, f"""
res = {{"off": feed({command(s, wire.K_PROFILE, 1, b"{}")!r})}}
seal.set_consent(True)
res["on"] = feed({command(s, wire.K_PROFILE, 2, b"{}")!r})
seal.set_consent(False)
res["off_again"] = feed({command(s, wire.K_PROFILE, 3, b"{}")!r})
res["read"] = feed({command(s, wire.K_READ, 4)!r})
print(json.dumps(res))
""")
    for name, ctr in (("off", 1), ("off_again", 3)):
        got = r[name]
        assert got["routed"] == [] and got["unchanged"], got
        f = answer(s, got["out"][0])
        code, detail = wire.parse_error(f.payload)
        assert (f.ref, code) == (ctr, wire.E_POLICY) and "no consent" in str(detail)
        assert got["logs"] == ["wan: rejected (policy: kind 17 needs the household's consent)"]
    assert r["on"]["routed"] == [["metrology", "profile"]] and r["on"]["out"] == []
    assert r["read"]["routed"] == [["metrology", "read"]]  # billing: no consent needed


def test_each_role_counts_on_its_own_and_a_replay_is_caught_in_each_stream(
        micropython: Run, tmp_path: Path) -> None:
    op, agg, sup = wire.ROLE_OPERATOR, wire.ROLE_AGGREGATOR, wire.ROLE_SUPPLIER
    seq = [command(op, wire.K_INFO, 50), command(agg, wire.K_INFO, 1),
           command(sup, wire.K_INFO, 1), command(agg, wire.K_INFO, 1),
           command(op, wire.K_INFO, 50), command(sup, wire.K_INFO, 2)]
    r = vm(micropython, tmp_path, f"""
out = [feed(frame) for frame in {seq!r}]
print(json.dumps({{"out": out, "flash": store.load(cs_security.COUNTERS, None)}}))
""")
    roles = [op, agg, sup, agg, op, sup]
    opened = [answer(role, got["out"][0]) for role, got in zip(roles, r["out"], strict=True)]
    assert [f.kind for f in opened] == [wire.K_INFO, wire.K_INFO, wire.K_INFO, wire.K_ERROR,
                                       wire.K_ERROR, wire.K_INFO]
    assert json.loads(opened[1].payload)["role"] == "aggregator"
    assert wire.parse_error(opened[3].payload)[0] == wire.E_REPLAY
    assert opened[3].payload[1:5] == (1).to_bytes(4, "big")  # the aggregator's own mark
    assert opened[4].payload[1:5] == (50).to_bytes(4, "big")
    # the uplink counter is one for all roles: it never repeats
    ups = [f.ctr for f in opened]
    assert ups == sorted(set(ups))
    reserve = int(re.search(r"^RESERVE = const\((\d+)\)",
                            (ROOT / "firmware/tasks/cs_security.py").read_text(), re.M)[1])
    assert r["flash"]["down"] == [50 + reserve, 1 + reserve, 1 + reserve]


def test_a_role_claimed_without_its_key_or_unassigned_gets_silence(
        micropython: Run, tmp_path: Path) -> None:
    op = keys(wire.ROLE_OPERATOR)
    head = bytearray(wire.seal(op, False, wire.K_INFO, 7, 0, b""))
    # the operator's key, the header claiming the aggregator's role (and so its MAC wrong)
    head[2] |= wire.ROLE_AGGREGATOR << wire.ROLE_SHIFT
    claimed = bytes(head)
    # role 3: no role has it; MAC'd with the operator's keys over the header that says so
    body = bytes(wire.seal(op, False, wire.K_INFO, 8, 0, b""))[:-wire.MAC_LEN]
    body = body[:2] + bytes((3 << wire.ROLE_SHIFT,)) + body[3:]
    import hashlib
    import hmac

    unassigned = body + hmac.new(op.k_down_mac, body, hashlib.sha256).digest()[:wire.MAC_LEN]
    r = vm(micropython, tmp_path, f"""
print(json.dumps([feed(frame) for frame in ({claimed!r}, {unassigned!r})]))
""")
    for got in r:
        assert got["out"] == [] and got["routed"] == [] and got["unchanged"], got
        assert len(got["logs"]) == 1


def test_a_role_key_gives_neither_the_master_nor_another_role() -> None:
    ks = [wire.role_master(METER, MASTER, r) for r in range(3)]
    assert ks[0] == MASTER and len(set(ks)) == 3
    # the meter's derivation (firmware/lib/wan.py) is the host's: checked on the VM by
    # test_each_role_is_refused_every_kind_its_policy_does_not_list (frames open both ways)
    with pytest.raises(ValueError):
        wire.role_master(METER, MASTER, 3)


def test_the_han_telegram_shows_the_consent_and_stays_dsmr_valid(micropython: Run,
                                                                 tmp_path: Path) -> None:
    # tasks/han.py on the VM: the text line (0-0:96.13.0) says consent=on|off after the seal,
    # re-read with it every SEAL_EVERY telegrams; dsmr-parser's V5 reads every telegram.
    from dsmr_parser import telegram_specifications
    from dsmr_parser.parsers import TelegramParser

    out = micropython(f"""
import json, seal
seal.SEALED = {str(tmp_path / "sealed")!r}
seal.CONSENT = {str(tmp_path / "consent")!r}
from tasks.han import Han, SEAL_EVERY
class Tx:  # the HAN UART: a telegram may come in several writes; printed once whole
    buf = ""
    def write(self, b):
        self.buf += bytes(b).decode()
        i = self.buf.rfind("!")
        if i >= 0 and len(self.buf) - i == 7 and self.buf.endswith("\\r\\n"):  # "!" CRC CRLF
            print(json.dumps(self.buf))
            self.buf = ""
h = Han(None, {{"han_tx": Tx(), "config": {str(tmp_path / "none.json")!r}}})
for i in range(2 * SEAL_EVERY):
    if i == SEAL_EVERY - 1:
        seal.set_consent(True)  # seen at the next read, SEAL_EVERY telegrams on
    h.handle("metrology", "reading", (1753000000 + i, 230.0, 1.0, 230.0, 5, 0))
print(json.dumps(SEAL_EVERY))
""")
    lines = [json.loads(x) for x in out.strip().splitlines()]
    every, tels = lines[-1], lines[:-1]
    v5 = TelegramParser(telegram_specifications.V5)
    texts = [bytes.fromhex(v5.parse(t).TEXT_MESSAGE.value).decode() for t in tels]
    assert texts == ["seal=open consent=off"] * every + ["seal=open consent=on"] * every
