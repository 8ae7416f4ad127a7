"""Bytes on the wire and round-trip times of the head-end's commands, per system test.

Each operation (S1 create key pairs, S2 read public keys, S3 create group keys, S4 read
encrypted values) is an :class:`Op`; every command it sends is a :class:`Cmd` with the bytes
written and read on that meter's serial line (``MeterLink.tx_bytes``/``rx_bytes`` deltas:
whole frame lines, escapes and line ends included), the host-measured round trip, and the
meter's own ``ticks_us`` figure when the answer carries one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

TESTS = {"S1": "create key pairs", "S2": "read public keys", "S3": "create group keys",
         "S4": "read encrypted values"}


@dataclass
class Cmd:
    meter_id: int
    kind: str
    tx: int = 0
    rx: int = 0
    rtt_s: float = 0.0
    meter_us: int | None = None
    ok: bool = False
    error: str | None = None

    def row(self) -> tuple[int, str, int, int, float, int | None, bool, str | None]:
        return (self.meter_id, self.kind, self.tx, self.rx, self.rtt_s, self.meter_us, self.ok,
                self.error)


@dataclass
class Op:
    test: str
    meters: int
    gid: bytes | None = None
    started: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)
    wall_s: float = 0.0
    wait_s: float = 0.0  # S4: time spent waiting for interval boundaries (not work)
    cmds: list[Cmd] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def name(self) -> str:
        return TESTS.get(self.test, self.test)

    def add(self, cmd: Cmd) -> Cmd:
        with self._lock:
            self.cmds.append(cmd)
        return cmd

    def finish(self) -> None:
        self.wall_s = time.perf_counter() - self.t0

    def summary(self) -> dict[str, Any]:
        with self._lock:
            cmds = list(self.cmds)
        return {"test": self.test, "name": self.name, "meters": self.meters,
                "wall_ms": round(self.wall_s * 1000, 1),
                "wait_ms": round(self.wait_s * 1000, 1),
                "busy_ms": round((self.wall_s - self.wait_s) * 1000, 1), **_totals(cmds),
                "per_kind": {k: _totals([c for c in cmds if c.kind == k])
                             for k in sorted({c.kind for c in cmds})}}


def _totals(cmds: list[Cmd]) -> dict[str, Any]:
    rtts = [c.rtt_s for c in cmds if c.ok]
    us = [c.meter_us for c in cmds if c.meter_us is not None]
    return {"commands": len(cmds), "failed": sum(not c.ok for c in cmds),
            "tx_bytes": sum(c.tx for c in cmds), "rx_bytes": sum(c.rx for c in cmds),
            "bytes": sum(c.tx + c.rx for c in cmds),
            "rtt_ms_mean": round(1000 * sum(rtts) / len(rtts), 2) if rtts else None,
            "rtt_ms_max": round(1000 * max(rtts), 2) if rtts else None,
            "meter_us_sum": sum(us) if us else None}
