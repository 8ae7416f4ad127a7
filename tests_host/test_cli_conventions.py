"""meterctl's conventions (issue 20, Build 7 and 8), on the CLI itself with the libraries
under it replaced where a meter would be needed: Ctrl-C exits 130 with one line (never click's
"Aborted!" and 1), and the bench writes the results measured before it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from host_tools import cli
from host_tools.bench import runner
from host_tools.bench.results import BenchInterrupted, Result


def test_ctrl_c_exits_130_with_one_line(monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    from host_tools.sim import fleet

    def stop(*_a: Any, **_k: Any) -> list[int]:
        raise KeyboardInterrupt

    monkeypatch.setattr(fleet, "stop", stop)
    res = CliRunner().invoke(cli.main, ["sim", "stop", "--dir", str(tmp_path)])
    assert res.exit_code == 130, res.output
    assert "Aborted!" not in res.output
    assert res.output.strip().splitlines() == ["interrupted (Ctrl-C)"]


def test_ctrl_c_in_the_bench_writes_the_results_so_far(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    measured = Result("C1", "create key pair", "ms", [1.0, 2.0, 3.0], "emulated m0plus",
                      size=3)
    half = Result("C2", "read public key", "ms", [0.5], "emulated m0plus", size=3)

    def emulated(run: runner.BenchRun, _say: Any, _ph: Any) -> None:
        run.add([measured])
        raise BenchInterrupted([half])  # Ctrl-C in the middle of C2

    monkeypatch.setattr(runner, "_emulated", emulated)
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(cli.main, ["bench", "--emulated", "m0plus", "--json", str(out),
                                        "--update-doc", str(tmp_path / "doc.md")])
    assert res.exit_code == 130, res.output
    assert "Aborted!" not in res.output
    assert res.output.strip().splitlines()[-1] == (
        f"interrupted (Ctrl-C): the results measured so far are in {out}")
    d = json.loads(out.read_text())
    assert d["interrupted"] is True and "interrupted" in d["aborted"]["message"]
    assert [(r["test"], r["samples"]) for r in d["results"]] == [
        ("C1", [1.0, 2.0, 3.0]), ("C2", [0.5])]
    assert not (tmp_path / "doc.md").exists()  # an interrupted bench never updates the doc
