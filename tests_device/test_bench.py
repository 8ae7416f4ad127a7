"""`meterctl bench` on virtual meters: a tiny run through the CLI (one size, one run, setup
1x3: JSON, Markdown, PNG), the system tests through the library with a meter pulled out in
the middle (the message names the test, the figures so far are kept in the JSON), and a group
size beyond the heap reported as the limit."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from host_tools.bench import report, system
from host_tools.bench.results import BenchAborted, Result
from host_tools.bench.runner import BenchConfig, BenchRun, first_meter, grow_fleet
from host_tools.flash.deploy import flash
from host_tools.headend.keystore import Keystore
from host_tools.headend.lopa import targets_from_ports
from host_tools.sim import fleet

from .conftest import UNIX_VM

METERCTL = [sys.executable, "-m", "host_tools.cli"]
C_IDS = {f"C{i}" for i in range(1, 15)}
S_IDS = {"S1", "S2", "S3", "S4"}


def _check_system(results: list[dict[str, Any]]) -> None:
    """S1–S4 for 1x3: wall time > 0, bytes > 0 both ways, bytes = tx + rx, and the direction
    that carries the payload is the larger."""
    rows = {(d["test"], d["variant"]): d for d in results if str(d["test"]).startswith("S")}
    assert {t for t, _ in rows} == S_IDS
    for t in S_IDS:
        wall, tx, rx, tot = (rows[t, v] for v in ("wall", "tx", "rx", "bytes"))
        assert min(wall["samples"]) > 0
        assert min(tx["samples"]) > 0 and min(rx["samples"]) > 0
        assert tot["samples"] == [a + b for a, b in zip(tx["samples"], rx["samples"],
                                                        strict=True)]
    med = {k: v["median"] for k, v in rows.items()}
    assert med["S1", "rx"] > med["S1", "tx"]  # 3 public keys and timings come back
    assert med["S3", "tx"] > med["S3", "rx"]  # every member's key goes out to every member
    assert med["S4", "busy"] > 0 and med["S4", "wait"] > 0
    assert med["S4", "wall"] == pytest.approx(med["S4", "busy"] + med["S4", "wait"], rel=0.01)


# -- the CLI, end to end ----------------------------------------------------------------------
def test_tiny_bench_through_the_cli(tmp_path: Path, real_port: str | None) -> None:
    if real_port:
        pytest.skip("starts its own virtual meters")
    out = tmp_path / "out"
    proc = subprocess.run(
        [*METERCTL, "bench", "--sim", "--quick", "--runs", "1", "--sizes", "3",
         "--setups", "1x3", "--dir", str(tmp_path / "fleet"), "--json", str(out / "b.json"),
         "--md", str(out / "b.md"), "--png", str(out / "b.png")],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "S4 read encrypted values, 6 intervals (1x3, run 1/1)" in proc.stderr  # progress
    d = json.loads((out / "b.json").read_text())
    assert d["aborted"] is None
    ids = {r["test"] for r in d["results"]}
    assert C_IDS <= ids and S_IDS <= ids
    for r in d["results"]:
        assert r["runs"] == 1 and r["platform"].startswith("virtual board"), r
        if r["test"] in ("C1", "C2", "C3", "C4", "C5"):
            assert r["size"] == 3 and r["elster"]["unit"] == "ms" and r["ratio"] > 0
        if r["test"].startswith("S") and r["variant"] in ("wall", "bytes"):
            assert r["elster"]["source"] in ("seed 000 Table 3", "seed 000 Table 4")
            assert r["ratio"] > 0
    _check_system(d["results"])
    s4 = next(r for r in d["results"] if r["test"] == "S4" and r["variant"] == "bytes")
    assert s4["extra"]["lab_check"]["rounds_equal_to_lab_truth"] == system.ROUNDS
    assert "AMD" in d["platforms"]["head-end"] or "cores" in d["platforms"]["head-end"]
    md = (out / "b.md").read_text()
    for t in sorted(C_IDS | S_IDS):
        assert f"#### {t} " in md
    assert "Goals (issue 7)" in md and "S4 bytes <= 1/100 of Elster" in md
    assert (out / "b.png").read_bytes()[:4] == b"\x89PNG"
    assert not fleet.meter_dirs(tmp_path / "fleet") or not any(
        fleet.is_running(m) for m in fleet.meter_dirs(tmp_path / "fleet"))


# -- the library, with a meter pulled out --------------------------------------------------------
@dataclass
class Meters:
    base: Path
    ports: list[str]
    keystore: Keystore


@pytest.fixture(scope="module")
def meters(tmp_path_factory: pytest.TempPathFactory, real_port: str | None
           ) -> Iterator[Meters]:
    if real_port:
        pytest.skip("needs virtual meters (one is stopped mid-bench)")
    tmp = tmp_path_factory.mktemp("bench")
    base = (tmp / "fleet").resolve()
    ks = Keystore(tmp / "keystore.json")
    try:
        first_meter(base, ks, interval_s=2)
        fleet.stop(base)
        ports = grow_fleet(base, 3, ks, interval_s=2)
        yield Meters(base, ports, ks)
    finally:
        fleet.stop(base)


@pytest.mark.profile(UNIX_VM, why="a 64K VM heap: less than a board profile's own port "
                     "models need before the firmware starts")
def test_size_beyond_the_heap_reports_the_limit(tmp_path: Path, real_port: str | None) -> None:
    """--sizes 400 on a meter with a 64 KB heap: the bench ends with a message naming the
    test and the limit, exit 1, and the JSON is written with what was measured."""
    if real_port:
        pytest.skip("starts its own virtual meter")
    base = (tmp_path / "fleet").resolve()
    try:
        port = fleet.start(1, base, heap="64K")[0]["port"]
        flash(port, timeout=30)
        out = tmp_path / "b.json"
        proc = subprocess.run(
            [*METERCTL, "bench", "--port", port, "--keystore", str(tmp_path / "ks.json"),
             "--sizes", "400", "--runs", "1", "--json", str(out)],
            capture_output=True, text=True, timeout=600)
    finally:
        fleet.stop(base)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "bench aborted in C3" in proc.stderr and "--sizes 400" in proc.stderr
    d = json.loads(out.read_text())
    assert d["aborted"]["test"] == "C3" and "MemoryError" in d["aborted"]["message"]
    assert {r["test"] for r in d["results"]} <= C_IDS | {"tick"}


def test_system_tests_and_a_meter_pulled_out(meters: Meters, tmp_path: Path) -> None:
    """Run 1 of 1x3 completes; in run 2 meter 2 is stopped as S2 starts: BenchAborted names
    S2, and run 1's figures (and run 2's S1) are kept and written to the JSON."""
    said: list[str] = []

    def progress(msg: str) -> None:
        said.append(msg)
        if msg.startswith("S2") and "run 2/2" in msg:
            fleet.ctl(fleet.meter_dir(meters.base, 2), {"cmd": "stop"})

    targets = targets_from_ports(meters.ports, meters.keystore)
    bench = system.SystemBench(targets, meters.keystore, platform="virtual board (test)",
                               runs=2, progress=progress, timeout=10.0)
    with pytest.raises(BenchAborted) as exc:
        bench.run(["1x3"])
    e = exc.value
    assert e.test == "S2 (1x3, run 2/2)", str(e)
    assert "S2 (1x3, run 2/2)" in str(e) and meters.ports[2] in str(e)
    by = {(r.test, r.variant): r for r in e.results}
    assert {t for t, _ in by} == S_IDS
    assert by["S1", "bytes"].runs == 2 and by["S2", "bytes"].runs == 1
    assert by["S4", "bytes"].runs == 1 and by["S3", "wall"].runs == 1
    # run 1 is a complete, sane run: checked as the CLI test checks it
    _check_system([Result(r.test, r.what, r.unit, r.samples[:1], r.platform, r.size, r.setup,
                          r.variant).to_json() for r in e.results])
    run = BenchRun(BenchConfig("ports", meters.ports, runs=2, setups=["1x3"]).resolved(),
                   list(e.results), aborted={"test": e.test, "message": str(e)})
    report.write_json(run, tmp_path / "partial.json")
    d = json.loads((tmp_path / "partial.json").read_text())
    assert d["aborted"]["test"] == "S2 (1x3, run 2/2)"
    assert {r["test"] for r in d["results"]} == S_IDS
    s1 = next(r for r in d["results"] if r["test"] == "S1" and r["variant"] == "bytes")
    assert s1["elster"]["value"] == 60968 and len(s1["samples"]) == 2
