"""``make mpy``: compile the image of each real board with mpy-cross for its architecture and
print the size of every module, and the totals, against the budgets in docs/hardware.md.

The image is exactly what ``meterctl flash`` would deploy (``build.build_image``): .mpy for the
board's architecture, main.py and boot.py as source. Two budgets per board:

- flash: the bytes the image takes on the board's filesystem (its files, not counting the
  filesystem's own block rounding), against the room the rest of the filesystem leaves it
  (/data needs its share: logs, load profile, keys, counters);
- largest module: an imported .mpy's bytecode is loaded into the heap, so a big module is a
  big peak during its import on a fragmented heap; past the budget, split it (or freeze the
  firmware into the MicroPython build, see docs/hardware.md).

A board whose build must have a ROMFS partition (``romfs_budget``; the Pyboard: its
MicroPython has to be built anyway, docs/hardware.md) gets its modules as one ROMFS image in
that partition, as ``meterctl flash`` writes it: the image against the partition, and only
what stays on the filesystem (main.py, boot.py) against the flash budget.

    python -m host_tools.flash.sizes [--board NAME]... [--json]

Exit status 1 when a budget is exceeded.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from host_tools.flash.build import MPY_CROSS_VERSION, BuildError, build_image, romfs_image


@dataclass(frozen=True)
class Target:
    board: str
    arch: str  # mpy-cross -march
    cpu: str
    flash_budget: int  # bytes of filesystem for the image
    module_budget: int  # bytes, the largest single module
    romfs_budget: int = 0  # the ROMFS partition its build must have; 0: none, files only


# Keep in step with the budget table in docs/hardware.md (tests_host/test_mpy_sizes.py checks).
TARGETS = (
    Target("rp2_pico", "armv6m", "RP2040, Cortex-M0+", 256 * 1024, 16 * 1024),
    Target("stm32_pybv11", "armv7emsp", "STM32F405, Cortex-M4F", 64 * 1024, 16 * 1024,
           128 * 1024),
)


@dataclass(frozen=True)
class Module:
    dest: str
    source_bytes: int
    image_bytes: int


@dataclass
class Report:
    target: Target
    modules: list[Module]
    romfs_bytes: int = 0  # the ROMFS image of the .mpy modules, as meterctl flash builds it

    @property
    def total(self) -> int:
        return sum(m.image_bytes for m in self.modules)

    @property
    def on_filesystem(self) -> int:
        """What the filesystem holds: everything, or with a ROMFS partition what is not in it."""
        if not self.target.romfs_budget:
            return self.total
        return sum(m.image_bytes for m in self.modules if not m.dest.endswith(".mpy"))

    @property
    def largest(self) -> Module:
        return max(self.modules, key=lambda m: m.image_bytes)

    @property
    def over(self) -> list[str]:
        out = []
        if self.on_filesystem > self.target.flash_budget:
            out.append(f"image {self.on_filesystem} B > flash budget "
                       f"{self.target.flash_budget} B")
        if self.target.romfs_budget and self.romfs_bytes > self.target.romfs_budget:
            out.append(f"ROMFS image {self.romfs_bytes} B > ROMFS partition "
                       f"{self.target.romfs_budget} B")
        if self.largest.image_bytes > self.target.module_budget:
            out.append(f"{self.largest.dest} {self.largest.image_bytes} B > module budget "
                       f"{self.target.module_budget} B")
        return out

    def to_json(self) -> dict[str, object]:
        t = self.target
        return {"board": t.board, "arch": t.arch, "cpu": t.cpu,
                "mpy": "{}.{}".format(*MPY_CROSS_VERSION),
                "modules": {m.dest: {"source": m.source_bytes, "image": m.image_bytes}
                            for m in self.modules},
                "total": self.total, "flash_budget": t.flash_budget,
                "on_filesystem": self.on_filesystem, "romfs_image": self.romfs_bytes,
                "romfs_budget": t.romfs_budget,
                "largest": self.largest.dest, "module_budget": t.module_budget,
                "over": self.over}


def measure(target: Target) -> Report:
    """Compile the board's whole image for its architecture (raises BuildError)."""
    files = build_image(target.board, target.arch)
    mods = [Module(f.dest, f.src.stat().st_size, len(f.data)) for f in files]
    rom = romfs_image([f for f in files if f.dest.endswith(".mpy")])
    return Report(target, sorted(mods, key=lambda m: m.dest), len(rom))


def format_report(r: Report) -> str:
    t = r.target
    width = max(len(m.dest) for m in r.modules)
    lines = [f"{t.board}: mpy-cross -march={t.arch} (.mpy v{MPY_CROSS_VERSION[0]}."
             f"{MPY_CROSS_VERSION[1]}, {t.cpu})",
             f"  {'module':<{width}}  {'source':>7}  {'on board':>8}"]
    for m in r.modules:
        lines.append(f"  {m.dest:<{width}}  {m.source_bytes:7d}  {m.image_bytes:8d}")
    src = sum(m.source_bytes for m in r.modules)
    if not t.romfs_budget:
        lines.append(f"  {'total (' + str(len(r.modules)) + ' files)':<{width}}  {src:7d}  "
                     f"{r.total:8d}  {_pct(r.total, t.flash_budget)} of the "
                     f"{_k(t.flash_budget)} flash budget")
        lines.append(f"  as a ROMFS image (a build with a partition, optional): "
                     f"{r.romfs_bytes} B")
    else:
        n_rom = sum(1 for m in r.modules if m.dest.endswith(".mpy"))
        lines.append(f"  {'total (' + str(len(r.modules)) + ' files)':<{width}}  {src:7d}  "
                     f"{r.total:8d}")
        lines.append(f"  ROMFS image ({n_rom} modules): {r.romfs_bytes} B, "
                     f"{_pct(r.romfs_bytes, t.romfs_budget)} of the {_k(t.romfs_budget)} "
                     "ROMFS partition")
        lines.append(f"  on the filesystem: {r.on_filesystem} B, "
                     f"{_pct(r.on_filesystem, t.flash_budget)} of the {_k(t.flash_budget)} "
                     f"flash budget (as plain files, without the partition, the image would "
                     f"take {_pct(r.total, t.flash_budget)})")
    lines.append(f"  largest module {r.largest.dest}: {r.largest.image_bytes} B, "
                 f"{_pct(r.largest.image_bytes, t.module_budget)} of the "
                 f"{_k(t.module_budget)} module budget")
    for o in r.over:
        lines.append(f"  OVER BUDGET: {o}")
    return "\n".join(lines)


def _pct(n: int, of: int) -> str:
    return f"{100 * n / of:.0f}%"


def _k(n: int) -> str:
    return f"{n // 1024} KiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m host_tools.flash.sizes",
                                 description="compile each board's image with mpy-cross and "
                                             "print its sizes against the budgets")
    ap.add_argument("--board", action="append", choices=[t.board for t in TARGETS],
                    help="only this board (repeatable)")
    ap.add_argument("--json", action="store_true", help="one JSON object per board")
    args = ap.parse_args(argv)
    over = False
    for t in TARGETS:
        if args.board and t.board not in args.board:
            continue
        try:
            r = measure(t)
        except BuildError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(json.dumps(r.to_json()) if args.json else format_report(r))
        over = over or bool(r.over)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
