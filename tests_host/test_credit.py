"""Prepaid credit and time-of-use tariffs (firmware/tasks/credit.py) on the MicroPython VM, the
off-switch codec cross-checked between the firmware and the head-end, and the keystore's
second (off-switch) key."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import offswitch_auth as osa
import pytest

from host_tools.headend import switch
from host_tools.headend.keystore import Keystore, KeystoreError, MeterEntry

Run = Callable[..., str]

PRELUDE = """
import json
from tasks.credit import Credit, tariff_at
P = {path!r}
sent = []
logs = []
class Port:
    name = "credit"
    def send(self, to, kind, payload=None):
        sent.append([to, kind, payload])
        return True
    def log(self, text):
        logs.append(text)
def make():
    return Credit(Port(), {{"state_path": P}})
c = make()
T0 = 1705312800          # Monday 15 January 2024, 10:00 UTC (11:00 local): tariff 2
def reading(t, imp, exp=0):
    c.handle("metrology", "reading", (t, 230.0, 1.0, 230.0, imp, exp))
def ask(kind, payload):
    n = len(sent)
    c.handle("cs_security", kind, payload)
    return [m for m in sent[n:] if m[1] == "credit_data"][-1][2]
def out(**kw):
    kw["logs"] = logs
    kw["balance"] = c.balance
    print(json.dumps(kw))
"""


def run_credit(micropython: Run, tmp_path: Path, body: str) -> dict[str, Any]:
    out = micropython(PRELUDE.format(path=str(tmp_path / "credit.json")) + body)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def test_time_of_use_tariff(micropython: Run, tmp_path: Path) -> None:
    cases = {
        "mon 11:00 local": 1705312800, "mon 06:59 local": 1705298340,
        "mon 07:00 local": 1705298400, "mon 22:59 local": 1705355940,
        "mon 23:00 local": 1705356000, "sat 12:00 local": 1705748400,
        "summer mon 07:00 local (05:00 UTC)": 1718600400,
        "summer mon 06:59 local": 1718600340,
    }
    r = run_credit(micropython, tmp_path, f"""
cases = {cases!r}
out(tariffs={{k: tariff_at(c.tariff, t) for k, t in cases.items()}},
    no_weekend={{k: tariff_at((1, 2, 7, 23, 3600, True, False), t) for k, t in cases.items()}})
""")
    assert r["tariffs"] == {
        "mon 11:00 local": 2, "mon 06:59 local": 1, "mon 07:00 local": 2,
        "mon 22:59 local": 2, "mon 23:00 local": 1, "sat 12:00 local": 1,
        "summer mon 07:00 local (05:00 UTC)": 2, "summer mon 06:59 local": 1}
    assert r["no_weekend"]["sat 12:00 local"] == 2
    for t in cases.values():  # the cases' weekdays are what their names say
        assert datetime.fromtimestamp(t, UTC).weekday() in (0, 5)


def test_registers_follow_the_tariff_and_prepaid_balance_is_exact(micropython: Run,
                                                                   tmp_path: Path) -> None:
    r = run_credit(micropython, tmp_path, """
ask("tariff", (1, 21000, 25001, 7, 23, 3600, True, True))
ask("prepaid", (2, True))
ask("topup", (3, 1000000))                  # 10.00
reading(T0, 100)                            # first reading: the base, nothing charged
for k in range(1, 301):
    reading(T0 + k, 100 + 3 * k)            # 900 Wh on tariff 2
reading(1705748400, 2000, 7)                # Saturday: 1000 Wh on tariff 1, 7 Wh export
han = [m for m in sent if m[1] == "tariff_state"][-1][2]
out(reg=c.reg, han=list(han), rem=c._rem)
""")
    assert r["reg"] == [1000, 900, 7, 0]
    assert r["han"] == [1, 1000, 900, 7, 0]
    # 900 Wh x 25001 mc/kWh + 1000 Wh x 21000 mc/kWh = 22500.9 + 21000 mc
    assert r["balance"] == 1000000 - 22500 - 21000 and r["rem"] == 900
    assert "topup +1000000 mc: balance 1000000" in r["logs"]
    assert "tariff: T1 21000 T2 25001 mc/kWh 7-23h" in r["logs"]
    assert "prepaid mode on" in r["logs"]


def test_zero_credit_asks_the_offswitch_for_a_disconnect_once(micropython: Run,
                                                               tmp_path: Path) -> None:
    r = run_credit(micropython, tmp_path, """
ask("tariff", (1, 100000, 100000, 7, 23, 3600, True, True))   # 1.00 / kWh
ask("prepaid", (2, True))
ask("topup", (3, 500))
c.handle("offswitch", "relay_state", (1, 0, 0))
reading(T0, 0)
reading(T0 + 1, 3)                 # 300 mc: 200 left
before = [m for m in sent if m[1] == "credit_disconnect"]
reading(T0 + 2, 6)                 # -100: zero credit
asked = [m[:2] for m in sent if m[1] == "credit_disconnect"]
reading(T0 + 3, 7)                 # relay still closed, within the retry time: not again
reading(T0 + 40, 8)                # still closed 38 s later: asked again, logged once
again = len([m for m in sent if m[1] == "credit_disconnect"])
c.handle("offswitch", "relay_state", (0, 0, 0))
reading(T0 + 80, 9)                # open: nothing more to ask
final = len([m for m in sent if m[1] == "credit_disconnect"])
data = ask("credit_read", (9,))
out(before=before, asked=asked, again=again, final=final, data=json.loads(data[2]))
""")
    assert r["before"] == [] and r["asked"] == [["offswitch", "credit_disconnect"]]
    assert r["again"] == 2 and r["final"] == 2
    assert sum("local disconnect" in t for t in r["logs"]) == 1
    assert r["data"]["disconnect_asked"] is True and r["data"]["balance_mc"] == -400


def test_commands_out_of_range_are_refused_and_logged(micropython: Run, tmp_path: Path) -> None:
    r = run_credit(micropython, tmp_path, """
a = ask("topup", (1, 0))
b = ask("topup", (2, -5))
c2 = ask("topup", (3, 10**9))
d = ask("tariff", (4, 1, 2, 23, 7, 3600, True, True))
out(codes=[a[1], b[1], c2[1], d[1]])
""")
    assert r["codes"] == [6, 6, 6, 6] and r["balance"] == 0
    assert "topup 0 refused: out of range" in r["logs"]
    assert "tariff refused: out of range" in r["logs"]


def test_credit_state_is_persisted_and_a_lost_interval_is_not_charged(micropython: Run,
                                                                      tmp_path: Path) -> None:
    r = run_credit(micropython, tmp_path, """
ask("tariff", (1, 100000, 100000, 7, 23, 3600, True, True))
ask("prepaid", (2, True))
ask("topup", (3, 100000))
reading(T0, 50)
reading(T0 + 1, 60)                # 10 Wh: 1000 mc
c._save(T0 + 1)
c = make()                         # reset
reading(T0 + 5, 58)                # metrology lost 2 Wh in the cut: rebase, no charge
reading(T0 + 6, 61)                # 3 Wh
out(prepaid=c.prepaid, reg=c.reg)
""")
    assert r["prepaid"] is True and r["reg"] == [0, 13, 0, 0]
    assert r["balance"] == 100000 - 1300


# -- the off-switch codec: firmware and head-end agree --------------------------------------
def test_offswitch_codecs_agree() -> None:
    key, meter = bytes(range(32)), 2**63 - 5
    fw = osa.derive(key, meter)
    host = switch.OsKeys.derive(meter, key)
    for op, ctr in ((1, 1), (2, 0xFFFFFFFF), (3, 77)):
        tok = switch.command(host, op, ctr)
        assert len(tok) == osa.CMD_LEN
        assert osa.open_command(fw, meter, tok) == (osa.R_OK, op, ctr, meter)
    rep = osa.reply(fw, meter, 2, 5, 0b1011, 9, 12, b"nonce-01")
    r = switch.open_reply(host, rep)
    assert (r.op, r.result_name, r.relay, r.armed, r.locked, r.tamper, r.ctr, r.last,
            r.nonce) == (2, "rate limit", 1, True, False, True, 9, 12, b"nonce-01")
    with pytest.raises(switch.SwitchError, match="bad MAC"):
        switch.open_reply(switch.OsKeys.derive(meter, bytes(32)), rep)
    forged = bytearray(rep)
    forged[3] ^= 1
    with pytest.raises(switch.SwitchError):
        switch.open_reply(host, bytes(forged))
    # the keys are not the WAN keys: a WAN key does not sign an off-switch command
    other = switch.OsKeys.derive(meter, bytes(range(1, 33)))
    assert osa.open_command(fw, meter, switch.command(other, 1, 1))[0] == osa.R_BAD_MAC


def test_keystore_holds_the_second_key(tmp_path: Path) -> None:
    ks = Keystore(tmp_path / "ks.json")
    ks.put(MeterEntry(7, bytes(32), port="/dev/x"))
    with pytest.raises(KeystoreError, match="no off-switch key"):
        ks.next_os_ctr(7)
    e = ks.get(7)
    assert e is not None and e.os_key == b""
    ks.put(MeterEntry(7, bytes(32), port="/dev/x", os_key=b"k" * 32))
    assert [ks.next_os_ctr(7), ks.next_os_ctr(7), ks.next_os_ctr(7, 40)] == [1, 2, 41]
    e = ks.get(7)
    assert e is not None and e.os_key == b"k" * 32 and e.os_ctr == 41
    assert ks.next_down_ctr(7) == 1  # the WAN counter is its own
    assert (tmp_path / "ks.json").stat().st_mode & 0o777 == 0o600
