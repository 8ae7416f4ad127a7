"""`make mpy`: every module of the Pico's and the Pyboard's images compiles with mpy-cross for
armv6m and armv7emsp, the sizes are printed per module and in total, and the budgets are the
ones docs/hardware.md states."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from host_tools.flash import build, sizes

from .conftest import FIRMWARE, ROOT

ARCH_INDEX = {"armv6m": 4, "armv7emsp": 7}  # sys.implementation._mpy >> 10, the .mpy header


@pytest.mark.parametrize("target", sizes.TARGETS, ids=lambda t: t.arch)
def test_every_firmware_module_compiles_for_the_boards_arch(target: sizes.Target) -> None:
    report = sizes.measure(target)
    got = {m.dest for m in report.modules}
    x25519 = build.x25519_modules(target.board, target.arch)  # only the code the CPU runs
    for p in FIRMWARE.rglob("*.py"):
        rel = "/" + p.relative_to(FIRMWARE).as_posix()
        if p.stem in build.X25519_CODE and p.stem not in x25519:
            assert rel[:-3] + ".mpy" not in got, rel
            continue
        assert (rel if p.name in build.RUN_BY_NAME else rel[:-3] + ".mpy") in got, rel
    assert "/board/__init__.mpy" in got
    for f in build.build_image(target.board, target.arch):
        if f.dest.endswith(".mpy"):
            # "M", format 6, then the architecture: 0 (bytecode only) or the board's
            assert f.data[:2] == b"M\x06", f.dest
            assert f.data[2] >> 2 in (0, ARCH_INDEX[target.arch]), f.dest
    assert report.total == sum(m.image_bytes for m in report.modules) > 0


def test_sizes_are_printed_per_module_and_in_total(capsys: pytest.CaptureFixture[str]) -> None:
    sizes.main(["--board", "rp2_pico"])
    out = capsys.readouterr().out
    report = sizes.measure(sizes.TARGETS[0])
    assert out.startswith("rp2_pico: mpy-cross -march=armv6m (.mpy v6.3, RP2040")
    for m in report.modules:
        assert re.search(rf"^  {re.escape(m.dest)} +{m.source_bytes} +{m.image_bytes}$",
                         out, re.M), m.dest
    assert re.search(rf"^  total \({len(report.modules)} files\) +\d+ +{report.total} +\d+% of "
                     r"the 256 KiB flash budget$", out, re.M), out
    assert "largest module" in out


def test_over_budget_is_reported(monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    tiny = replace(sizes.TARGETS[0], flash_budget=1024, module_budget=512)
    monkeypatch.setattr(sizes, "TARGETS", (tiny,))
    assert sizes.main([]) == 1
    out = capsys.readouterr().out
    assert "OVER BUDGET: image" in out and "> flash budget 1024 B" in out
    assert "> module budget 512 B" in out


def test_budgets_are_the_documented_ones() -> None:
    doc = (ROOT / "docs" / "hardware.md").read_text()
    rows = {m.group(1): (m.group(2), int(m.group(3)), int(m.group(4)),
                         int(m.group(5) or 0))
            for m in re.finditer(r"^\| `(\w+)` \| `(\w+)` \| (\d+) KiB \| (\d+) KiB \| "
                                 r"(?:(\d+) KiB|none[^|]*) \|", doc, re.M)}
    assert rows == {t.board: (t.arch, t.flash_budget // 1024, t.module_budget // 1024,
                              t.romfs_budget // 1024)
                    for t in sizes.TARGETS}


def test_a_board_with_a_romfs_partition_is_measured_by_its_romfs_image(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    pyb = next(t for t in sizes.TARGETS if t.romfs_budget)
    r = sizes.measure(pyb)
    mods = [f for f in build.build_image(pyb.board, pyb.arch) if f.dest.endswith(".mpy")]
    assert r.romfs_bytes == len(build.romfs_image(mods)) > sum(len(f.data) for f in mods)
    # only what a board runs by name stays on the filesystem
    assert r.on_filesystem == sum(m.image_bytes for m in r.modules
                                  if not m.dest.endswith(".mpy")) < r.total
    small = replace(pyb, romfs_budget=r.romfs_bytes - 1)
    monkeypatch.setattr(sizes, "TARGETS", (small,))
    assert sizes.main([]) == 1
    out = capsys.readouterr().out
    assert f"OVER BUDGET: ROMFS image {r.romfs_bytes} B > ROMFS partition" in out
