"""``make bench-sim``: how long a fleet of virtual meters takes to come up, and
what each meter costs in memory once it is idle.

    python -m host_tools.sim.bench --meters 50 [--runs 1] [--dir D] [--json FILE]

A benchmark, not a test: it prints figures, and PASS/FAIL against the issue's
targets (all meters up within 30 s for 50 meters; at most 20 MB RSS per meter),
but always exits 0 unless the fleet could not be started at all.
Units: MB = 10**6 bytes (the /proc figures are KiB, converted exactly).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from host_tools.sim import fleet

START_TARGET_S = 30.0
START_TARGET_METERS = 50
RSS_TARGET_MB = 20.0


def proc_kib(path: str, key: str) -> int | None:
    """The ``key:`` line of a /proc file, in KiB; None if the process is gone."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def mb(kib: int | None) -> float:
    return float("nan") if kib is None else kib * 1024 / 1e6


def cpu_model() -> str:
    return f"{proc_str('/proc/cpuinfo', 'model name')}, {os.cpu_count()} cores"


def proc_str(path: str, key: str) -> str:
    with open(path) as f:
        for line in f:
            if line.split(":")[0].strip() == key:
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def measure_meter(st: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"id": st.get("id"), "vm": st.get("vm"), "pid": st.get("pid"),
                           "vm_pid": st.get("vm_pid")}
    for who, pid in (("sup", st.get("pid")), ("vm", st.get("vm_pid"))):
        ok = isinstance(pid, int) and pid > 0
        row[f"{who}_rss_kib"] = proc_kib(f"/proc/{pid}/status", "VmRSS") if ok else None
        row[f"{who}_pss_kib"] = proc_kib(f"/proc/{pid}/smaps_rollup", "Pss") if ok else None
    for k in ("rss", "pss"):
        a, b = row[f"sup_{k}_kib"], row[f"vm_{k}_kib"]
        row[f"{k}_sum_kib"] = None if a is None or b is None else a + b
    return row


def one_run(n: int, base: Path, idle: float, timeout: float) -> dict[str, Any]:
    ups: list[float] = []
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        ups.append(time.perf_counter() - t0)

    run: dict[str, Any] = {"dir": str(base), "meters": n}
    try:
        try:
            fleet.start(n, base, timeout=timeout, progress=progress, profile="unix")
            run["start_s"] = time.perf_counter() - t0
        except fleet.SimError as e:
            run["start_s"], run["error"] = None, str(e)
            return run
        finally:
            run["up_times_s"] = ups
        time.sleep(idle)
        sts = fleet.status(base)
        run["meter_rows"] = [measure_meter(st) for st in sts]
        run["not_on"] = [r["id"] for r in run["meter_rows"] if r["vm"] != "on"]
        run["boots"] = sum(int(st.get("boots", 0)) for st in sts)
        run["crashes"] = sum(int(st.get("crashes", 0)) for st in sts)
        pss = [r["pss_sum_kib"] for r in run["meter_rows"]]
        run["fleet_pss_kib"] = None if None in pss else sum(pss)
    finally:
        t1 = time.perf_counter()
        fleet.stop(base)
        run["stop_s"] = time.perf_counter() - t1
    return run


def spread(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    return f"{min(xs):7.2f} {statistics.median(xs):7.2f} {max(xs):7.2f}"


def report(runs: list[dict[str, Any]], n: int) -> None:
    print(f"platform: virtual board (MicroPython unix VM on the host CPU: {cpu_model()})")
    print(f"meters: {n}   runs: {len(runs)}")
    starts = [r["start_s"] for r in runs if r["start_s"] is not None]
    for i, r in enumerate(runs, 1):
        up = "FAILED: " + r["error"] if r["start_s"] is None else f"{r['start_s']:.2f} s"
        print(f"run {i}: all {n} meters up in {up}; stop took {r['stop_s']:.2f} s")
        if r.get("not_on"):
            print(f"  WARNING: meters not 'on' after idling: {r['not_on']}")
        if r.get("crashes"):
            print(f"  WARNING: {r['crashes']} VM crashes, {r['boots']} boots for {n} meters")
    if len(starts) > 1:
        print(f"start time min/median/max (s): {spread(starts)}")
    rows = [m for r in runs for m in r.get("meter_rows", [])]
    print(f"\nmemory per meter, idle ({len(rows)} samples), MB = 10^6 bytes:")
    print(f"{'':22}{'min':>7} {'median':>7} {'max':>7}")
    for label, key in (("supervisor RSS", "sup_rss_kib"), ("VM RSS", "vm_rss_kib"),
                       ("RSS sum", "rss_sum_kib"), ("supervisor PSS", "sup_pss_kib"),
                       ("VM PSS", "vm_pss_kib"), ("PSS sum", "pss_sum_kib")):
        print(f"{label:22}{spread([mb(m[key]) for m in rows if m[key] is not None])}")
    fleet_pss = [mb(r["fleet_pss_kib"]) for r in runs if r.get("fleet_pss_kib") is not None]
    total = spread(fleet_pss) if len(fleet_pss) > 1 else "  ".join(f"{x:.2f}" for x in fleet_pss)
    print(f"fleet total PSS (MB{', min/median/max over runs' if len(fleet_pss) > 1 else ''}): "
          f"{total or 'n/a'}")
    print("note: RSS counts shared pages (libpython, libc, the MicroPython module) in full in"
          "\n      every process; PSS splits them among the processes sharing them, so the PSS"
          "\n      sum is the real per-meter cost.")
    scale = "" if n == START_TARGET_METERS else f" (target is for {START_TARGET_METERS}; ran {n})"
    ok_start = len(starts) == len(runs) and max(starts) <= START_TARGET_S
    worst = f"{max(starts):.2f} s" if starts else "n/a"
    print(f"\n{'PASS' if ok_start else 'FAIL'}: start <= {START_TARGET_S:g} s"
          f"{scale}: worst {worst}")
    sums = [mb(m["rss_sum_kib"]) for m in rows if m["rss_sum_kib"] is not None]
    ok_rss = bool(sums) and len(sums) == len(rows) and max(sums) <= RSS_TARGET_MB
    worst = f"{max(sums):.2f} MB" if sums else "n/a"
    print(f"{'PASS' if ok_rss else 'FAIL'}: RSS (supervisor + VM) <= {RSS_TARGET_MB:g} MB "
          f"per meter: worst {worst}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--meters", type=int, default=START_TARGET_METERS)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--dir", type=Path, help="where the fleets go (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="write every raw figure here")
    ap.add_argument("--idle", type=float, default=2.0, help="seconds to idle before measuring")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="give up on start after this long (longer than the 30 s target, "
                         "so that a slow start is measured rather than aborted)")
    a = ap.parse_args(argv)
    base = a.dir.resolve() if a.dir else Path(tempfile.mkdtemp(prefix="bench-sim-"))
    runs = []
    try:
        for k in range(a.runs):
            runs.append(one_run(a.meters, base / f"run-{k + 1}", a.idle, a.timeout))
    finally:
        if not a.dir:
            shutil.rmtree(base, ignore_errors=True)
    report(runs, a.meters)
    if a.json:
        a.json.write_text(json.dumps({"platform": cpu_model(), "date": time.strftime("%F"),
                                      "meters": a.meters, "runs": runs}, indent=1))
    return 0 if any(r["start_s"] is not None for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
