"""``python -m host_tools.sim.rtt``: the WAN round trip of one command, as the head-end sees it.

A benchmark, not a test: it prints figures and exits 0 once the meter answered at all. Each run
sends one authenticated request (INFO, READ or PUBKEY: the kinds that change nothing) over
:class:`~host_tools.headend.client.MeterLink` and times, on the host's monotonic clock:

- ``rtt``: from before the request is sealed until its answer is verified and decoded;
- ``first byte``: from the request's last byte written until the answer's first byte read;
- ``answer``: from the request's last byte written until the answer's last byte read: the
  virtual board's part (the supervisor's relay both ways and the VM), without the host's own
  work (sealing, opening, the keystore's two fsync'd counter writes).

PUBKEY answers also carry the meter's own time for it (``ticks_us`` from the frame's arrival
at the DC security module to its answer: C2), printed as ``meter``. The figures name the
platform they come from (the virtual board: the host's CPU) and the run count.

``--sim`` needs no meter: it starts one virtual meter (``--profile``) in a temporary directory,
flashes and provisions it (a keystore of its own), makes its LoPA key pair, measures its idle
CPU share (supervisor and VM, the VM's main thread and core 1 apart, from each thread's
/proc schedstat, over ``--idle`` seconds) with each part's wake-ups a second (its voluntary
context switches), then every kind, and stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from host_tools.flash.build import BuildError
from host_tools.headend import wire
from host_tools.headend.client import LinkError, MeterError, open_link
from host_tools.headend.keystore import Keystore, KeystoreError
from host_tools.headend.provision import ProvisionError
from host_tools.sim.bench import cpu_model
from host_tools.sim.fleet import SimError
from host_tools.transport.serial import BoardError

KINDS = {"info": wire.K_INFO, "read": wire.K_READ, "pubkey": wire.K_PUBKEY}


def measure(port: str, kind: str, runs: int, keystore: Path | None = None,
            warmup: int = 3) -> dict[str, Any]:
    """Time ``runs`` requests of ``kind`` on the meter at ``port``; raw figures in ms."""
    code = KINDS[kind]
    ks = Keystore(keystore) if keystore else Keystore()
    rtt: list[float] = []
    first: list[float] = []
    answer: list[float] = []
    meter_us: list[int] = []
    with open_link(port, ks) as link:
        sent_at = 0.0
        first_at: list[float] = []
        last_at = 0.0
        send_line = link.send_line

        def timed_send(line: bytes) -> None:
            nonlocal sent_at
            send_line(line)
            sent_at = time.perf_counter()

        read = link.ser.read

        def timed_read(n: int = 1) -> bytes:
            nonlocal last_at
            data: bytes = read(n)
            if data:
                last_at = time.perf_counter()
                if not first_at:
                    first_at.append(last_at)
            return data

        link.send_line = timed_send  # type: ignore[method-assign]
        link.ser.read = timed_read
        for i in range(warmup + runs):
            first_at.clear()
            t0 = time.perf_counter()
            raw = link.request_raw(code, b"")
            t1 = time.perf_counter()
            if i < warmup:
                continue
            rtt.append((t1 - t0) * 1000)
            if first_at:
                first.append((first_at[0] - sent_at) * 1000)
                answer.append((last_at - sent_at) * 1000)
            if code == wire.K_PUBKEY and len(raw) >= 36:
                meter_us.append(int.from_bytes(raw[32:36], "big"))
    return {"kind": kind, "runs": runs, "rtt_ms": rtt, "first_byte_ms": first,
            "answer_ms": answer,
            "meter_us": meter_us, "platform": platform_name()}


def cpu_ticks(pid: int) -> int:
    """utime + stime of process ``pid`` (clock ticks), from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[11]) + int(fields[12])


def thread_cpu_ns(pid: int) -> dict[int, int]:
    """Each thread of process ``pid``: its time on a CPU in ns (/proc/PID/task/TID/schedstat,
    the scheduler's exact sum, where stat's utime + stime are sampled at the clock tick). A
    thread that ended meanwhile is left out."""
    out: dict[int, int] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return out


def thread_wakeups(pid: int) -> dict[int, int]:
    """Each thread of process ``pid``: how often it has blocked and been woken again (its
    voluntary context switches, /proc/PID/task/TID/status). An idle meter's cost is mostly
    these wake-ups (docs/BENCH-sim.md, "Idle cost"). A thread that ended meanwhile is left
    out."""
    out: dict[int, int] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                out[int(tid)] = int(line.split()[1])
    return out


def idle_share(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """Each process's CPU share (of one core) over ``seconds`` of wall time, from its threads'
    schedstat; for the VM ("vm") also its main thread ("vm_main", the main core) and the rest
    ("vm_threads": core 1, the off-switch). "wakes_<name>": the same parts' wake-ups a
    second."""
    t0 = time.monotonic()
    before = {k: thread_cpu_ns(p) for k, p in pids.items()}
    woke = {k: thread_wakeups(p) for k, p in pids.items()}
    time.sleep(seconds)
    after = {k: thread_cpu_ns(p) for k, p in pids.items()}
    woke_after = {k: thread_wakeups(p) for k, p in pids.items()}
    wall = time.monotonic() - t0
    share: dict[str, float] = {}
    for k, p in pids.items():
        d = {t: ns - before[k].get(t, 0) for t, ns in after[k].items()}
        w = {t: n - woke[k].get(t, 0) for t, n in woke_after[k].items()}
        share[k] = sum(d.values()) / 1e9 / wall
        share[f"wakes_{k}"] = sum(w.values()) / wall
        if k == "vm":
            share["vm_main"] = d.get(p, 0) / 1e9 / wall
            share["vm_threads"] = share["vm"] - share["vm_main"]
            share["wakes_vm_main"] = w.get(p, 0) / wall
            share["wakes_vm_threads"] = share["wakes_vm"] - share["wakes_vm_main"]
    share["total"] = sum(share[k] for k in pids)
    return share


def measure_sim(profile: str | None, kinds: list[str], runs: int,
                idle_s: float) -> dict[str, Any]:
    """One virtual meter of its own: start, flash, provision, KEYGEN, idle, every kind, stop."""
    from host_tools.flash.deploy import flash
    from host_tools.headend.provision import provision
    from host_tools.sim import fleet, profiles

    with tempfile.TemporaryDirectory(prefix="meterctl-rtt-") as tmp:
        base = Path(tmp) / "fleet"
        rec = fleet.start(1, base, profile=profile)[0]
        try:
            port = str(rec["port"])
            ks_path = Path(tmp) / "keystore.json"
            ks = Keystore(ks_path)
            flash(port, timeout=30)
            provision(port, ks, force=True, timeout=30)
            with open_link(port, ks) as link:
                link.request_raw(wire.K_KEYGEN, b"\x00")
            st = fleet.meter_status(0, base)
            idle: dict[str, float] = {}
            if idle_s > 0:
                idle = idle_share({"supervisor": int(st["pid"]), "vm": int(st["vm_pid"])},
                                  idle_s)
            results = [measure(port, k, runs, ks_path) for k in kinds]
        finally:
            fleet.stop(base)
    return {"profile": profile or profiles.DEFAULT, "idle_s": idle_s, "idle": idle,
            "results": results, "platform": platform_name()}


def platform_name() -> str:
    return (f"virtual board (MicroPython unix VM on the host CPU: {cpu_model()}; "
            f"Python {platform.python_version()})")


def _spread(xs: list[float]) -> str:
    if not xs:
        return "-"
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(len(xs) * 0.9))]
    return (f"min {xs[0]:.2f}  median {statistics.median(xs):.2f}  p90 {p90:.2f}  "
            f"max {xs[-1]:.2f}")


def report(res: dict[str, Any]) -> str:
    lines = [f"platform: {res['platform']}",
             f"WAN round trip, {res['kind'].upper()}, {res['runs']} runs (ms):",
             f"  rtt         {_spread(res['rtt_ms'])}",
             f"  first byte  {_spread(res['first_byte_ms'])}",
             f"  answer      {_spread(res['answer_ms'])}"]
    if res["meter_us"]:
        lines.append(f"  meter (C2)  {_spread([u / 1000 for u in res['meter_us']])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="a provisioned meter's port")
    where.add_argument("--sim", action="store_true",
                       help="a virtual meter of its own, started and stopped here")
    ap.add_argument("--profile", default=None, help="--sim: the meter's port profile")
    ap.add_argument("--idle", type=float, default=10.0,
                    help="--sim: seconds of idle CPU measured before the runs (0: none)")
    ap.add_argument("--kind", choices=sorted(KINDS), default=None,
                    help="the request (default: info; with --sim all three)")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--keystore", type=Path, default=None)
    ap.add_argument("--json", type=Path, help="write every raw figure here")
    a = ap.parse_args(argv)
    if a.runs < 1:
        print("rtt: --runs must be at least 1", file=sys.stderr)
        return 2
    if a.idle < 0:
        print("rtt: --idle must not be negative", file=sys.stderr)
        return 2
    out: dict[str, Any]
    try:
        if a.sim:
            from host_tools.sim import profiles

            if a.profile is not None:
                profiles.get(a.profile)  # an unknown name: ProfileError, one line
            kinds = [a.kind] if a.kind else ["info", "pubkey", "read"]
            out = measure_sim(a.profile, kinds, a.runs, a.idle)
            print(f"profile: {out['profile']}")
            if out["idle"]:
                i = out["idle"]
                print(f"idle CPU share over {a.idle:g} s (of one core): supervisor "
                      f"{i['supervisor']:.4f}, VM {i['vm']:.4f} (main thread "
                      f"{i['vm_main']:.4f}, core 1 {i['vm_threads']:.4f}), total "
                      f"{i['total']:.4f}; wake-ups a second: supervisor "
                      f"{i['wakes_supervisor']:.1f}, main thread {i['wakes_vm_main']:.1f}, "
                      f"core 1 {i['wakes_vm_threads']:.1f}")
            for res in out["results"]:
                print(report(res))
        else:
            out = measure(a.port, a.kind or "info", a.runs, a.keystore)
            print(report(out))
    except (LinkError, MeterError, BoardError, KeystoreError, ProvisionError, SimError,
            BuildError, KeyError, OSError, ValueError) as e:
        print(f"rtt: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return 1
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
