"""The one table of issue 19's report (host_tools/emu/summary.py): ours, Elster's and the
physical limit per test and board, with both ratios, from run-bench's JSON."""

from __future__ import annotations

import json
from pathlib import Path

from host_tools.emu import summary
from host_tools.emu.build import board_spec

M0 = board_spec("m0plus")


def _timed(test: str, size: int | None, count: int, unit: str, variant: str | None = None,
           **extra: list[int]) -> dict[str, object]:
    return {"test": test, "what": test, "unit": "us", "samples": [1.0], "platform": "p",
            "size": size, "variant": variant, "extra": {unit: [count], **extra}}


def _bytes(test: str, size: int | None, n: float) -> dict[str, object]:
    return {"test": test, "what": test, "unit": "bytes", "samples": [n], "platform": "p",
            "size": size}


def _write(tmp_path: Path, board: str, results: list[dict[str, object]]) -> Path:
    p = tmp_path / f"{board}.json"
    p.write_text(json.dumps({"board": board, "label": "x", "results": results}))
    return p


def test_ratios_against_elster_and_the_limit(tmp_path: Path) -> None:
    # C1 on the M0+: 3.0 M instructions, but the bench's walk says 3.875 M cycles
    m0 = _write(tmp_path, "m0plus", [
        _timed("C1", 50, 3_000_000, "instructions", cycles_est=[3_875_940]),
        _timed("C3", 50, 100_000_000, "instructions"),
        _timed("C5", 50, 30_000, "instructions", variant="cold"),
        _timed("C5", 50, 33_000, "instructions", variant="precomputed"),
        _bytes("C11", None, 50_000), _bytes("C12", None, 74_000),
        _bytes("C13", None, 20_000), _bytes("C14", 50, 26_000)])
    m4 = _write(tmp_path, "m4", [_timed("C1", 50, 570_000, "instructions")])
    doc = tmp_path / "BENCH.md"
    doc.write_text("x\n<!-- bench-emulated:summary -->\nold\n<!-- /bench-emulated:summary -->\ny\n")
    assert summary.main([str(m0), str(m4), "--update-doc", str(doc)]) == 0
    text = doc.read_text()
    assert "old" not in text and text.startswith("x\n") and text.endswith("y\n")
    lines = {(ln.split(" | ")[0][2:], ln.split(" | ")[1]): ln.split(" | ")
             for ln in text.splitlines() if ln.startswith("| C")}
    c1 = lines[("C1 50 members", "m0plus")]
    # 3,875,940 cycles at 125 MHz = 31.01 ms; Elster 126.875 ms; pornin 3,229,950 = 25.84 ms
    assert c1[2] == "31.01 ms" and c1[3] == "126.875 ms" and c1[4] == "0.24×"
    assert c1[5].startswith("25.8 ms (pornin") and c1[6] == "1.20× |"
    c3 = lines[("C3 50 members", "m0plus")]  # instructions × CPI, against 49 X25519s
    ms = 100_000_000 * (M0.cpi_est or 1) / 125_000
    assert c3[2] == f"{ms:,.2f} ms" and c3[5].startswith("1,266.1 ms (49 × pornin")
    assert c3[6] == f"{ms / (49 * 3_229_950 / 125_000):.2f}× |"
    c5 = lines[("C5 50 members, precomputed", "m0plus")]  # the variant asked, not the cold one
    assert c5[2] == f"{33_000 * (M0.cpi_est or 1) / 125_000:,.2f} ms" and c5[5] == "—"
    code = lines[("C12 − C11 LoPA code", "m0plus")]
    assert code[2] == "24,000 B" and code[3] == "15,608 B" and code[6] == "1.54× |"
    ram = lines[("C14 − C13 RAM, 50 members", "m0plus")]
    assert ram[2] == "6,000 B" and ram[3] == "4,784 B" and ram[6] == f"{6000 / 4096:.2f}× |"
    c1m4 = lines[("C1 50 members", "m4")]  # 1 instruction a cycle at 168 MHz; Lenngren's M4
    assert c1m4[2] == f"{570_000 / 168_000:,.2f} ms" and "Lenngren" in c1m4[5]
    rows = [ln for ln in text.splitlines() if ln.startswith("| C1 ")]
    assert [r.split(" | ")[1] for r in rows] == ["m0plus", "m4"]  # a test's boards together


def test_a_file_that_is_not_run_bench_json_is_refused(tmp_path: Path,
                                                      capsys: object) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"results": []}')
    doc = tmp_path / "BENCH.md"
    doc.write_text("keep\n")
    assert summary.main([str(bad), "--update-doc", str(doc)]) == 1
    assert doc.read_text() == "keep\n"
