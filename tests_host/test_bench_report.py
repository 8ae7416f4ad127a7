"""`meterctl bench`'s report on hand-made results: the Elster figures (checked against the
seed's own text), units and ratios, the goal lines of issue 7, the JSON, Markdown and PNG; and
the bench's input checks (setups, sizes, runs) and the flash-image clone of the virtual fleet."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from host_tools.bench import elster, report, system
from host_tools.bench.results import Result
from host_tools.bench.runner import BenchConfig, BenchError, BenchRun, clone_image

SEEDS = Path(os.environ.get("METERCTL_SEEDS", "/work/shared/seeds"))
VIRTUAL = "virtual board (unix VM micropython 1.29.0) on AMD EPYC, 2 cores"
EMULATED = "emulated Cortex-M0+ @125 MHz, zero-wait flash: a lower bound"


def r(test: str, unit: str, samples: list[float], platform: str = VIRTUAL, **kw: object
      ) -> Result:
    return Result(test, f"{test} as measured", unit, samples, platform, **kw)  # type: ignore[arg-type]


def run_of(results: list[Result], capacity: dict[str, object] | None = None) -> BenchRun:
    cfg = BenchConfig("sim", runs=3, sizes=[3, 50], setups=["1x3", "1x25"]).resolved()
    return BenchRun(cfg, results, {"components": VIRTUAL, "system": VIRTUAL}, ["a note"],
                    capacity)


# -- Elster's figures against the seed ---------------------------------------------------
def _seed_rows() -> dict[str, list[str]]:
    seed = next(iter(sorted(SEEDS.glob("000_*.txt"))), None)
    if seed is None:
        pytest.skip(f"seed 000 not found in {SEEDS} (set METERCTL_SEEDS)")
    rows: dict[str, list[str]] = {}
    for line in seed.read_text().splitlines():
        cells = line.split("\t")
        if re.fullmatch(r"[CS]\d+", cells[0]):
            rows[cells[0]] = cells
    return rows


def test_elster_component_figures_are_the_seeds() -> None:
    rows = _seed_rows()
    for test in ("C1", "C3", "C4", "C5"):
        assert [float(x) for x in rows[test][2:4]] == [elster.C_TIMES[test][3].value,
                                                       elster.C_TIMES[test][50].value]
    assert rows["C2"][2:4] == ["1", "<1"]
    assert elster.C_TIMES["C2"][3].text == "1 ms" and elster.C_TIMES["C2"][50].text == "<1 ms"
    assert rows["C6"][2:4] == [f"{elster.C6_WITHOUT.value:.2f}%", f"{elster.C6_WITH.value:.2f}%"]
    for test, fig in elster.C_MEMORY.items():
        assert float(rows[test][-1]) == fig.value, test


def test_elster_system_figures_are_the_seeds() -> None:
    rows = _seed_rows()
    seed = next(iter(sorted(SEEDS.glob("000_*.txt"))))
    text = seed.read_text()
    # Table 3 (ms) comes before Table 4 (bytes): both have S1..S4 rows
    t3 = text[text.index("1 Group of 3 Time (ms)"):text.index("Table 3.")]
    t4 = text[text.index("1 Group of 3 Bytes"):text.index("Table 4.")]
    for table, figs in ((t3, elster.S_TIMES), (t4, elster.S_BYTES)):
        for line in table.splitlines()[1:]:
            cells = line.split("\t")
            if cells[0] in figs:
                assert [float(x) for x in cells[2:6]] == [figs[cells[0]][s].value
                                                          for s in elster.SETUPS]
    assert set(rows) >= {"S1", "S2", "S3", "S4"}


# -- units, ratios, the Elster figure beside each result ----------------------------------------
def test_ratio_is_our_median_in_elsters_unit() -> None:
    c1 = r("C1", "us", [62_000, 62_450, 70_000], size=3)
    fig = report.elster_for(c1)
    assert fig is elster.C_TIMES["C1"][3]
    assert report.ratio(c1, fig) == pytest.approx(62.45 / 124.9)
    c6 = r("C6", "%", [12.0], variant="with LoPA, 50 members")
    assert report.elster_for(c6) is elster.C6_WITH
    assert report.elster_for(r("C6", "%", [5.0], variant="without LoPA")) is elster.C6_WITHOUT
    s3 = r("S3", "bytes", [1000, 1200, 1100], setup="1x25", variant="bytes")
    assert report.ratio(s3, report.elster_for(s3)) == pytest.approx(1100 / 1545730)
    # no counterpart in the paper: no figure, no ratio
    assert report.elster_for(r("S3", "bytes", [500], setup="1x25", variant="tx")) is None
    assert report.elster_for(r("C5", "us", [10], size=7)) is None
    assert report.elster_for(r("S1", "ms", [10], setup="3x7", variant="wall")) is None
    assert report.to_unit(1500, "us", "ms") == 1.5
    assert report.to_unit(5, "%", "ms") is None


# -- the goals ------------------------------------------------------------------------------------
def _goal(results: list[Result], start: str, capacity: dict[str, object] | None = None
          ) -> report.Goal:
    return next(g for g in report.goals(results, capacity) if g.goal.startswith(start))


def test_c5_goal_is_judged_only_on_a_target() -> None:
    pc = r("C5", "us", [300, 400, 500], size=50, variant="precomputed")
    g = _goal([pc], "C5")
    assert g.status == "not judged" and "a PC" in g.detail
    fast = r("C5", "us", [800, 900, 2000], EMULATED, size=50, variant="precomputed")
    assert _goal([fast], "C5").status == "pass"  # the median, 900 us
    slow = r("C5", "us", [1100, 1200, 1300], EMULATED, size=50, variant="precomputed")
    g = _goal([slow], "C5")
    assert g.status == "fail" and EMULATED in g.detail
    cold_only = r("C5", "us", [100], EMULATED, size=50, variant="cold")
    assert _goal([cold_only], "C5").status == "not measured"


def test_memory_goals() -> None:
    c13 = r("C13", "bytes", [40_000, 40_100, 40_200])
    ok = [c13, r("C14", "bytes", [43_000, 44_196, 45_000], size=50),
          r("C14", "bytes", [99_999], size=3)]
    g = _goal(ok, "C14 - C13")
    assert g.status == "pass" and g.detail.startswith("4,096 B")
    assert _goal([c13, r("C14", "bytes", [44_197], size=50)], "C14 - C13").status == "fail"
    assert _goal([c13], "C14 - C13").status == "not measured"
    code = [r("C11", "bytes", [50_000]), r("C12", "bytes", [58_192])]
    assert _goal(code, "C12 - C11").status == "pass"
    code[1] = r("C12", "bytes", [58_193])
    assert _goal(code, "C12 - C11").status == "fail"


def test_bytes_goal_covers_every_setup_run() -> None:
    res = [r("S3", "bytes", [800, 840, 900], setup="1x3", variant="bytes"),
           r("S3", "bytes", [15_000], setup="1x25", variant="bytes"),
           r("S4", "bytes", [2_000], setup="1x3", variant="bytes"),
           r("S4", "bytes", [26_000], setup="1x25", variant="bytes")]
    s3 = _goal(res, "S3 bytes")
    assert s3.status == "pass"  # 840 <= 840.98 (84098/100), 15000 <= 15457
    assert "not run: 2x25, 10x10" in s3.detail
    assert "1x3 192 B, 1x25 19,200 B" in s3.detail  # 3*2*32, 25*24*32: the keys alone
    s4 = _goal(res, "S4 bytes")
    assert s4.status == "fail" and "1x25: 26,000 B > 25,189 B (over)" in s4.detail
    assert _goal([], "S3 bytes").status == "not measured"


def test_s3_floor_goal_is_judged_against_the_public_keys_alone() -> None:
    # 1x3: floor 192 B, 1.25 x = 240 B; 1x25: 19,200 B, 1.25 x = 24,000 B
    at = [r("S3", "bytes", [240], setup="1x3", variant="bytes"),
          r("S3", "bytes", [23_000, 24_000, 30_000], setup="1x25", variant="bytes")]
    g = _goal(at, "S3 within 1.25 x")
    assert g.status == "pass", g.detail
    assert "1x25: 24,000 B = 1.25 x 19,200 B (ok)" in g.detail and "not run: 2x25" in g.detail
    over = [r("S3", "bytes", [241], setup="1x3", variant="bytes"), at[1]]
    g = _goal(over, "S3 within 1.25 x")
    assert g.status == "fail" and "1x3: 241 B = 1.26 x 192 B (over)" in g.detail
    assert _goal([], "S3 within").status == "not measured"


def test_capacity_line() -> None:
    assert _goal([], "the largest group").status == "not measured"
    g = _goal([], "the largest group", {"largest_group": 180, "most_groups": 9})
    assert g.status == "info" and "largest_group 180" in g.detail and "27 members" in g.detail


# -- files ---------------------------------------------------------------------------------------
def _results() -> list[Result]:
    out = [r("C1", "us", [21_000, 21_500, 22_000], size=3),
           r("C1", "us", [21_000, 21_400, 22_000], size=50),
           r("C5", "us", [150, 160, 170], size=50, variant="cold"),
           r("C5", "us", [8, 9, 10], size=50, variant="precomputed"),
           r("C13", "bytes", [61_000] * 3), r("C14", "bytes", [64_000] * 3, size=50)]
    for test in ("S1", "S2", "S3", "S4"):
        out += [r(test, "ms", [1500, 1600, 1700], setup="1x3", variant="wall"),
                r(test, "bytes", [150, 160, 170], setup="1x3", variant="tx"),
                r(test, "bytes", [300, 310, 320], setup="1x3", variant="rx"),
                r(test, "bytes", [450, 470, 490], setup="1x3", variant="bytes")]
    out += [r("S4", "ms", [1300] * 3, setup="1x3", variant="busy"),
            r("S4", "ms", [12_000] * 3, setup="1x3", variant="wait")]
    return out


def test_json_has_every_raw_figure_and_elsters_beside_it(tmp_path: Path) -> None:
    run = run_of(_results())
    run.aborted = {"test": "S2 (1x3, run 2/3)", "message": "S2: meter 7 did not answer"}
    path = tmp_path / "out" / "bench.json"
    report.write_json(run, path)
    d = json.loads(path.read_text())
    assert d["aborted"]["test"].startswith("S2")
    assert d["platforms"]["components"] == VIRTUAL
    rows = {(x["test"], x["size"], x["setup"], x["variant"]): x for x in d["results"]}
    c1 = rows["C1", 3, None, None]
    assert c1["samples"] == [21_000, 21_500, 22_000] and c1["median"] == 21_500
    assert c1["elster"]["value"] == 124.9 and c1["elster"]["unit"] == "ms"
    assert c1["ratio"] == pytest.approx(21.5 / 124.9)
    s4 = rows["S4", None, "1x3", "bytes"]
    assert s4["elster"]["value"] == 289243 and s4["elster"]["source"] == "seed 000 Table 4"
    assert rows["S4", None, "1x3", "busy"]["elster"]["value"] == 39025.3141
    assert rows["S4", None, "1x3", "tx"]["elster"] is None
    assert {g["status"] for g in d["goals"]} >= {"not judged", "pass"}


def test_markdown_has_a_table_per_test_and_the_goals(tmp_path: Path) -> None:
    run = run_of(_results())
    path = tmp_path / "bench.md"
    report.write_markdown(run, path)
    md = path.read_text()
    for test in ("C1", "C5", "C13", "C14", "S1", "S2", "S3", "S4"):
        assert f"#### {test} " in md
    assert "| 3 | 21,000 / 21,500 / 22,000 | us | 21.50 | 3 | 124.9 ms | 0.172 |" in md
    assert "**NOT JUDGED**: C5 <= 1 ms" in md
    assert "| 1x3 | 1,500 / 1,600 / 1,700 | 1,300 | 12,000 | 160 | 310 | 450 / 470 / 490 | 3 |" \
        in md
    assert VIRTUAL in md and elster.PLATFORM in md
    text = "\n".join(t.text() for t in report.component_tables(run.results))
    assert "C5 encrypt one value" in text and "precomputed" in text


def test_update_doc_replaces_only_the_marked_block(tmp_path: Path) -> None:
    doc = tmp_path / "BENCH.md"
    doc.write_text("# Bench\n\nbefore\n\n<!-- bench-sim:results -->\n(not yet generated)\n"
                   "<!-- /bench-sim:results -->\n\nafter\n")
    run = run_of(_results())
    report.update_doc(run, doc)
    text = doc.read_text()
    assert text.startswith("# Bench\n\nbefore\n\n<!-- bench-sim:results -->\n")
    assert text.endswith("<!-- /bench-sim:results -->\n\nafter\n")
    assert "not yet generated" not in text
    block = text[text.index("-->") + 3:text.index("<!-- /bench-sim")]
    assert block.strip() == report.markdown(run).strip()
    assert VIRTUAL in block and "runs 3" in block
    report.update_doc(run, doc)  # again: the same file, one block
    assert doc.read_text() == text
    other = tmp_path / "new.md"
    report.update_doc(run, other)  # no markers: appended with them
    assert other.read_text().count("<!-- bench-sim:results -->") == 1


def test_png_chart(tmp_path: Path) -> None:
    path = tmp_path / "bench.png"
    report.write_png(run_of(_results()), path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    comp, sysb = report.chart_data(_results())
    assert [c[0].split()[0] for c in comp] == ["C1", "C1", "C5", "C5"]
    assert comp[0][1] == pytest.approx(21.5) and comp[0][2] == 124.9
    assert [s[0] for s in sysb] == ["S1\n1x3", "S2\n1x3", "S3\n1x3", "S4\n1x3"]


# -- bad input ------------------------------------------------------------------------------------
def test_setups_parse_and_refuse() -> None:
    assert system.parse_setups("1x3, 2X25,1x3") == ["1x3", "2x25"]
    assert system.meters_needed(["1x3", "10x10", "2x25"]) == 100
    for bad in ("3", "1x2", "0x5", "ax3", ""):
        with pytest.raises(system.SetupError):
            system.parse_setups(bad)


def test_config_checks() -> None:
    cfg = BenchConfig("sim", quick=True).resolved()
    assert cfg.setups == ["1x3", "1x25"] and cfg.runs == 3 and cfg.interval_s == 2
    assert BenchConfig("sim").resolved().setups == list(system.ALL_SETUPS)
    assert BenchConfig("sim").resolved().runs == 10
    # --ports: the default setups that fit; explicit ones that do not fit are refused
    assert BenchConfig("ports", ["a", "b", "c"]).resolved().setups == ["1x3"]
    with pytest.raises(BenchError, match="needs 25 meters"):
        BenchConfig("ports", ["a", "b", "c"], setups=["1x25"]).resolved()
    for bad in (BenchConfig("sim", runs=0), BenchConfig("sim", sizes=[2, 50]),
                BenchConfig("sim", sizes=[]), BenchConfig("sim", setups=["3"]),
                BenchConfig("emulated", board="z80"), BenchConfig("sim", interval_s=0)):
        with pytest.raises(BenchError):
            bad.resolved()


def test_clone_copies_the_image_checked_and_no_data(tmp_path: Path) -> None:
    src, dest = tmp_path / "m0", tmp_path / "m1"
    files = {"/main.py": b"print(1)\n", "/lib/lopa.mpy": b"M\x06lopa"}
    for p, data in files.items():
        (src / "fs" / p.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (src / "fs" / p.lstrip("/")).write_bytes(data)
    (src / "fs" / "data").mkdir()
    (src / "fs" / "data" / "cs_keys.json").write_text("{}")  # the meter's own: never cloned
    image = b"\xd2\xcd\x31rom image"
    (src / "romfs.bin").write_bytes(image + b"\xff" * 32)  # the partition, image and erased
    manifest = {"board": "virtual",
                "files": {p: hashlib.sha256(d).hexdigest() for p, d in files.items()},
                "romfs": {"size": len(image), "sha256": hashlib.sha256(image).hexdigest()}}
    (src / "fs" / ".flash-manifest.json").write_text(json.dumps(manifest))
    assert clone_image(src, dest) == sum(map(len, files.values())) + len(image) + 32
    assert (dest / "fs" / "lib" / "lopa.mpy").read_bytes() == files["/lib/lopa.mpy"]
    assert (dest / "romfs.bin").read_bytes() == (src / "romfs.bin").read_bytes()
    assert not (dest / "fs" / "data").exists()
    (src / "romfs.bin").write_bytes(b"\xff" * 64)  # a partition erased since: not cloned
    with pytest.raises(BenchError, match=r"romfs\.bin: differs from the flash manifest"):
        clone_image(src, tmp_path / "m2")
    (src / "romfs.bin").write_bytes(image)
    (src / "fs" / "main.py").write_bytes(b"tampered\n")
    with pytest.raises(BenchError, match="differs from the flash manifest"):
        clone_image(src, tmp_path / "m2")
    assert not (tmp_path / "m2").exists()  # nothing copied from an image that fails its check
