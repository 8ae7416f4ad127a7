"""The lab bench's exports and board discovery, on the host: the CSV and PNG writers, the
watch view's cells and width, and `meterctl devs` over fake USB ports."""

from __future__ import annotations

import csv
import io
import json
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from host_tools import cli, export, watch

RECS = [{"seq": 0, "t_end": 1_700_000_100, "import_mwh": 1_234_567, "export_mwh": 0,
         "import_wh": 1, "export_wh": 0},
        {"seq": 1, "t_end": 1_700_000_200, "import_mwh": 5, "export_mwh": 2_000_000,
         "import_wh": 0, "export_wh": 2}]


def test_kwh_is_exact() -> None:
    assert export.kwh(1_234_567) == "1.234567"
    assert export.kwh(5) == "0.000005"
    assert export.kwh(0) == "0.000000"
    assert export.kwh(-1_500_000) == "-1.500000"


def test_profile_csv(tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    assert export.write_profile_csv(RECS, out) == 2
    rows = list(csv.reader(out.open()))
    assert tuple(rows[0]) == export.PROFILE_CSV_HEADER
    assert rows[1] == ["0", "2023-11-14T22:15:00Z", "1700000100", "1234567", "0", "1.234567",
                       "0.000000"]
    assert rows[2][1:] == ["2023-11-14T22:16:40Z", "1700000200", "5", "2000000", "0.000005",
                           "2.000000"]


def test_logs_csv_quotes_text(tmp_path: Path) -> None:
    out = tmp_path / "l.csv"
    recs = [[3, 1_700_000_000, 'boot, "cold"'], [4, 1_700_000_001, "relay open"]]
    assert export.write_logs_csv(recs, out) == 2
    rows = list(csv.reader(out.open()))
    assert rows == [list(export.LOGS_CSV_HEADER),
                    ["3", "2023-11-14T22:13:20Z", "1700000000", 'boot, "cold"'],
                    ["4", "2023-11-14T22:13:21Z", "1700000001", "relay open"]]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    w, h = struct.unpack(">II", data[16:24])
    return int(w), int(h)


@pytest.mark.parametrize("recs", [RECS, []])
def test_profile_png(tmp_path: Path, recs: list[dict[str, int]]) -> None:
    out = tmp_path / "p.png"
    export.write_profile_png(recs, out, 123456789012345678)
    assert _png_size(out) == (1000, 450)


def test_png_title_and_axes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.figure

    seen: dict[str, Any] = {}
    real = matplotlib.figure.Figure.savefig

    def spy(self: Any, *a: Any, **k: Any) -> None:
        ax = self.axes[0]
        seen.update(title=ax.get_title(), x=ax.get_xlabel(), y=ax.get_ylabel(),
                    heights=[p.get_height() for p in ax.patches])
        real(self, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    export.write_profile_png(RECS, tmp_path / "p.png", 42)
    assert seen["title"] == "load profile, meter 42"
    assert "UTC" in seen["x"] and "kWh" in seen["y"]
    assert seen["heights"] == pytest.approx([1.234567, 0.000005, 0.0, 2.0])


@pytest.mark.parametrize("make, why", [
    (lambda p: p, "is a directory"),
    (lambda p: p / "nodir" / "x.csv", "no such directory"),
])
def test_check_writable_refuses(tmp_path: Path, make: Any, why: str) -> None:
    with pytest.raises(export.ExportError, match=why):
        export.check_writable(make(tmp_path))


def test_profile_refuses_unwritable_path_before_the_meter(tmp_path: Path) -> None:
    # the port does not exist: had the command touched it, the error would name the port
    r = CliRunner().invoke(cli.main, ["profile", "--port", str(tmp_path / "no-port"),
                                      "--csv", str(tmp_path / "missing" / "p.csv")])
    assert r.exit_code == 2
    assert "no such directory" in r.output and "no-port" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(cli.main, ["logs", "--port", str(tmp_path / "no-port"),
                                      "--csv", str(tmp_path)])
    assert r.exit_code == 2 and "is a directory" in r.output


# -- watch -------------------------------------------------------------------------------
def _row(**kw: Any) -> dict[str, Any]:
    row = {"port": "/dev/pts/9", "meter_id": 4_382_716_054_938_105, "vrms": 230.123,
           "irms": 5.0004, "power_w": 1150.6, "pf": 0.999, "energy_import_wh": 123_456,
           "energy_export_wh": 7, "clock": 1_700_000_000, "relay": "closed", "locked": False,
           "prepaid": True, "balance_mc": 1_234_500,
           "lopa": {"t": 28_333_334, "length": 60, "t_end": 1_700_000_100, "state": "done",
                    "aggregate": 5}}
    row.update(kw)
    return row


def _render(rows: list[dict[str, Any]]) -> list[str]:
    con = Console(width=watch.WIDTH, record=True, file=io.StringIO())
    con.print(watch.frame_table(rows))
    return con.export_text().splitlines()


def test_watch_cells() -> None:
    cells = watch.row_cells(_row())
    assert cells == ["…938105", "230.1", "5.000", "1151", "1.00", "123.456", "0.007",
                     "closed", "12.35", "22:15 ok"]
    postpaid = watch.row_cells(_row(prepaid=False, balance_mc=None, lopa=None, locked=True,
                                    relay="open"))
    assert postpaid[7:] == ["locked", "-", "-"]
    failed = watch.row_cells(_row(lopa={"t": 28_333_334, "length": 60,
                                        "t_end": 1_700_000_100, "state": "failed"}))
    assert failed[9] == "22:15 fail"
    silent = watch.row_cells({"port": "/dev/pts/3", "meter_id": 7, "error": "timeout"})
    assert silent == ["7"] + ["-"] * 9


def test_watch_frame_fits_80_columns() -> None:
    # the widest values of a bench meter: 63 A export at 253 V, 10 MWh registers, a
    # balance of 99999.99, a failed round
    wide = _row(vrms=253.0, power_w=-15939.0, pf=-0.5, energy_import_wh=9_999_999,
                energy_export_wh=9_999_999, balance_mc=9_999_999_000, irms=63.0,
                lopa={"t": 28_333_334, "length": 60, "t_end": 1_700_000_100,
                      "state": "failed"})
    rows = [_row(), wide, _row(prepaid=False, lopa=None),
            {"port": "/dev/pts/3", "meter_id": 7, "error": "x" * 200}]
    lines = _render(rows)
    assert max(len(line) for line in lines) <= 80
    text = "\n".join(lines)
    # nothing was cut: every value of the full row is on screen
    for cell in watch.row_cells(_row()) + watch.row_cells(wide):
        assert cell in text
    assert "/dev/pts/3: xxx" in text


def test_last_round_reads_db_read_only(tmp_path: Path) -> None:
    from host_tools.headend.lopa.state import State

    db = tmp_path / "headend.db"
    assert watch.last_round(db, 1) is None and not db.exists()  # never created
    with State(db) as st:  # the head-end's own schema and writes
        st.begin_group(b"g", 0, 0.0, [(1, b"k1"), (2, b"k2")])
        st.begin_group(b"h", 0, 0.0, [(2, b"k2"), (3, b"k3")])
        run, _ = st.open_run(b"g", 2)
        st.start_round(b"g", 28_333_335, run.run_id, 60)
        st.finish_round(b"g", 28_333_335, True, 9, None, [], {})
        st.start_round(b"g", 28_333_336, run.run_id, 60)
        st.finish_round(b"g", 28_333_336, False, None, "timeout", [], {})
        run_h, _ = st.open_run(b"h", 1)
        st.start_round(b"h", 28_333_340, run_h.run_id, 60)
    before = db.read_bytes()
    lr1 = watch.last_round(db, 1)
    assert lr1 == {"t": 28_333_336, "length": 60, "t_end": 1_700_000_220, "state": "failed",
                   "aggregate": None}
    lr2 = watch.last_round(db, 2)
    assert lr2 is not None and lr2["t"] == 28_333_340 and lr2["state"] == "collecting"
    assert watch.last_round(db, 4) is None
    assert db.read_bytes() == before
    assert watch.row_cells(_row(lopa=lr1))[9] == "22:17 fail"  # 1_700_000_220 is 22:17:00Z
    assert watch.row_cells(_row(lopa=lr2))[9] == "22:21 busy"


def test_json_row_id_is_a_string() -> None:
    big = 2**63 - 25
    assert watch.json_row(_row(meter_id=big))["meter_id"] == str(big)


@pytest.mark.parametrize("args, why", [
    ([], "give --port P"),
    (["--port", "/dev/null", "--dir", "/tmp"], "not both"),
    (["--port", "/dev/null", "--json"], "--json needs --once"),
    (["--port", "/dev/null", "--once", "--db", "/nonexistent.db"], "no such head-end"),
])
def test_watch_usage_errors(args: list[str], why: str) -> None:
    r = CliRunner().invoke(cli.main, ["watch", *args])
    assert r.exit_code == 2 and why in r.output


# -- devs --------------------------------------------------------------------------------
def _port(device: str, vid: int | None, pid: int | None = None, **kw: Any) -> SimpleNamespace:
    return SimpleNamespace(device=device, vid=vid, pid=pid, serial_number=kw.get("sn"),
                           manufacturer=kw.get("mfr"), product=kw.get("product"))


FAKE_PORTS = [
    _port("/dev/ttyS0", None),  # a plain UART: no USB identity, not listed
    _port("/dev/ttyACM1", 0xF055, 0x9800, sn="3270385E3432", mfr="MicroPython",
          product="Pyboard Virtual Comm Port in FS Mode"),
    _port("/dev/ttyACM0", 0x2E8A, 0x0005, sn="e6614c311b7e6f35", mfr="MicroPython",
          product="Board in FS mode"),
    _port("/dev/ttyUSB0", 0x0403, 0x6001, sn="A50285BI", mfr="FTDI", product="FT232R"),
]


@pytest.fixture
def fake_usb(monkeypatch: pytest.MonkeyPatch) -> None:
    import serial.tools.list_ports

    monkeypatch.setattr(serial.tools.list_ports, "comports", lambda: list(FAKE_PORTS))


def test_devs_json(fake_usb: None, tmp_path: Path) -> None:
    r = CliRunner().invoke(cli.main, ["devs", "--json", "--dir", str(tmp_path / "none")])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["virtual"] == []
    assert [u["port"] for u in d["usb"]] == ["/dev/ttyACM0", "/dev/ttyACM1", "/dev/ttyUSB0"]
    pico = d["usb"][0]
    assert pico == {"port": "/dev/ttyACM0", "vid_pid": "2E8A:0005", "serial": "e6614c311b7e6f35",
                    "manufacturer": "MicroPython", "product": "Board in FS mode",
                    "vendor": "Raspberry Pi", "micropython": True}
    assert d["usb"][1]["vid_pid"] == "F055:9800" and d["usb"][1]["micropython"]
    assert d["usb"][2]["micropython"] is False and d["usb"][2]["vendor"] is None


def test_devs_table(fake_usb: None, tmp_path: Path) -> None:
    r = CliRunner().invoke(cli.main, ["devs", "--dir", str(tmp_path / "none")])
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if "/dev/ttyACM0" in ln)
    assert "2E8A:0005" in line and "e6614c311b7e6f35" in line and "Raspberry Pi" in line
    assert "MicroPython" in line
    ftdi = next(ln for ln in r.output.splitlines() if "/dev/ttyUSB0" in ln)
    assert "0403:6001" in ftdi and "MicroPython" not in ftdi
    assert "ttyS0" not in r.output
    assert "no virtual meters" in r.output


def test_devs_no_usb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import serial.tools.list_ports

    monkeypatch.setattr(serial.tools.list_ports, "comports", lambda: [])
    r = CliRunner().invoke(cli.main, ["devs", "--json", "--dir", str(tmp_path)])
    assert r.exit_code == 0 and json.loads(r.output) == {"usb": [], "virtual": []}


def test_watch_loop_redraws_until_ctrl_c_and_exits_0(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    calls: list[int] = []

    def fake_frame(targets: list[watch.Target], *a: Any) -> list[dict[str, Any]]:
        calls.append(len(targets))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return [_row()]

    monkeypatch.setattr(watch, "frame", fake_frame)
    port = tmp_path / "p"
    r = CliRunner().invoke(cli.main, ["watch", "--port", str(port), "--port", str(port),
                                      "--every", "0.2"])
    assert r.exit_code == 0, r.output
    assert calls == [2, 2, 2]
    assert "230.1" in r.output and "Aborted" not in r.output


def test_a_failed_export_leaves_the_old_file(tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    out.write_text("the previous export\n")
    bad = [RECS[0], {"seq": 1}]  # a record without its fields: the writer fails midway
    with pytest.raises(KeyError):
        export.write_profile_csv(bad, out)
    assert out.read_text() == "the previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]  # no temporary left
