"""The lab bench's commands against one virtual meter of the module's own: `watch --once`
(its values, within 80 columns), `profile --csv/--png` (the CSV rows are the --json records,
the PNG a PNG), `logs --csv`, and `devs --json` (the meter, its profile and id)."""

from __future__ import annotations

import csv
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from host_tools import cli
from host_tools.export import iso_utc, kwh
from host_tools.sim import fleet

from .conftest import OwnMeter, own_meter

WAVE = {"vrms": 230.0, "irms": 5.0, "pf": 1.0}
INTERVAL_S = 2


@pytest.fixture(scope="module")
def meter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnMeter]:
    with own_meter(tmp_path_factory.mktemp("watch"), wave=WAVE, interval_s=INTERVAL_S) as m:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the first 1-s reading after boot
            if json.loads(run(m, "read", "--port", m.port, "--json").output)["vrms"] > 0:
                break
            time.sleep(0.5)
        yield m


def run(m: OwnMeter, *args: str) -> Any:
    r = CliRunner().invoke(cli.main, [*args, "--keystore", str(m.keystore.path)])
    assert r.exit_code == 0, r.output
    return r


def test_watch_once_shows_the_meters_values(meter: OwnMeter) -> None:
    relay = json.loads(run(meter, "switch", "status", "--port", meter.port,
                           "--json").output)["relay"]
    rows = [json.loads(ln) for ln in
            run(meter, "watch", "--once", "--json", "--dir", str(meter.base)).output.splitlines()]
    assert len(rows) == 1
    row = rows[0]
    assert row["meter_id"] == str(meter.meter_id) and row["port"] == meter.port
    assert row["relay"] == relay
    assert row["vrms"] == pytest.approx(230.0, abs=3)
    if relay == "closed":
        assert row["irms"] == pytest.approx(5.0, rel=0.03)
        assert row["power_w"] == pytest.approx(1150, rel=0.05)
    assert row["prepaid"] is False and row["balance_mc"] is None
    assert row["lopa"] is None  # no head-end database

    out = run(meter, "watch", "--once", "--port", meter.port).output
    lines = out.splitlines()
    assert max(len(ln) for ln in lines) <= 80, out
    line = next(ln for ln in lines if ln.startswith("…" + str(meter.meter_id)[-6:]))
    cells = line.split()
    assert float(cells[1]) == pytest.approx(230.0, abs=3)  # V
    assert cells[7] == relay and cells[8] == "-" and cells[9] == "-"  # postpaid, no round


def test_profile_csv_and_png_equal_the_json(meter: OwnMeter, tmp_path: Path) -> None:
    # PROFILE: the supplier's, with the household's consent (the button at power-up)
    fleet.give_consent(meter.index, meter.base)
    deadline = time.monotonic() + 20
    while True:  # at least two closed intervals
        recs = json.loads(run(meter, "profile", "--port", meter.port, "--json").output)
        if len(recs) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(recs) >= 2
    out_csv, out_png = tmp_path / "p.csv", tmp_path / "p.png"
    run(meter, "profile", "--port", meter.port, "--csv", str(out_csv), "--png", str(out_png))
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) >= len(recs)  # intervals may have closed in between
    for rec, row in zip(recs, rows, strict=False):
        assert int(row["seq"]) == rec["seq"]
        assert int(row["t_end_epoch"]) == rec["t_end"]
        assert row["t_end_utc"] == iso_utc(rec["t_end"])
        assert int(row["import_mwh"]) == rec["import_mwh"]
        assert int(row["export_mwh"]) == rec["export_mwh"]
        assert row["import_kwh"] == kwh(rec["import_mwh"])
    data = out_png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"


def test_logs_csv(meter: OwnMeter, tmp_path: Path) -> None:
    recs = json.loads(run(meter, "logs", "--port", meter.port, "--log", "metrology",
                          "--json").output)
    assert recs
    out = tmp_path / "l.csv"
    run(meter, "logs", "--port", meter.port, "--log", "metrology", "--csv", str(out))
    rows = list(csv.DictReader(out.open()))
    assert [(int(r["seq"]), int(r["t_epoch"]), r["text"]) for r in rows[:len(recs)]] == \
        [tuple(r) for r in recs]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["t_utc"]) for r in rows)


def test_devs_lists_the_virtual_meter(meter: OwnMeter) -> None:
    d = json.loads(run(meter, "devs", "--json", "--dir", str(meter.base)).output)
    st = fleet.meter_status(meter.index, meter.base)
    assert d["virtual"] == [{"index": meter.index, "port": meter.port, "han": meter.han,
                             "profile": st["profile"], "vm": st["vm"],
                             "meter_id": str(meter.meter_id),
                             "dir": st["dir"]}]
    assert isinstance(d["usb"], list)


def test_watch_shows_a_prepaid_meters_credit(meter: OwnMeter) -> None:
    # last in the module: it turns the meter prepaid
    run(meter, "tariff", "--port", meter.port, "--t1", "0.2", "--t2", "0.3", "--prepaid")
    run(meter, "topup", "--port", meter.port, "--amount", "12.5")
    row = json.loads(run(meter, "watch", "--once", "--json", "--port", meter.port).output)
    assert row["prepaid"] is True
    assert 11.5 * 100_000 < row["balance_mc"] <= 12.5 * 100_000
    out = run(meter, "watch", "--once", "--port", meter.port).output
    line = next(ln for ln in out.splitlines() if ln.startswith("…"))
    assert 11.5 < float(line.split()[8]) <= 12.5
