"""DSMR 5 P1 telegrams from firmware/lib/dsmr.py, parsed by the PyPI dsmr-parser with checksum
validation, on CPython and byte for byte the same on the MicroPython VM; and the HAN data
diode checked in the source: nothing in the firmware reads the HAN port."""

from __future__ import annotations

import ast
import importlib.util
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import crc16
import dsmr
import pytest
from dsmr_parser import telegram_specifications
from dsmr_parser.exceptions import InvalidChecksumError
from dsmr_parser.parsers import TelegramParser

from host_tools.headend.switch import p1_spec

Run = Callable[..., str]
ROOT = Path(__file__).resolve().parent.parent
V5 = TelegramParser(telegram_specifications.V5)

# (t, equipment, imp1, imp2, exp1, exp2, tariff, power_w, vrms, irms, breaker)
CASES = [
    (1753000000, "HASM123", 12345, 678, 0, 9, 2, 1193.4, 230.12, 5.2, 1),
    (1700000000, "HASM9223372036854775807", 999999999, 0, 5, 0, 1, -2500.0, 241.06, 10.6, 0),
    (1711846799, "X", 0, 0, 0, 0, 1, 0.0, 0.0, 0.0, 2),
    (1711846800, "meter", 1, 2, 3, 4, 2, 99999.9, 999.9, 999.4, None),
]


def test_crc16_arc_check_value_and_dsmr_parser_agree() -> None:
    assert crc16.arc(b"123456789") == 0xBB3D  # the CRC catalogue's check value
    rng = random.Random(1)
    for _ in range(50):
        s = "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(0, 300)))
        assert crc16.arc(s.encode()) == TelegramParser.crc16(s)
    assert crc16.arc(b"6789", crc16.arc(b"12345")) == 0xBB3D  # continues


@pytest.mark.parametrize("case", CASES)
def test_telegrams_parse_with_dsmr_parser_v5_and_checksum(case: tuple[Any, ...]) -> None:
    t, ident, i1, i2, e1, e2, tariff, p, v, i, breaker = case
    raw = dsmr.telegram(*case).decode()
    assert raw.startswith("/HSM5\\2") and raw.endswith("\r\n")
    assert "\n" not in raw.replace("\r\n", "")  # every line ends in \r\n
    body, crc = raw.rsplit("!", 1)
    assert crc == f"{crc16.arc((body + '!').encode()):04X}\r\n"  # uppercase hex
    r = V5.parse(raw)  # validates the checksum
    assert r.P1_MESSAGE_HEADER.value == "50"
    assert r.P1_MESSAGE_TIMESTAMP.value == datetime.fromtimestamp(t, UTC)
    assert bytes.fromhex(r.EQUIPMENT_IDENTIFIER.value).decode() == ident
    assert r.ELECTRICITY_USED_TARIFF_1.value == Decimal(i1 % 10**9) / 1000
    assert r.ELECTRICITY_USED_TARIFF_2.value == Decimal(i2) / 1000
    assert r.ELECTRICITY_DELIVERED_TARIFF_1.value == Decimal(e1) / 1000
    assert r.ELECTRICITY_DELIVERED_TARIFF_2.value == Decimal(e2) / 1000
    assert r.ELECTRICITY_USED_TARIFF_1.unit == "kWh"
    assert int(r.ELECTRICITY_ACTIVE_TARIFF.value) == tariff
    # F5(3,3) kW, F4(1,1) V, F3(0,0) A: clamped to the field
    assert r.CURRENT_ELECTRICITY_USAGE.value == Decimal(min(99999, round(max(p, 0)))) / 1000
    assert r.CURRENT_ELECTRICITY_DELIVERY.value == Decimal(min(99999, round(max(-p, 0)))) / 1000
    assert r.INSTANTANEOUS_VOLTAGE_L1.value == Decimal(f"{v:.1f}")
    assert r.INSTANTANEOUS_CURRENT_L1.value == round(i)
    b = TelegramParser(p1_spec()).parse(raw)
    if breaker is None:
        assert not hasattr(b, "ACTUAL_SWITCH_POSITION")
    else:
        assert b.ACTUAL_SWITCH_POSITION.value == breaker


def test_a_corrupted_telegram_fails_the_checksum() -> None:
    raw = dsmr.telegram(*CASES[0]).decode()
    bad = raw.replace("230.1", "231.1")
    with pytest.raises(InvalidChecksumError):
        V5.parse(bad)


def test_timestamps_follow_eu_summer_time_through_the_year() -> None:
    # dsmr-parser reads the timestamp as Europe/Amsterdam local time with the S/W flag.
    for t in range(1704067200, 1767225600, 86400 * 7 + 3607):
        r = V5.parse(dsmr.telegram(t, "x", 0, 0, 0, 0, 1, 0, 230, 0).decode())
        assert r.P1_MESSAGE_TIMESTAMP.value == datetime.fromtimestamp(t, UTC), t
    # the switch-over instants of 2024: 31 March and 27 October, 01:00 UTC
    assert dsmr.timestamp(1711846799) == "240331015959W"
    assert dsmr.timestamp(1711846800) == "240331030000S"
    assert dsmr.timestamp(1729990799) == "241027025959S"
    assert dsmr.timestamp(1729990800) == "241027020000W"


def test_civil_dates_match_the_host() -> None:
    rng = random.Random(2)
    for _ in range(500):
        t = rng.randrange(0, 4102444800)
        d = datetime.fromtimestamp(t, UTC)
        assert dsmr.civil(t) == (d.year, d.month, d.day, d.hour, d.minute, d.second)


def test_the_vm_builds_the_same_bytes(micropython: Run) -> None:
    out = micropython(f"""
import dsmr, binascii, json
cases = {CASES!r}
print(json.dumps([binascii.hexlify(dsmr.telegram(*c)).decode() for c in cases]))
""")
    vm = json.loads(out.strip().splitlines()[-1])
    assert vm == [dsmr.telegram(*c).hex() for c in CASES]


# -- the data diode, in the source ---------------------------------------------------------
READS = {"read", "readinto", "readline", "readlines", "any", "irq"}


def _calls_on_han(tree: ast.AST) -> list[str]:
    """Attribute calls that read from anything named like the HAN port."""
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in READS:
            target = ast.unparse(node.func.value).lower()
            if "han" in target or "_tx" in target:
                bad.append(f"{ast.unparse(node)} (line {node.lineno})")
    return bad


def test_no_firmware_code_reads_the_han_port() -> None:
    files = sorted((ROOT / "firmware").rglob("*.py")) + sorted((ROOT / "board").rglob("*.py"))
    for f in files:
        assert _calls_on_han(ast.parse(f.read_text())) == [], f
    han = ast.parse((ROOT / "firmware" / "tasks" / "han.py").read_text())
    # The HAN task uses its port for exactly one thing: write().
    uses = {n.attr for n in ast.walk(han) if isinstance(n, ast.Attribute)
            and ast.unparse(n.value) == "self._tx"}
    assert uses == {"write"}
    # and sends no message to any task
    sends = [n for n in ast.walk(han) if isinstance(n, ast.Attribute) and n.attr == "send"]
    assert sends == []


@pytest.mark.parametrize(("source", "name"), [
    ("board/virtual/__init__.py", "_HanTx"),  # the virtual board's
    ("firmware/lib/hw_common.py", "HanTx"),  # the Pico's and the Pyboard's (board/rp2_pico, ...)
])
def test_the_boards_han_port_has_no_read(source: str, name: str) -> None:
    tree = ast.parse((ROOT / source).read_text())
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name)
    methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    assert methods in ({"write"}, {"__init__", "write"})


def test_the_policy_has_no_flow_out_of_the_han() -> None:
    spec = importlib.util.spec_from_file_location("policy", ROOT / "firmware" / "policy.py")
    assert spec is not None and spec.loader is not None
    policy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(policy)
    assert [k for k in policy.FLOWS if k[0] == "han"] == []
    assert policy.HARDWARE["han"] == ("han_tx",)
    # the relay, button and tamper belong to the off-switch alone
    for task, hw in policy.HARDWARE.items():
        if task != "offswitch":
            assert not {"relay", "button", "tamper"} & set(hw), task
    # credit may only ask for a disconnect; only cs_security may send "switch"
    assert policy.FLOWS[("credit", "offswitch")] == ("credit_disconnect",)
    senders = [k[0] for k, kinds in policy.FLOWS.items() if k[1] == "offswitch"]
    assert sorted(senders) == ["credit", "cs_security"]
    assert [s for (s, r), kinds in policy.FLOWS.items() if "switch" in kinds] == ["cs_security"]
