"""python -m host_tools.fuzz [--inputs N] [--target T ...] [--seed S] [--json]: the fuzz run
(``make fuzz``). Exits 1 on any crash, hang, state change or unlogged rejection."""

from __future__ import annotations

import argparse
import json
import sys

from host_tools.fuzz.run import TARGETS, report, run_target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m host_tools.fuzz", description=__doc__)
    ap.add_argument("--inputs", type=int, default=100_000, help="inputs per target")
    ap.add_argument("--target", action="append", choices=TARGETS,
                    help="a target (repeatable; default: all)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=5000, help="inputs per VM process")
    ap.add_argument("--hang-ms", type=int, default=10000, help="per-input time bound (wall)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.inputs < 1 or a.batch < 1:
        ap.error("--inputs and --batch must be at least 1")
    figs = []
    for t in a.target or TARGETS:
        figs.append(run_target(t, a.inputs, a.seed, a.batch, a.hang_ms))
        if not a.json:
            print(report(figs[-1:]), flush=True)
    if a.json:
        print(json.dumps([f.to_json() for f in figs], indent=1))
    return 0 if all(f.ok for f in figs) else 1


if __name__ == "__main__":
    sys.exit(main())
